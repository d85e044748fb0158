"""Calibration-aware one-shot pruning of a Linear weight: Wanda masks and the OBS / SparseGPT
weight update (docs/CONVERTER.md, "Pruning methods").

Both read one statistic of the layer's input X (R rows x K, every row of every calibration
feed, as the already-pruned earlier layers produce it): the Gram matrix G = X^T X (float64,
K x K). The layer's output error for a changed weight W' is then known without X:

    ||X W'^T - X W^T||_F^2 = sum_n (W' - W)[n] G (W' - W)[n]^T        (``output_error``)

* **Wanda** (Sun et al. 2023): the score of W[n, k] is |W[n, k]| * ||X[:, k]|| =
  |W[n, k]| * sqrt(G[k, k]); the lowest scores are pruned, per output row for unstructured
  masks (every row keeps the same count, as the paper compares), per group for N:M, per block
  (scores summed) for RxC blocks. The kept weights are not changed.
* **OBS** (Optimal Brain Surgeon, in SparseGPT's form, Frantar & Alistarh 2023): with
  H = G + lambda I (``DAMP`` of mean(diag G), as SparseGPT and GPTQ; dead inputs, G[k, k] = 0,
  get H[k, k] = 1 and their weights 0), the columns are visited left to right. Removing W[n, k]
  costs W[n, k]^2 / [H^-1]_kk (its saliency) once the earlier columns are fixed, and the best
  compensation moves the rest of row n by -W[n, k] / [H^-1]_kk * [H^-1]_k,k: (the row of the
  upper Cholesky factor U of H^-1, U^T U = H^-1, gives exactly these sequential updates). The
  mask is chosen from the *updated* weights at the start of each column block (``BLOCK``
  columns: the fraction s of lowest saliency in the block, every row together, or per RxC tile
  for block masks) or N:M group, so it adapts to the updates made so far. Pruned weights come
  out exactly 0.

Shapes: w (N, K) float32 (a Linear weight maps K inputs to N outputs), g (K, K) float64.
Masks are bool (N, K), True = kept, with the counting rule of prune.py (``round(s * count)``
items pruned per decision unit; ties: the earlier item in C order first).
"""
from __future__ import annotations

import numpy as np

from .prune import _count, _prune_smallest, check_sparsity, nm_mask

DAMP = 0.01          # lambda = DAMP * mean(diag G): SparseGPT's and GPTQ's default
BLOCK = 128          # columns per mask decision and per lazy batch of updates (SparseGPT)

KINDS = ("unstructured", "nm", "block")


class LayerInputStats:
    """Accumulates G = X^T X, the row count and the column sums and maxima of |X| over the
    batches of one layer input (the sums for bias correction, the maxima for SmoothQuant)."""

    def __init__(self, k: int, sample_rows: int = 0, cross: bool = False):
        self.k = int(k)
        self.gram = np.zeros((self.k, self.k), np.float64)
        # with ``cross``: the same layer's input in the original model, X0 (same rows), as
        # C = X^T X0 and G0 = X0^T X0 (drift correction, ``drift_corrected``)
        self.cross = np.zeros((self.k, self.k), np.float64) if cross else None
        self.gram0 = np.zeros((self.k, self.k), np.float64) if cross else None
        self.rows = 0
        self.col_sum = np.zeros(self.k, np.float64)
        self.absmax = np.zeros(self.k, np.float64)
        self.col_min = np.zeros(self.k, np.float64)      # min(0, min X[:, j]): ranges include 0
        self.col_max = np.zeros(self.k, np.float64)
        # up to ``sample_rows`` rows of every batch, kept as float32 (SmoothQuant's alpha search
        # simulates quantization on real rows; a fixed seed picks them)
        self.sample_rows = int(sample_rows)
        self._samples: list[np.ndarray] = []
        self._rng = np.random.default_rng(0)

    @property
    def sample(self) -> np.ndarray:
        """The kept rows (R, K) float32."""
        return np.concatenate(self._samples) if self._samples else np.zeros((0, self.k), np.float32)

    def add(self, x: np.ndarray) -> None:
        """x (..., K): every leading index is one row of the layer's input."""
        x2 = np.asarray(x, np.float64).reshape(-1, self.k)
        if not np.isfinite(x2).all():
            raise ValueError("a calibration activation holds NaN or Inf")
        self.gram += x2.T @ x2
        self.rows += x2.shape[0]
        self.col_sum += x2.sum(axis=0)
        if x2.shape[0]:
            self.absmax = np.maximum(self.absmax, np.abs(x2).max(axis=0))
            self.col_min = np.minimum(self.col_min, x2.min(axis=0))
            self.col_max = np.maximum(self.col_max, x2.max(axis=0))
            if self.sample_rows:
                pick = x2 if x2.shape[0] <= self.sample_rows else \
                    x2[np.sort(self._rng.choice(x2.shape[0], self.sample_rows, replace=False))]
                self._samples.append(pick.astype(np.float32))

    def add_original(self, x: np.ndarray, x0: np.ndarray) -> None:
        """x0 (..., K): the original model's input of the layer on the same feed as the rows
        ``x`` just given to ``add`` (the same rows in the same order)."""
        x2 = np.asarray(x, np.float64).reshape(-1, self.k)
        y2 = np.asarray(x0, np.float64).reshape(-1, self.k)
        if x2.shape != y2.shape:
            raise ValueError(f"the original model's layer input has {y2.shape[0]} rows, the changed model's {x2.shape[0]}")
        if not np.isfinite(y2).all():
            raise ValueError("a calibration activation of the original model holds NaN or Inf")
        self.cross += x2.T @ y2
        self.gram0 += y2.T @ y2

    def scale_rows(self, s64: np.ndarray) -> None:
        """The layer now reads X / s (SmoothQuant): rescale what was measured on X."""
        self.gram = self.gram / np.outer(s64, s64)
        self.absmax = self.absmax / s64
        self.col_sum = self.col_sum / s64
        if self.cross is not None:
            self.cross = self.cross / s64[:, None]


