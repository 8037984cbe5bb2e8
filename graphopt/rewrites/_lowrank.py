"""LQ-LoRA's decomposition: ``W ≈ Q + L1 L2`` with ``Q`` quantized and ``L1 L2`` of rank ``R``.

Alternating minimisation (Guo et al., 2024): repeat ``Q = quant(W - L)``, ``L = SVD_R(W - Q)``
and keep the iterate with the least error. The first iterate is plain quantization (``L = 0``);
the alternation then starts from the principal part ``L = SVD_R(W)`` rather than from the
quantization error of ``W``, from which it creeps towards the low-rank structure only slowly. With row
weights ``d [K]`` (a diagonal Fisher / activation second-moment proxy per input channel) the
low-rank step minimises ``||D^½ (W - Q - L)||``: ``L = D^-½ SVD_R(D^½ (W - Q))``. ``SVD_R`` is a
randomized SVD (Halko et al., 2011: Gaussian sketch, two power iterations, QR).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["lq_decompose", "randomized_svd"]


def randomized_svd(
    m: np.ndarray, rank: int, *, oversample: int = 8, power: int = 2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``U [K, R], S [R], Vt [R, N]`` approximating the top-``rank`` SVD of ``m``."""
    rng = np.random.default_rng(seed)
    k, n = m.shape
    width = min(rank + oversample, min(k, n))
    y = m @ rng.standard_normal((n, width))
    for _ in range(power):
        y, _ = np.linalg.qr(y)
        y = m @ (m.T @ y)
    basis, _ = np.linalg.qr(y)
    u_small, s, vt = np.linalg.svd(basis.T @ m, full_matrices=False)
    return (basis @ u_small)[:, :rank], s[:rank], vt[:rank]


def lq_decompose(
    w: np.ndarray,
    rank: int,
    fake_quantize: Callable[[np.ndarray], np.ndarray],
    *,
    iterations: int = 10,
    row_weight: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """``(L1 [K, R], L2 [R, N], errors)``: the best low-rank part found and the weighted error
    ``||D^½ (W - Q(W - L) - L)||_F`` of each iteration (``Q`` is recomputed from ``W - L1 L2``)."""
    w64 = np.asarray(w, dtype=np.float64)
    k, n = w64.shape
    d = np.ones(k) if row_weight is None else np.maximum(np.asarray(row_weight, dtype=np.float64), 1e-12)
    root = np.sqrt(d / d.mean())[:, None]
    l1, l2 = np.zeros((k, rank)), np.zeros((rank, n))
    best = (l1, l2, np.inf)
    errors = []
    for step in range(iterations + 1):
        low = l1 @ l2
        q = fake_quantize((w64 - low).astype(np.float32)).astype(np.float64)
        error = float(np.linalg.norm(root * (w64 - q - low)))
        errors.append(error)
        if error < best[2]:
            best = (l1, l2, error)
        if step == iterations:
            break
        target = w64 if step == 0 else w64 - q
        u, s, vt = randomized_svd(root * target, rank, seed=seed + step)
        l1, l2 = (u * s) / root, vt
    return best[0].astype(np.float32), best[1].astype(np.float32), errors
