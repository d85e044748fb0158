"""First-run latency of a numba session in a fresh process: cold (empty numba cache) and warm.

    python benchmarks/numba_first_run.py [--batch 1] [--seq 128] [--runs 50] [--cold 1] [--warm 3]

The numba kernels are compiled on first call and cached on disk (@njit(cache=True)); a new
process with the same cache loads machine code instead of compiling. This measures what a
user waits for, from the moment the process is spawned to the first ``run()`` result:

* cold: a fresh process with NUMBA_CACHE_DIR set to a new, empty directory (compiles);
* warm: a second fresh process with the same directory (should only load);

for the 2-layer random-weight BERT of the tests (hidden 64, 4 heads, FFN 128), converted
with ``runtime.convert(..., quant="int8")`` when the numba backend has an int8 Linear kernel
(else that row is skipped and the script says so), and as plain fp32 (the numba fp32 kernels
of kernels/numba_cpu/ops.py plus reference kernels for shape ops). The parent converts and
saves the models; each child only does ``import runtime``, loads the .qrt file, plans a
``backend="numba"`` session and runs it, then times steady-state runs and checks its output
against the reference backend (validate after timing, so the check cannot warm anything).

Whether the warm process really compiled nothing is checked twice: numba's own per-function
counters (``Dispatcher.stats.cache_hits`` / ``cache_misses`` over every kernel module of the
numba backend) and, in one extra warm process with NUMBA_DEBUG_CACHE=1, numba's log lines
("data loaded from" vs "data saved to").
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = "QRT_FIRST_RUN_RESULT "

# Runs in a fresh interpreter. Only the standard library is imported before the clock starts;
# QRT_T_SPAWN is the parent's time.time() just before it spawned this process.
CHILD = textwrap.dedent("""
    import json, os, statistics, sys, time
    t_enter = time.time()
    spawn = float(os.environ["QRT_T_SPAWN"])
    t0 = time.perf_counter()
    import numpy as np
    import runtime
    t_import = time.perf_counter()
    path, batch, seq, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    threads = int(sys.argv[5]) or None
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, 100, (batch, seq), dtype=np.int64),
             "attention_mask": np.ones((batch, seq), np.int64)}
    sess = runtime.InferenceSession(path, backend="numba", threads=threads)
    t_plan = time.perf_counter()
    first = sess.run(None, feeds)
    t_first = time.perf_counter()
    t_first_wall = time.time()
    for _ in range(3):
        sess.run(None, feeds)
    times = []
    for _ in range(runs):
        a = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - a)
    times.sort()
    # numba's per-function counters over the backend's kernel modules
    from numba.core.registry import CPUDispatcher
    import kernels.numba_cpu as pkg
    hits = misses = 0
    compiled = []
    for mod in list(sys.modules.values()):
        if mod is None or not getattr(mod, "__name__", "").startswith(pkg.__name__):
            continue
        for obj in vars(mod).values():
            if isinstance(obj, CPUDispatcher):
                hits += sum(obj.stats.cache_hits.values())
                n_miss = sum(obj.stats.cache_misses.values())
                misses += n_miss
                if n_miss:
                    compiled.append(mod.__name__.rsplit(".", 1)[-1] + "." + obj.py_func.__name__)
    ref = runtime.InferenceSession(path, backend="reference").run(None, feeds)
    err = max(float(np.linalg.norm(g.astype(np.float64) - r) / max(np.linalg.norm(r.astype(np.float64)), 1e-30))
              for g, r in zip(first, ref))
    backends = sorted({p.backend for p in sess.plan})
    numba_nodes = sum(p.backend == "numba" for p in sess.plan)
    print(%(mark)r + json.dumps({
        "interpreter_s": t_enter - spawn, "import_s": t_import - t0, "plan_s": t_plan - t_import,
        "first_run_s": t_first - t_plan, "spawn_to_first_s": t_first_wall - spawn,
        "steady_ms": 1e3 * statistics.median(times),
        "steady_p10_ms": 1e3 * times[len(times) // 10], "steady_p90_ms": 1e3 * times[(9 * len(times)) // 10],
        "cache_hits": hits, "cache_misses": misses, "compiled": sorted(compiled), "rel_err_vs_reference": err,
        "backends": backends, "numba_nodes": numba_nodes, "nodes": len(sess.plan)}), flush=True)
""") % {"mark": MARK}


def build_models(tmp: Path) -> dict[str, Path | str]:
    """label -> saved .qrt path (or the reason the model is not measured)."""
    sys.path.insert(0, str(ROOT))
    import torch
    import runtime
    from kernels import registry
    from tests import model_zoo

    ids = torch.randint(0, 100, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.int64)
    data = model_zoo.export(model_zoo.bert(), (ids, mask), input_names=["input_ids", "attention_mask"],
                            output_names=["last_hidden_state", "pooler_output"],
                            dynamic_axes={"input_ids": {0: "batch", 1: "seq"},
                                          "attention_mask": {0: "batch", 1: "seq"}})
    models: dict[str, Path | str] = {}
    if registry.has_kernel("Linear", "int8", "numba"):
        path = tmp / "bert_int8.qrt"
        runtime.convert(data, path, quant="int8")
        models["int8"] = path
    else:
        models["int8"] = "the numba backend has no int8 Linear kernel yet"
    path = tmp / "bert_fp32.qrt"
    runtime.convert(data, path)
    models["fp32"] = path
    return models


def child(path: Path, cache_dir: Path, a, debug_cache: bool = False) -> tuple[dict, str]:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir), PYTHONPATH=str(ROOT))
    env.pop("NUMBA_DISABLE_JIT", None)
    if debug_cache:
        env["NUMBA_DEBUG_CACHE"] = "1"
    else:
        env.pop("NUMBA_DEBUG_CACHE", None)
    env["QRT_T_SPAWN"] = repr(time.time())
    p = subprocess.run([sys.executable, "-c", CHILD, str(path), str(a.batch), str(a.seq), str(a.runs),
                        str(a.threads or 0)],
                       env=env, cwd=str(ROOT), capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"child failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith(MARK))
    return json.loads(line[len(MARK):]), p.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--runs", type=int, default=50, help="steady-state runs per process")
    ap.add_argument("--cold", type=int, default=1, help="cold processes (each with a new cache dir)")
    ap.add_argument("--warm", type=int, default=3, help="warm processes (sharing the first cold cache)")
    ap.add_argument("--threads", type=int, default=None, help="the session's threads= (default: all cores)")
    a = ap.parse_args()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="qrt_first_run_") as tmp_s:
        tmp = Path(tmp_s)
        models = build_models(tmp)
        import numba
        import numpy as np
        print(f"numpy {np.__version__}, numba {numba.__version__}; BERT 2 layers, hidden 64, "
              f"batch {a.batch} x seq {a.seq}; session threads={a.threads or os.cpu_count()}, "
              f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}; "
              f"times are medians over processes\n")
        rows = []
        for label, path in models.items():
            if isinstance(path, str):
                print(f"{label}: not measured: {path}\n")
                continue
            colds, warms = [], []
            cache0 = None
            for c in range(a.cold):
                cache = tmp / f"cache_{label}_{c}"
                cache.mkdir()
                cache0 = cache0 or cache
                colds.append(child(path, cache, a)[0])
            for _ in range(a.warm):
                warms.append(child(path, cache0, a)[0])
            dbg, out = child(path, cache0, a, debug_cache=True)
            loaded = sum("data loaded from" in ln for ln in out.splitlines())
            saved = sum("data saved to" in ln for ln in out.splitlines())
            rows.append((label, colds, warms, dbg, loaded, saved))

        def med(rs, key):
            return statistics.median(r[key] for r in rs)

        print("| model | process | spawn -> first result | of which: interpreter / import runtime / plan / first run() "
              "| steady run() (p10-p90) | numba cache hits / misses | numba nodes | rel. err vs reference |")
        print("|---|---|---|---|---|---|---|---|")
        for label, colds, warms, dbg, loaded, saved in rows:
            for kind, rs in (("cold", colds), ("warm", warms)):
                r = rs[0]
                print(f"| {label} | {kind} (x{len(rs)}) | **{med(rs, 'spawn_to_first_s'):.2f} s** | "
                      f"{med(rs, 'interpreter_s'):.2f} / {med(rs, 'import_s'):.2f} / {med(rs, 'plan_s'):.2f} / "
                      f"{med(rs, 'first_run_s'):.2f} s | {med(rs, 'steady_ms'):.2f} ms "
                      f"({med(rs, 'steady_p10_ms'):.2f}-{med(rs, 'steady_p90_ms'):.2f}) | "
                      f"{r['cache_hits']} / {r['cache_misses']} | {r['numba_nodes']} of {r['nodes']} | "
                      f"{r['rel_err_vs_reference']:.1e} |")
        print()
        for label, colds, warms, dbg, loaded, saved in rows:
            verdict = ("no compilation" if saved == 0 and dbg["cache_misses"] == 0
                       else f"compiled: {', '.join(dbg['compiled']) or '(not a numba_cpu dispatcher)'}")
            print(f"{label}: warm process with NUMBA_DEBUG_CACHE=1: {loaded} 'data loaded from' lines, "
                  f"{saved} 'data saved to' lines; counters {dbg['cache_hits']} hits / "
                  f"{dbg['cache_misses']} misses -> {verdict}")


if __name__ == "__main__":
    main()
