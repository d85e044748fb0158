"""Sparse weights for the numba and native sparse kernel tests: one generator of cases, so
both backends are tested on the same patterns (the reference is the judge of each)."""
from __future__ import annotations

import numpy as np

from kernels.core import layouts
from runtime.convert import prune


def sparse_weights(rng, n, k, kind):
    """(w, mask) of shape (N, K) for an unstructured sparsity pattern ``kind``."""
    w = rng.standard_normal((n, k)).astype(np.float32)
    if kind == "dense":                          # 0% sparsity
        return w, np.ones((n, k), bool)
    if kind == "all_pruned":                     # 100%: every row empty
        return w, np.zeros((n, k), bool)
    if kind == "empty_rows":                     # 70% and whole rows pruned
        mask = prune.magnitude_mask(w, 0.7)
        mask[::3] = False
        return w, mask
    if kind == "explicit_zeros":                 # stored zeros (kept by the mask)
        w[rng.random((n, k)) < 0.3] = 0.0
        return w, prune.magnitude_mask(w, 0.2) | (w == 0)
    if kind.startswith("magnitude"):
        return w, prune.magnitude_mask(w, float(kind[9:]))
    raise ValueError(kind)


def pack_sparse_case(rng, layout, n, k, kind="magnitude0.7", quant="int8", block=(1, 4), nm=(2, 4)):
    if layout == "csr":
        w, mask = sparse_weights(rng, n, k, kind)
        return layouts.pack("csr", "w", w, mask, quant=quant)
    if layout == "bsr":
        w = rng.standard_normal((n, k)).astype(np.float32)
        r, c = block
        if kind == "zero_blocks":                # whole stored blocks of zeros
            zb = rng.random((n // r, k // c)) < 0.4
            w = np.where(np.kron(zb, np.ones((r, c), bool)), np.float32(0), w)
            mask = np.ones((n, k), bool)
        elif kind == "all_pruned":
            mask = np.zeros((n, k), bool)
        elif kind == "dense":
            mask = np.ones((n, k), bool)
        else:
            mask = prune.block_mask(w, float(kind[5:]) if kind.startswith("block") and len(kind) > 5 else 0.7, block)
        return layouts.pack("bsr", "w", w, mask, quant=quant, block_shape=block)
    if layout == "nm":
        w = rng.standard_normal((n, k)).astype(np.float32)
        return layouts.pack("nm", "w", w, prune.nm_mask(w, *nm), quant=quant, n=nm[0], m=nm[1])
    raise ValueError(layout)
