"""The GPU check: every qrt GPU kernel checked against the numpy reference, then timed against
what users would otherwise run, and a MiniLM-sized BERT end to end; one table printed last.

    python3 benchmarks/gpu_check.py [--quick] [--out results.md]
    python3 benchmarks/gpu_check.py --cpu-smoke     # the script itself, without a GPU

--cpu-smoke runs every Triton section at toy sizes in Triton's interpreter on torch CPU tensors
(wall-clock timings, meaningless as speed), so that the script is known to run before device
time is spent on it; the CuPy sections and the machine's ceilings need a GPU and are skipped.

For a lent H100 / H200 machine (no network: it uses torch, triton, cupy and numpy as found,
installs nothing, and does not need onnx or transformers) in under 8 minutes. Sections:

1. machine: the GPU, and its ceilings measured here (an 8192^3 fp16 and int8 matrix product
   through torch / cuBLASLt, a device-to-device copy), beside the datasheet's;
2. correctness: each registered (op, layout) kernel of the "triton" and "cupy" backends on
   fresh random inputs of awkward sizes against kernels/reference (numpy, float64 where the
   reference is), with the memory pools poisoned with NaN first so that an unwritten output
   element fails the check;
3. timing (CUDA events, triton.testing.do_bench, median): the Triton int8 GEMM against
   torch._int_mm (cuBLASLt int8) and torch fp16 / bf16 matmul at 4096^3 and the BERT shapes
   with M = 512; the Triton BSR int8 at 90% block sparsity against the same kernel fully dense;
   the CuPy CSR SpMM against cuSPARSE (cupyx.scipy.sparse) at 90 and 95%; TOP/s and % of the
   measured peak;
4. end to end: a 6-layer encoder with all-MiniLM-L6 dimensions (hidden 384, 12 heads, FFN
   1536; random weights; the fused graph the session builds from an exported BERT: merged
   QKV Linear, Split, Attention, SkipLayerNorm, Linear + GELU) as int8 on backend "auto" (GPU)
   against the same weights in torch fp16, batch 1 and 32 at sequence 128, with agreement.

Goals (issue 7): Triton int8 >= 0.9x torch._int_mm at 4096^3 and the BERT shapes at M = 512;
BSR 90% >= 4x the same kernel dense; CuPy CSR >= 1.0x cuSPARSE at >= 90% sparsity.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROWS: list[tuple[str, str, str, str]] = []          # (section, what, result, note)
MINILM = dict(hidden=384, heads=12, ffn=1536, layers=6)
BERT_SHAPES = [(768, 2304), (768, 768), (768, 3072), (3072, 768)]
# Sizes of the timed problems and of the end-to-end run; --cpu-smoke shrinks them (SMOKE_SIZES).
SIZES = dict(square=4096, m=512, n=4096, k=4096, seq=128, batches=(1, 32), bert_shapes=BERT_SHAPES,
             backends=("auto", "triton", "cupy"))
SMOKE_SIZES = dict(square=64, m=16, n=64, k=96, seq=16, batches=(1,), bert_shapes=[(96, 64)],
                   backends=("triton",))
DEV = "cuda"          # torch device of the timed inputs; "cpu" under --cpu-smoke
SMOKE = False
DATASHEET = {"H100": (1979.0, 989.0, 3350.0), "H200": (1979.0, 989.0, 4800.0)}   # int8 TOP/s, fp16 TFLOP/s, GB/s


def row(section: str, what: str, result: str, note: str = "") -> None:
    ROWS.append((section, what, result, note))
    print(f"[{section}] {what}: {result}" + (f" ({note})" if note else ""), flush=True)


def guarded(section: str, what: str):
    """Decorator: a failing check becomes a FAIL row with the exception, the script goes on."""
    def deco(fn):
        def run(*a, **kw):
            try:
                return fn(*a, **kw)
            except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the run
                row(section, what, "FAIL", f"{type(e).__name__}: {e}")
                traceback.print_exc()
                return None
        return run
    return deco


# --- machine ------------------------------------------------------------------------------------

def bench_ms(fn) -> float:
    if SMOKE:                                        # no CUDA events without a GPU: wall clock
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return float(np.median(times))
    import triton.testing
    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def machine() -> dict:
    import torch
    name = torch.cuda.get_device_name(0)
    props = torch.cuda.get_device_properties(0)
    row("machine", "GPU", name, f"{props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB, "
        f"torch {torch.__version__}")
    n = 8192
    a = torch.randn(n, n, device=DEV, dtype=torch.float16)
    b = torch.randn(n, n, device=DEV, dtype=torch.float16)
    fp16 = 2 * n ** 3 / bench_ms(lambda: a @ b) / 1e9
    ai = torch.randint(-127, 127, (n, n), device=DEV, dtype=torch.int8)
    # B column-major (a (N, K) row-major tensor transposed), cuBLASLt's int8 "TN" form, as
    # qrt's (N, K) weights are: a row-major B ran at 127 TOP/s on an H200 (a slow path)
    bi = torch.randint(-127, 127, (n, n), device=DEV, dtype=torch.int8).t()
    int8 = 2 * n ** 3 / bench_ms(lambda: torch._int_mm(ai, bi)) / 1e9
    bi_rows = bi.contiguous()
    int8_rows = 2 * n ** 3 / bench_ms(lambda: torch._int_mm(ai, bi_rows)) / 1e9
    big = torch.empty(2 ** 30, dtype=torch.uint8, device=DEV)
    dst = torch.empty_like(big)
    bw = 2 * big.numel() / bench_ms(lambda: dst.copy_(big)) / 1e6
    sheet = next((v for k, v in DATASHEET.items() if k in name), None)
    row("machine", "fp16 matmul 8192^3", f"{fp16:.0f} TFLOP/s", f"datasheet {sheet[1]:.0f}" if sheet else "")
    row("machine", "int8 torch._int_mm 8192^3", f"{int8:.0f} TOP/s",
        (f"datasheet {sheet[0]:.0f}; " if sheet else "") + f"B row-major instead: {int8_rows:.0f} TOP/s")
    row("machine", "device copy", f"{bw:.0f} GB/s", f"datasheet {sheet[2]:.0f}" if sheet else "")
    return {"int8_tops": int8, "fp16_tflops": fp16, "gbs": bw}     # the buffers go with this frame


def poison_pools() -> None:
    """Fill the allocators' cached memory with NaN, so a kernel output allocated from it that
    is not fully written shows NaN (torch's caching allocator and CuPy's pool)."""
    import torch
    if SMOKE:
        return
    torch.cuda.empty_cache()
    t = torch.full((64 << 20,), float("nan"), device=DEV)       # 256 MiB
    del t
    try:
        import cupy
        c = cupy.full((64 << 20,), cupy.nan, dtype=cupy.float32)
        del c
    except ImportError:
        pass


# --- correctness ----------------------------------------------------------------------------------

def weight(layout: str, n: int, k: int, rng, sparsity: float = 0.9, block=(16, 16)):
    from kernels.core import layouts as L
    from runtime.convert import prune
    w = (rng.standard_normal((n, k)) / math.sqrt(k)).astype(np.float32)
    if layout == "int8":
        return L.pack_int8("w", w)
    if layout == "int4_grouped":
        return L.pack_int4_grouped("w", w, group_size=64)
    if layout == "csr":
        return L.pack("csr", "w", w, prune.magnitude_mask(w, sparsity), quant="int8")
    if layout == "nm":
        return L.pack("nm", "w", w, prune.nm_mask(w, 2, 4), quant="int8")
    if layout == "bsr":
        return L.pack("bsr", "w", w, prune.block_mask(w, sparsity, block), quant="int8", block_shape=block)
    raise ValueError(layout)


LINEAR_TOL = {"int8": 1e-2, "int4_grouped": 2e-3, "csr": 1e-2, "nm": 1e-2, "bsr": 1e-2}   # ||y - ref|| / ||ref||
OP_TOL = 1e-4                                                                           # float32 ops


def rel(got, want) -> float:
    from kernels.core.device import to_numpy
    g = np.asarray(to_numpy(got), np.float64)
    w = np.asarray(want, np.float64)
    if g.shape != w.shape:
        raise AssertionError(f"shape {g.shape}, the reference gives {w.shape}")
    if not np.all(np.isfinite(g)):
        raise AssertionError("non-finite output (an unwritten element of the poisoned pool?)")
    return float(np.linalg.norm(g - w) / max(np.linalg.norm(w), 1e-30))


def check_linears(backend: str) -> None:
    from kernels import registry
    rng = np.random.default_rng(1)
    for layout in ("int8", "int4_grouped", "csr", "nm", "bsr"):
        if not registry.has_kernel("Linear", layout, backend):
            continue
        for m, n, k, act in ((1, 96, 160, "none"), (37, 130, 256, "gelu"), (300, 256, 512, "relu")):
            if layout == "bsr":
                n = -(-n // 16) * 16                  # 16 x 16 blocks must tile the weight
            @guarded("check", f"{backend} Linear {layout} M={m} N={n} K={k} {act}")
            def one():
                t = weight(layout, n, k, rng)
                b = (rng.standard_normal(n) * 0.1).astype(np.float32)
                attrs = registry.fill_attrs("Linear", {"act_quant": "none" if layout == "int4_grouped" else "dynamic",
                                                       "activation": act})
                from kernels.core.layouts import dense_tensor
                weights = {1: t, 2: dense_tensor("b", b)}      # the bias is a constant: uploaded once
                kern = registry.build("Linear", layout, backend, attrs, weights)
                ref = registry.build("Linear", layout, "reference", attrs, weights)
                x = rng.standard_normal((m, k)).astype(np.float32)
                poison_pools()
                e = rel(kern(registry.backend_module(backend).to_device(x), t, b)[0], ref(x, t, b)[0])
                ok = e <= LINEAR_TOL[layout]
                row("check", f"{backend} Linear {layout} M={m} N={n} K={k} {act}", "ok" if ok else "FAIL",
                    f"rel err {e:.1e} (tol {LINEAR_TOL[layout]:.0e})")
            one()


def check_ops(backend: str) -> None:
    from kernels import registry
    rng = np.random.default_rng(2)
    b, s, h, heads = 2, 77, 384, 12
    x = rng.standard_normal((b, s, h)).astype(np.float32)
    g = (1 + 0.1 * rng.standard_normal(h)).astype(np.float32)
    be = (0.1 * rng.standard_normal(h)).astype(np.float32)
    mask = np.zeros((b, 1, 1, s), np.float32)
    mask[1, ..., s - 9:] = -1e4
    cases = {
        "LayerNormalization": ((x, g, be), {"axis": -1}),
        "SkipLayerNormalization": ((x, rng.standard_normal(x.shape).astype(np.float32), g, be), {}),
        "Softmax": ((rng.standard_normal((b, heads, s, s)).astype(np.float32),), {"axis": -1}),
        "Gelu": ((3 * x,), {}),
        "Attention": ((x, rng.standard_normal(x.shape).astype(np.float32),
                       rng.standard_normal(x.shape).astype(np.float32), mask),
                      {"head_dim": h // heads, "scale": 1 / math.sqrt(h // heads)}),
    }
    for op, (args, attrs) in cases.items():
        if not registry.has_kernel(op, "dense", backend):
            continue

        @guarded("check", f"{backend} {op}")
        def one(op=op, args=args, attrs=attrs):
            a = registry.fill_attrs(op, attrs)
            kern = registry.build(op, "dense", backend, a, {})
            ref = registry.build(op, "dense", "reference", a, {})
            dev = [registry.backend_module(backend).to_device(v) for v in args]
            poison_pools()
            e = rel(kern(*dev)[0], ref(*args)[0])
            row("check", f"{backend} {op}", "ok" if e <= OP_TOL else "FAIL", f"rel err {e:.1e} (tol {OP_TOL:.0e})")
        one()


# --- timing ---------------------------------------------------------------------------------------

def time_triton_int8(peaks: dict, quick: bool) -> None:
    import torch
    from kernels import registry
    if not registry.has_kernel("Linear", "int8", "triton"):
        row("time", "triton int8", "SKIP", "no triton int8 Linear registered")
        return
    rng = np.random.default_rng(3)
    sq, m_bert = SIZES["square"], SIZES["m"]
    shapes = [(sq, sq, sq)] + ([] if quick else [(m_bert, n, k) for k, n in SIZES["bert_shapes"]])
    for m, n, k in shapes:
        @guarded("time", f"triton int8 M={m} N={n} K={k}")
        def one(m=m, n=n, k=k):
            t = weight("int8", n, k, rng)
            attrs = registry.fill_attrs("Linear", {"act_quant": "dynamic"})
            kern = registry.build("Linear", "int8", "triton", attrs, {1: t})
            x = torch.randn(m, k, device=DEV)
            ms = bench_ms(lambda: kern(x, t, None))
            xi = torch.randint(-127, 127, (m, k), device=DEV, dtype=torch.int8)
            wi = torch.randint(-127, 127, (n, k), device=DEV, dtype=torch.int8).t()     # column-major, as in machine()
            ref_ms = bench_ms(lambda: torch._int_mm(xi, wi))
            xh, wh = x.half(), torch.randn(k, n, device=DEV, dtype=torch.float16)
            fp16_ms = bench_ms(lambda: xh @ wh)
            bf_ms = bench_ms(lambda: xh.bfloat16() @ wh.bfloat16())
            tops = 2 * m * n * k / ms / 1e9
            row("time", f"triton int8 M={m} N={n} K={k}", f"{ref_ms / ms:.2f}x torch._int_mm",
                f"{tops:.0f} TOP/s = {tops / peaks['int8_tops'] * 100:.0f}% of measured int8 peak (quantize + GEMM + "
                f"epilogue vs the bare int8 GEMM); {fp16_ms / ms:.2f}x fp16 matmul, {bf_ms / ms:.2f}x bf16 "
                f"(cast included); goal >= 0.9x _int_mm")
        one()


def time_triton_bsr(quick: bool) -> None:
    import torch
    from kernels import registry
    if not registry.has_kernel("Linear", "bsr", "triton"):
        row("time", "triton bsr", "SKIP", "no triton bsr Linear registered")
        return
    rng = np.random.default_rng(4)
    m, n, k = SIZES["m"], SIZES["n"], SIZES["k"]
    for block in ((16, 16), (32, 32)):
        @guarded("time", f"triton bsr int8 {block}")
        def one(block=block):
            attrs = registry.fill_attrs("Linear", {"act_quant": "dynamic"})
            sparse = weight("bsr", n, k, rng, 0.9, block)
            dense = weight("bsr", n, k, rng, 1e-9, block)          # every block stored: the same kernel dense
            ks, kd = (registry.build("Linear", "bsr", "triton", attrs, {1: t}) for t in (sparse, dense))
            x = torch.randn(m, k, device=DEV)
            ms_s, ms_d = bench_ms(lambda: ks(x, sparse, None)), bench_ms(lambda: kd(x, dense, None))
            row("time", f"triton bsr int8 90% blocks {block[0]}x{block[1]} M={m} N={n} K={k}",
                f"{ms_d / ms_s:.2f}x its dense", f"{ms_s:.3f} ms vs {ms_d:.3f} ms; goal >= 4x")
        one()


def time_cupy_csr(quick: bool) -> None:
    from kernels import registry
    if not registry.has_kernel("Linear", "csr", "cupy"):
        row("time", "cupy csr", "SKIP", "no cupy csr Linear registered")
        return
    import cupy
    import cupyx.scipy.sparse as cps
    rng = np.random.default_rng(5)
    m, n, k = SIZES["m"], SIZES["n"], SIZES["k"]
    for sparsity in (0.9, 0.95):
        @guarded("time", f"cupy csr {sparsity:.0%}")
        def one(sparsity=sparsity):
            t = weight("csr", n, k, rng, sparsity)
            attrs = registry.fill_attrs("Linear", {"act_quant": "dynamic"})
            kern = registry.build("Linear", "csr", "cupy", attrs, {1: t})
            x = cupy.random.standard_normal((m, k), dtype=cupy.float32)
            ms = bench_ms(lambda: kern(x, t, None))
            wd = cupy.asarray(t.to_dense().reshape(n, k))
            ws = cps.csr_matrix(wd)
            xt = cupy.ascontiguousarray(x.T)
            ref_ms = bench_ms(lambda: ws @ xt)                    # cuSPARSE SpMM, fp32: W (N,K) @ X^T (K,M)
            row("time", f"cupy csr int8 {sparsity:.0%} M={m} N={n} K={k}", f"{ref_ms / ms:.2f}x cuSPARSE",
                f"{ms:.3f} ms vs {ref_ms:.3f} ms (cuSPARSE fp32 csr @ dense); goal >= 1.0x")
        one()


# --- end to end -----------------------------------------------------------------------------------

def encoder_graph(rng, hidden: int, heads: int, ffn: int, layers: int):
    """(Graph, float weights per layer): the fused encoder the session builds from an exported
    BERT, int8 weights with dynamic activations; input x (batch, seq, hidden), mask (batch, 1,
    1, seq) additive."""
    from kernels.core import layouts as L
    from runtime.graph import Graph, Node, Value
    inits, nodes, fw = {}, [], []
    x = "x"
    dyn = {"act_quant": "dynamic"}

    def lin(name, n, k, src, act="none"):
        w = (rng.standard_normal((n, k)) / math.sqrt(k)).astype(np.float32)
        b = (rng.standard_normal(n) * 0.02).astype(np.float32)
        inits[f"{name}.w"] = L.pack_int8(f"{name}.w", w)
        inits[f"{name}.b"] = L.dense_tensor(f"{name}.b", b)
        nodes.append(Node(name, "Linear", [src, f"{name}.w", f"{name}.b"], [f"{name}.y"], {**dyn, "activation": act}))
        return f"{name}.y", (inits[f"{name}.w"].to_dense(), b)

    def ln(name, a, skip):
        inits[f"{name}.g"] = L.dense_tensor(f"{name}.g", (1 + 0.05 * rng.standard_normal(hidden)).astype(np.float32))
        inits[f"{name}.b"] = L.dense_tensor(f"{name}.b", (0.05 * rng.standard_normal(hidden)).astype(np.float32))
        nodes.append(Node(name, "SkipLayerNormalization", [a, skip, f"{name}.g", f"{name}.b"], [f"{name}.y"],
                          {"epsilon": 1e-12}))
        return f"{name}.y", (inits[f"{name}.g"].fields["data"], inits[f"{name}.b"].fields["data"])

    for i in range(layers):
        p = f"l{i}"
        qkv, wqkv = lin(f"{p}.qkv", 3 * hidden, hidden, x)
        nodes.append(Node(f"{p}.split", "Split", [qkv], [f"{p}.q", f"{p}.k", f"{p}.v"],
                          {"axis": -1, "split": [hidden] * 3}))
        nodes.append(Node(f"{p}.attn", "Attention", [f"{p}.q", f"{p}.k", f"{p}.v", "mask"], [f"{p}.a"],
                          {"head_dim": hidden // heads, "scale": 1 / math.sqrt(hidden // heads)}))
        o, wo = lin(f"{p}.o", hidden, hidden, f"{p}.a")
        h1, ln1 = ln(f"{p}.ln1", o, x)
        f1, w1 = lin(f"{p}.ffn1", ffn, hidden, h1, "gelu")
        f2, w2 = lin(f"{p}.ffn2", hidden, ffn, f1)
        x, ln2 = ln(f"{p}.ln2", f2, h1)
        fw.append((wqkv, wo, ln1, w1, w2, ln2))
    g = Graph("minilm_encoder", [Value("x", "float32", ("batch", "seq", hidden)),
                                 Value("mask", "float32", ("batch", 1, 1, "seq"))],
              [Value(x, "float32", ("batch", "seq", hidden))], nodes, inits)
    g.validate()
    return g, fw


def torch_encoder(fw, heads: int):
    """The same encoder in torch fp16 (the dequantized int8 weights), run(x, mask) -> y."""
    import torch
    import torch.nn.functional as F
    dev = [[tuple(torch.tensor(a, device=DEV, dtype=torch.float16) for a in part) for part in layer] for layer in fw]

    def run(x, mask):
        b, s, h = x.shape
        d = h // heads
        for (wqkv, bqkv), (wo, bo), (g1, b1), (w1, bb1), (w2, bb2), (g2, b2) in dev:
            q, k, v = F.linear(x, wqkv, bqkv).split(h, dim=-1)
            q, k, v = (t.view(b, s, heads, d).transpose(1, 2) for t in (q, k, v))
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.half())
            a = a.transpose(1, 2).reshape(b, s, h)
            h1 = F.layer_norm(F.linear(a, wo, bo) + x, (h,), g1, b1, 1e-12)
            f = F.gelu(F.linear(h1, w1, bb1))
            x = F.layer_norm(F.linear(f, w2, bb2) + h1, (h,), g2, b2, 1e-12)
        return x
    return run


def end_to_end(quick: bool) -> None:
    import torch
    from runtime import InferenceSession
    rng = np.random.default_rng(6)
    g, fw = encoder_graph(rng, **MINILM)
    ref = torch_encoder(fw, MINILM["heads"])
    seq = SIZES["seq"]
    for backend in SIZES["backends"]:
        @guarded("bert", f"session {backend}")
        def one(backend=backend):
            sess = InferenceSession(g, backend)
            gpu_nodes = sum(p.backend in ("triton", "cupy") for p in sess.plan)
            for batch in (SIZES["batches"][:1] if quick else SIZES["batches"]):
                x = rng.standard_normal((batch, seq, MINILM["hidden"])).astype(np.float32)
                mask = np.zeros((batch, 1, 1, seq), np.float32)
                mask[:, ..., seq - seq // 16:] = -1e4
                xd, md = torch.tensor(x, device=DEV), torch.tensor(mask, device=DEV)
                feeds = {"x": xd, "mask": md}
                out = sess.run(None, feeds, {"device_outputs": True})[0]
                ms = bench_ms(lambda: sess.run(None, feeds, {"device_outputs": True}))
                xh = xd.half()
                with torch.inference_mode():
                    want = ref(xh, md)
                    ref_ms = bench_ms(lambda: ref(xh, md))
                from kernels.core.device import to_numpy
                got = np.asarray(to_numpy(out), np.float64)
                w = want.float().cpu().numpy().astype(np.float64)
                cos = float((got * w).sum() / (np.linalg.norm(got) * np.linalg.norm(w)))
                row("bert", f"MiniLM encoder int8, {backend}, batch {batch} x {seq}", f"{ref_ms / ms:.2f}x torch fp16",
                    f"{ms:.2f} ms vs {ref_ms:.2f} ms; cosine {cos:.5f}; {gpu_nodes}/{len(sess.plan)} nodes on the GPU, "
                    f"{sess.host_transfers} host round trips")
        one()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer shapes (a smoke test)")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_check.md"),
                    help="also write the table here (default $OUT/gpu_check.md)")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="no GPU: the Triton sections at toy sizes in Triton's interpreter (tests the script)")
    a = ap.parse_args()
    t0 = time.perf_counter()
    global SMOKE, DEV
    if a.cpu_smoke:
        os.environ["TRITON_INTERPRET"] = "1"           # read when triton is first imported (below)
        SMOKE, DEV = True, "cpu"
        SIZES.update(SMOKE_SIZES)
        MINILM["layers"] = 1
    import runtime
    status = runtime.available_backends()
    if SMOKE:
        status["cupy"] = "skipped by --cpu-smoke"
    for b in ("triton", "cupy"):
        row("machine", f"backend {b}", "usable" if status[b] is None else "UNAVAILABLE", status[b] or "")
    no_peaks = {"int8_tops": float("nan"), "fp16_tflops": float("nan")}
    peaks = no_peaks if SMOKE else guarded("machine", "ceilings")(machine)() or no_peaks
    for b in ("triton", "cupy"):
        if status[b] is None:
            check_linears(b)
            check_ops(b)
    if status["triton"] is None:
        time_triton_int8(peaks, a.quick)
        time_triton_bsr(a.quick)
    if status["cupy"] is None:
        time_cupy_csr(a.quick)
    end_to_end(a.quick)
    row("machine", "total time", f"{time.perf_counter() - t0:.0f} s")
    lines = ["| section | what | result | note |", "|---|---|---|---|"]
    lines += [f"| {s} | {w} | {r} | {n} |" for s, w, r, n in ROWS]
    table = "\n".join(lines)
    Path(a.out).write_text(table + "\n")
    print("\n" + table)
    return 1 if any(r[2] == "FAIL" for r in ROWS) else 0


if __name__ == "__main__":
    sys.exit(main())
