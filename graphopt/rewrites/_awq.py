"""AWQ-style activation-aware scaling of a weight before quantization (Lin et al., 2023).

Input channels that see large activations matter more. With ``a_k`` the mean ``|x_k|`` and
``s = a^alpha / sqrt(max(a^alpha) · min(a^alpha))``, the weight is quantized as ``Q(diag(s) W)`` and the
activation divided by ``s``: ``x W ≈ (x / s) · Q(diag(s) W)``. ``alpha`` is chosen on a grid in
``[0, 1)`` to minimise the layer reconstruction error ``tr(DᵀHD)``, ``D = W - diag(s)⁻¹ Q(diag(s) W)``
(``H = XᵀX``); ``alpha = 0`` (``s = 1``) is plain round-to-nearest, so the search never does worse
than RTN on the calibration data.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from graphopt.rewrites._layerstats import layer_error

__all__ = ["awq_scales", "awq_search"]


def awq_scales(mean_abs: np.ndarray, alpha: float) -> np.ndarray:
    """``s = a^alpha`` normalised to geometric mid-range 1; channels never active get ``s = 1``."""
    a = np.asarray(mean_abs, dtype=np.float64)
    alive = a > 0
    s = np.ones_like(a)
    if not alive.any() or alpha == 0:
        return s
    s[alive] = a[alive] ** alpha
    s[alive] /= np.sqrt(s[alive].max() * s[alive].min())
    return s


def awq_search(
    w: np.ndarray,
    hessian: np.ndarray,
    mean_abs: np.ndarray,
    fake_quantize: Callable[[np.ndarray], np.ndarray],
    *,
    grid: int = 20,
) -> tuple[np.ndarray, float, float]:
    """The scales ``s [K]`` with the least reconstruction error, their ``alpha`` and that error.

    ``fake_quantize(w)`` returns the dequantized weight of the scheme in use (any grid).
    """
    w64 = np.asarray(w, dtype=np.float64)
    best = (np.ones(w.shape[0]), 0.0, np.inf)
    for step in range(grid):
        alpha = step / grid
        s = awq_scales(mean_abs, alpha)
        w_hat = fake_quantize((w64 * s[:, None]).astype(np.float32)) / s[:, None]
        error = layer_error(w64, w_hat, hessian)
        if error < best[2]:
            best = (s, alpha, error)
    return best