def output_error(w_new: np.ndarray, w: np.ndarray, g: np.ndarray) -> float:
    """||X W_new^T - X W^T|| / ||X W^T|| over the calibration rows behind g (module docstring)."""
    w64 = np.asarray(w, np.float64)
    d = np.asarray(w_new, np.float64) - w64
    num = float(np.einsum("nk,kj,nj->", d, g, d))
    den = float(np.einsum("nk,kj,nj->", w64, g, w64))
    return float(np.sqrt(max(num, 0.0) / den)) if den > 0 else 0.0


def drift_corrected(w: np.ndarray, w0: np.ndarray, g: np.ndarray, cross: np.ndarray) -> np.ndarray:
    """The weight that best restores the original model's layer output on the changed model.

    The sequential pass measures each layer's input X on the model as the earlier layers were
    already pruned and rounded; the original model computed X0 W0^T from its own input X0. OBS
    and GPTQ, given the layer's weight W and G = X^T X, keep X W'^T close to X W^T, i.e. they
    keep the error that reached the layer. This solves instead

        min_V ||X V^T - X0 W0^T||^2 + lambda ||V - W||^2
        (G + lambda I) V^T = C W0^T + lambda W^T,   C = X^T X0

    (lambda as OBS's damping, so with no drift, X = X0 and W = W0, V = W exactly; W differs
    from W0 only by SmoothQuant's column scales, with X = X0 / s); pruning and rounding then
    start from V with the same H: ||X V'^T - X0 W0^T||^2 differs from ||X (V' - V)^T||^2 by a
    constant (V is the least-squares solution), so OBS / GPTQ's own objective is the right one
    after the move (GPTAQ, Li et al. 2025, folds the same target into GPTQ's loop).
    w, w0 (N, K) float32; g, cross (K, K) float64; returns V (N, K) float32."""
    g = np.asarray(g, np.float64)
    dead = np.diagonal(g) == 0
    h, lam = _damping(g, dead)
    rhs = np.asarray(cross, np.float64) @ np.asarray(w0, np.float64).T + lam * np.asarray(w, np.float64).T
    out = np.linalg.solve(h + lam * np.eye(g.shape[0]), rhs).T
    out[:, dead] = 0.0
    return out.astype(np.float32)


def target_error(w_new: np.ndarray, w0: np.ndarray, g: np.ndarray, cross: np.ndarray, g0: np.ndarray) -> float:
    """||X W_new^T - X0 W0^T|| / ||X0 W0^T||: the layer's output error against the original
    model's (drift_corrected's names)."""
    a, b = np.asarray(w_new, np.float64), np.asarray(w0, np.float64)
    num = float(np.einsum("nk,kj,nj->", a, g, a) - 2 * np.einsum("nk,kj,nj->", a, cross, b)
                + np.einsum("nk,kj,nj->", b, g0, b))
    den = float(np.einsum("nk,kj,nj->", b, g0, b))
    return float(np.sqrt(max(num, 0.0) / den)) if den > 0 else 0.0


def _check(w: np.ndarray, g: np.ndarray, kind: str, sparsity: float, nm, block) -> tuple[np.ndarray, float]:
    if kind not in KINDS:
        raise ValueError(f"mask kind must be one of {', '.join(KINDS)}, got {kind!r}")
    a = np.asarray(w)
    if a.ndim != 2:
        raise ValueError(f"calibration-aware pruning takes a Linear weight (N, K), got shape {a.shape}")
    n, k = a.shape
    if np.shape(g) != (k, k):
        raise ValueError(f"input statistics are {np.shape(g)}, expected ({k}, {k}) for a weight {a.shape}")
    s = 0.0 if kind == "nm" else check_sparsity(sparsity)
    if kind == "nm" and k % nm[1]:
        raise ValueError(f"N:M groups of {nm[1]} do not tile K = {k}")
    if kind == "block" and (n % block[0] or k % block[1]):
        raise ValueError(f"block {block[0]}x{block[1]} does not tile the weight {n}x{k}")
    return a, s


