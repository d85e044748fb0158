"""Accuracy sweep of the native epilogue GELUs (csrc/activation.h) over float32 bit patterns.

    python tools/activation_accuracy.py [STRIDE]     (default 61: 70 M values, ~10 s; 13: ~40 s)

Every STRIDE-th finite float32 bit pattern of both signs goes through
``_native.apply_activation`` (the code the fused int8 Linear epilogue runs) on the two fastest
code paths, which must agree bit for bit, and is compared with float64 formulas: GELU
0.5 x erfc(-x / sqrt 2) with scipy's erfc, and the tanh form as x / (1 + exp(-2u)) (0.5 x
(1 + tanh u) without its cancellation for x < 0). Prints the worst relative error where the
exact result is a normal float32, and the worst absolute error where it is not. Needs scipy.
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHUNK = 1 << 22


def exact_gelu(x: np.ndarray) -> np.ndarray:
    from scipy.special import erfc
    x = x.astype(np.float64)
    return 0.5 * x * erfc(-x / np.sqrt(2.0))


def exact_gelu_tanh(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    u = np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)
    with np.errstate(over="ignore"):
        return x / (1.0 + np.exp(-2.0 * u))


def main() -> None:
    from kernels.native_cpu import _native
    stride = int(sys.argv[1]) if len(sys.argv) > 1 else 61
    isas = list(_native.int8_isas())[:2]
    tiny = float(np.finfo(np.float32).tiny)
    top = int(np.float32(np.inf).view(np.uint32))       # the finite floats are below +inf's bits
    for act, exact in (("gelu", exact_gelu), ("gelu_tanh", exact_gelu_tanh)):
        worst_rel, worst_x, worst_abs, differ, count = 0.0, 0.0, 0.0, 0, 0
        for sign in (0, 0x80000000):
            for start in range(0, top, stride * CHUNK):
                bits = np.arange(start, min(start + stride * CHUNK, top), stride, dtype=np.uint64)
                x = (bits.astype(np.uint32) | np.uint32(sign)).view(np.float32)
                outs = []
                for isa in isas:
                    _native.set_int8_isa(isa)
                    y = x.copy()
                    _native.apply_activation(y, act)
                    outs.append(y)
                differ += int(np.count_nonzero(outs[0].view(np.uint32) != outs[-1].view(np.uint32)))
                with np.errstate(invalid="ignore"):
                    want = exact(x)
                err = np.abs(outs[0].astype(np.float64) - want)
                normal = np.abs(want) > tiny
                if normal.any():
                    rel = err[normal] / np.abs(want[normal])
                    i = int(np.argmax(rel))
                    if rel[i] > worst_rel:
                        worst_rel, worst_x = float(rel[i]), float(x[normal][i])
                if (~normal).any():
                    worst_abs = max(worst_abs, float(np.max(err[~normal])))
                count += x.size
        _native.set_int8_isa("auto")
        print(f"{act}: {count} values (every {stride}th float32 bit pattern, both signs); {' vs '.join(isas)} "
              f"differ at {differ}; worst relative error {worst_rel:.3g} (x = {worst_x!r}); worst absolute error "
              f"where the exact result is below float32's normal range {worst_abs:.3g}", flush=True)


if __name__ == "__main__":
    main()
