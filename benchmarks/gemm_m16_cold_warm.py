"""The 24 int8 Linears of one MiniLM-dims encoder at M = 16 on the native backend (2 threads):
in model order (weights streamed from memory) against each called 5 times in a row (cache-warm).

    python benchmarks/gemm_m16_cold_warm.py
"""
import sys
import time
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__))))
import numpy as np
from kernels import registry
from kernels.core.layouts import pack_int8
registry.backend_status("native")
from kernels.native_cpu import set_threads
set_threads(2)
rng = np.random.default_rng(0)
shapes = [(384, 1152), (384, 384), (384, 1536), (1536, 384)] * 6      # one MiniLM encoder's Linears: 10.6 MB int8
runs = []
for k, n in shapes:
    t = pack_int8("w", rng.standard_normal((n, k)).astype(np.float32))
    f = registry.lookup("Linear", "int8", "native")({"act_quant": "dynamic"}, {1: t})
    runs.append((f, t, np.zeros(n, np.float32), rng.standard_normal((16, k)).astype(np.float32)))
def cycle():
    for f, t, b, x in runs: f(x, t, b)
def hot():
    for f, t, b, x in runs:
        for _ in range(5): f(x, t, b)
for _ in range(5): cycle()
tc, th = [], []
for _ in range(30):
    t0 = time.perf_counter(); cycle(); tc.append(time.perf_counter() - t0)
    t0 = time.perf_counter(); hot(); th.append((time.perf_counter() - t0) / 5)
nbytes = sum(t.nbytes for _, t, _, _ in runs)
c, h = np.median(tc), np.median(th)
print(f"24 Linears at M=16, {nbytes/1e6:.1f} MB int8 weights: cycling {c*1e3:.3f} ms ({nbytes/c/1e9:.1f} GB/s of weights), "
      f"each repeated (cache-warm) {h*1e3:.3f} ms per pass")
