"""Coverage-guided fuzzing of what a hostile file or caller reaches (issue 16), with atheris
(libFuzzer for Python; the native extension's C++ is exercised through its bindings).

    python fuzz/fuzz_qrt.py reader [libFuzzer options] [corpus dirs]
    python fuzz/fuzz_qrt.py native [libFuzzer options]

Targets:
  reader  bytes -> a .qrt file -> format.read_header and format.load, which may raise only
          QrtFormatError; a file that loads is planned on every CPU backend and run once on
          small feeds, where only the errors the session documents may occur (ValueError,
          IndexError, TypeError, OverflowError, MemoryError: bad shapes and indices at run time).
          Seed corpus: tests/fixtures/format_v*/ (a valid file of every layout family).
  native  bytes -> a valid packed tensor (csr / bsr / N:M int8, int8, int4 grouped) of a chosen
          size, with up to three fuzzer-chosen corruptions of its fields (values, lengths,
          dtypes) and maybe a wrong shape or N:M / group parameter, handed straight to the
          native bindings (bypassing the Python checks), then one GEMM or embedding gather
          with it when accepted; the bindings may raise only ValueError / TypeError /
          IndexError (an out-of-range token id). The C++ is not coverage-instrumented: the
          guidance is the Python side's, the search over corruptions is what finds crashes.

Anything else (another exception, or a crash: libFuzzer reports the signal) is a finding:
libFuzzer writes the input as crash-<sha1> in the working directory; the regression test
tests/test_fuzz.py runs every file of fuzz/regressions/<target>/.

tests/test_fuzz.py runs each target for a bounded time in CI (QRT_FUZZ_SECONDS, default 30 s
each); run longer here, e.g. `python fuzz/fuzz_qrt.py reader -max_total_time=3600 corpus/`.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports():
    import numpy as np
    from runtime import format as qrt_format
    from runtime.errors import QrtFormatError
    from kernels.core import layouts  # noqa: F401  (instrumented: the layout checks)

import runtime  # noqa: E402
from kernels import registry  # noqa: E402

RUN_ERRORS = (ValueError, IndexError, TypeError, OverflowError, MemoryError)
BACKENDS = ["reference"] + [b for b in ("numba", "native") if registry.backend_status(b) is None]
_SCRATCH = Path(tempfile.mkdtemp(prefix="qrt-fuzz-")) / "input.qrt"


def _feeds(graph) -> dict | None:
    """Small feeds for the graph's inputs (symbolic dims = 2), or None when an input's shape
    is fixed and large (running it would measure the machine, not the code)."""
    feeds = {}
    for v in graph.inputs:
        dims = [2 if d is None or isinstance(d, str) else int(d) for d in (v.shape or [2])]
        if np.prod(dims, dtype=np.float64) > 1 << 16:
            return None
        if v.dtype.startswith("int"):
            feeds[v.name] = np.ones(dims, v.dtype)
        elif v.dtype == "bool":
            feeds[v.name] = np.ones(dims, bool)
        else:
            feeds[v.name] = np.full(dims, 0.5, v.dtype)
    return feeds


def reader(data: bytes) -> None:
    _SCRATCH.write_bytes(data)
    try:
        qrt_format.read_header(_SCRATCH)
        graph = qrt_format.load(_SCRATCH)
    except QrtFormatError:
        return
    # the file loaded: its weights are bounded by the file, so planning and one small run are
    # cheap; the graph's initializers are small (the corpus's files are a few KB)
    if sum(t.nbytes for t in graph.initializers.values()) > 1 << 22:
        return
    feeds = _feeds(graph)
    for backend in BACKENDS:
        try:
            s = runtime.InferenceSession(graph, backend, plan="off", threads=1)
            if feeds is not None:
                s.run(None, feeds)
        except RUN_ERRORS:
            pass


def _corrupt(fdp, fields: dict) -> None:
    """Up to three edits, chosen by the fuzzer, to a valid tensor's fields: one value set to
    an edge of its dtype or to any value, a field truncated, or a field cast to another dtype."""
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        name = sorted(fields)[fdp.ConsumeIntInRange(0, len(fields) - 1)]
        a = np.array(fields[name])
        how = fdp.ConsumeIntInRange(0, 3)
        if how <= 1 and a.size:
            flat = a.reshape(-1)
            i = fdp.ConsumeIntInRange(0, a.size - 1)
            if a.dtype.kind == "f":
                flat[i] = (np.nan, np.inf, -1.0, 0.0, 1e-45, fdp.ConsumeFloat())[fdp.ConsumeIntInRange(0, 5)]
            else:
                info = np.iinfo(a.dtype)
                flat[i] = fdp.ConsumeIntInRange(int(info.min), int(info.max)) if how else \
                    (info.min, info.max, -1 if info.min < 0 else 0, 0)[fdp.ConsumeIntInRange(0, 3)]
        elif how == 2:
            a = a.reshape(-1)[: fdp.ConsumeIntInRange(0, a.size)]
        else:
            a = a.astype((np.int8, np.uint8, np.int16, np.int32, np.int64, np.float32, np.float64)
                         [fdp.ConsumeIntInRange(0, 6)])
        fields[name] = a


def native(data: bytes) -> None:
    """A valid tensor of a fuzzer-chosen layout and size, packed from random weights, then
    corrupted (_corrupt) and handed to the binding with maybe-wrong shape and params; if the
    binding accepts it, one GEMM (or gather) with it."""
    from kernels.native_cpu import _native
    fdp = atheris.FuzzedDataProvider(data)
    kind = fdp.ConsumeIntInRange(0, 6)
    n, k = fdp.ConsumeIntInRange(1, 24), 4 * fdp.ConsumeIntInRange(1, 12)
    rng = np.random.default_rng(fdp.ConsumeIntInRange(0, 1 << 30))
    w = rng.standard_normal((n, k)).astype(np.float32)
    mask = rng.random((n, k)) < fdp.ConsumeProbability()
    layout = ("csr", "bsr", "nm", "int8", "int4_grouped", "int8", "int4_grouped")[kind]
    opts = {"csr": {"quant": "int8"}, "bsr": {"quant": "int8", "block_shape": (1, 4)},
            "nm": {"quant": "int8", "n": 2, "m": 4}, "int8": {"symmetric": fdp.ConsumeBool()},
            "int4_grouped": {"group_size": 4 * fdp.ConsumeIntInRange(1, 4), "symmetric": fdp.ConsumeBool()}}[layout]
    if layout == "nm":
        from runtime.convert.prune import nm_mask
        mask = nm_mask(w, 2, 4)
    t = layouts.pack(layout, "w", w, mask if layout in ("csr", "bsr", "nm") else None, **opts)
    f = dict(t.fields)
    _corrupt(fdp, f)
    shape = (n, k) if fdp.ConsumeProbability() < 0.8 else (fdp.ConsumeIntInRange(-1, 30), fdp.ConsumeIntInRange(-1, 60))
    lanes = ("auto", "none", "dword")[fdp.ConsumeIntInRange(0, 2)]
    extra = {"lanes": lanes, "quad_rows": fdp.ConsumeIntInRange(-2, 2), "pairs": fdp.ConsumeIntInRange(-2, 2)}
    m_rows = fdp.ConsumeIntInRange(0, 20)
    x = np.full((m_rows, shape[1] if shape[1] > 0 else k), 0.5, np.float32)
    try:
        if layout == "csr":
            _native.sparse_int8_linear(_native.sparse_int8_csr(f["indptr"], f["indices"], f["qdata"], f["scale"],
                                                               shape, **extra), x)
        elif layout == "bsr":
            _native.sparse_int8_linear(_native.sparse_int8_bsr(f["indptr"], f["indices"], f["qdata"], f["scale"],
                                                               shape, **extra), x)
        elif layout == "nm":
            nn, mm = (2, 4) if fdp.ConsumeProbability() < 0.8 else (fdp.ConsumeIntInRange(-1, 5), fdp.ConsumeIntInRange(-1, 9))
            _native.sparse_int8_linear(_native.sparse_int8_nm(f["meta"], f["qdata"], f["scale"], shape, nn, mm,
                                                              **extra), x)
        elif kind in (3, 4):                     # a weight and a GEMM with it
            if layout == "int8":
                _native.int8_linear(_native.Int8Weight(f["qdata"], f["scale"], f.get("zero_point")), x)
            else:
                g = opts["group_size"] if fdp.ConsumeProbability() < 0.8 else fdp.ConsumeIntInRange(-2, 20)
                _native.int4_linear(_native.Int4Weight(f["qdata"], f["scale"], f.get("zero_point"), shape, g), x)
        else:                                    # the same tables as embeddings: rows by token ids
            ids = rng.integers(-n - 2, n + 2, size=fdp.ConsumeIntInRange(0, 8)).astype(
                (np.int64, np.int32)[fdp.ConsumeIntInRange(0, 1)])
            d = shape[1]
            out = np.zeros((ids.size, max(d, 0)), np.float32)
            if layout == "int8":
                _native.gather_int8_rows(f["qdata"], f["scale"], f.get("zero_point"), ids, out)
            else:
                _native.gather_int4_rows(f["qdata"], f["scale"], f.get("zero_point"), d, opts["group_size"], ids, out)
    except (ValueError, TypeError, IndexError):
        pass


TARGETS = {"reader": reader, "native": native}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: python fuzz/fuzz_qrt.py {{{','.join(TARGETS)}}} [libFuzzer options] [corpus dirs]")
    target = sys.argv.pop(1)
    if target == "native" and registry.backend_status("native") is not None:
        sys.exit(f"the native backend is unavailable: {registry.backend_status('native')}")
    os.environ.setdefault("QRT_CACHE_DIR", str(_SCRATCH.parent))
    atheris.Setup(sys.argv, TARGETS[target])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
