"""Activation rows that hold near ties of dynamic quantization (shared by the native and numba
quantizer tests): the vector quantizers estimate x / s by a float32 multiply and fall back to
the reference's float64 division only near a half-integer, so these rows must take that
fallback wherever the estimate could round the other way."""
from __future__ import annotations

import numpy as np


def near_tie_rows(rng: np.random.Generator, k: int, rows: int, starts: list[int]) -> np.ndarray:
    """(rows, k) float32: each row's max |x| at column 0, and at every column in ``starts`` the
    values near ties of its dynamic scale s = max|x| / 127: half the max (x / s = 63.5 (1 + e)
    after s's rounding), its negation and float32 neighbours, a quarter of the max, and
    62.5 s (through float32). The rest uniform in +-0.4 max."""
    out = []
    for amax in rng.uniform(0.01, 100.0, rows).astype(np.float32):
        row = rng.uniform(-1, 1, k).astype(np.float32) * amax * np.float32(0.4)
        row[0] = amax
        half = np.float32(amax / np.float32(2))
        near = [half, -half, np.nextafter(half, np.float32(0)), np.nextafter(half, np.float32(np.inf)),
                -np.nextafter(half, np.float32(0)), half * np.float32(0.5), half / np.float32(63.5) * 62.5]
        for at in starts:
            row[at:at + len(near)] = near[:k - at]
        out.append(row)
    return np.stack(out)