def _tile_mask(scores: np.ndarray, block: tuple[int, int], s: float) -> np.ndarray:
    """Keep mask (N, K') over scores (N, K'): RxC tiles ranked by their summed score, the
    round(s * tiles) lowest pruned, the decision broadcast to every element of its tile."""
    (r, c), (n, k) = block, scores.shape
    tiles = scores.reshape(n // r, r, k // c, c).sum(axis=(1, 3))
    keep = _prune_smallest(tiles.ravel(), _count(s, tiles.size)).reshape(tiles.shape)
    return np.ascontiguousarray(np.broadcast_to(keep[:, None, :, None], (n // r, r, k // c, c))).reshape(n, k)


def wanda_mask(w: np.ndarray, g: np.ndarray, kind: str, sparsity: float = 0.0,
               nm: tuple[int, int] = (2, 4), block: tuple[int, int] = (1, 4)) -> np.ndarray:
    """Wanda's mask (module docstring); w (N, K), g (K, K)."""
    a, s = _check(w, g, kind, sparsity, nm, block)
    n, k = a.shape
    score = np.abs(a.astype(np.float64)) * np.sqrt(np.maximum(np.diagonal(np.asarray(g, np.float64)), 0.0))[None, :]
    if kind == "unstructured":
        per_row = _count(s, k)
        return np.stack([_prune_smallest(score[i], per_row) for i in range(n)])
    if kind == "nm":
        return nm_mask(score, *nm)        # the scores are >= 0: ranked as magnitudes
    return _tile_mask(score, block, s)


def _damping(g: np.ndarray, dead: np.ndarray) -> tuple[np.ndarray, float]:
    """(G with H[k, k] = 1 for the dead inputs, lambda = DAMP * mean of that diagonal)."""
    h = g.copy()
    h[dead, dead] = 1.0
    return h, DAMP * float(np.mean(np.diagonal(h)))


def _inverse_cholesky(g: np.ndarray, dead: np.ndarray) -> np.ndarray:
    """Upper U with U^T U = (G + lambda I)^-1, lambda raised tenfold until H is positive definite."""
    h, damp = _damping(g, dead)
    for _ in range(6):
        try:
            hd = h + damp * np.eye(h.shape[0])
            inv = np.linalg.inv(hd)
            return np.linalg.cholesky((inv + inv.T) / 2).T
        except np.linalg.LinAlgError:
            damp *= 10.0
    raise ValueError("the layer's input statistics are not positive definite even with damping")


def obs_prune(w: np.ndarray, g: np.ndarray, kind: str, sparsity: float = 0.0,
              nm: tuple[int, int] = (2, 4), block: tuple[int, int] = (1, 4)) -> tuple[np.ndarray, np.ndarray]:
    """OBS / SparseGPT pruning (module docstring). Returns (updated weight (N, K) float32 with
    exact zeros where pruned, mask (N, K) bool, True = kept)."""
    a, s = _check(w, g, kind, sparsity, nm, block)
    g = np.asarray(g, np.float64)
    n, k = a.shape
    wt = a.astype(np.float64).copy()
    dead = np.diagonal(g) == 0
    wt[:, dead] = 0.0
    u = _inverse_cholesky(g, dead)
    mask = np.ones((n, k), bool)
    step = BLOCK if kind != "block" else max(block[1], BLOCK // block[1] * block[1])
    for c0 in range(0, k, step):
        c1 = min(k, c0 + step)
        w1 = wt[:, c0:c1].copy()
        err = np.zeros_like(w1)
        u1 = u[c0:c1, c0:c1]
        d1 = np.diagonal(u1)
        if kind == "unstructured":
            sal = (w1 * w1) / (d1 * d1)[None, :]
            mask[:, c0:c1] = _prune_smallest(sal.ravel(), _count(s, sal.size)).reshape(sal.shape)
        elif kind == "block":
            mask[:, c0:c1] = _tile_mask((w1 * w1) / (d1 * d1)[None, :], block, s)
        for j in range(c1 - c0):
            if kind == "nm" and j % nm[1] == 0:
                m = nm[1]
                mask[:, c0 + j:c0 + j + m] = nm_mask((w1[:, j:j + m] ** 2) / (d1[j:j + m] ** 2)[None, :], *nm)
            col = w1[:, j]
            q = np.where(mask[:, c0 + j], col, 0.0)
            e = (col - q) / u1[j, j]
            w1[:, j:] -= np.outer(e, u1[j, j:])
            w1[:, j] = q                         # exactly the kept value or 0
            err[:, j] = e
        wt[:, c0:c1] = w1
        wt[:, c1:] -= err @ u[c0:c1, c1:]
    out = wt.astype(np.float32)
    out[~mask] = 0.0
    return out, mask
