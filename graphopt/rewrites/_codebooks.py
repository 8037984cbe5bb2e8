"""Codebook (non-uniform) 4-bit formats: NormalFloat-4 (NF4) from QLoRA (Dettmers et al., 2023).

NF4's 16 levels are quantiles of N(0, 1) scaled to ``[-1, 1]``, asymmetric so that 0 is exact:
8 levels from the positive half, ``Φ⁻¹(linspace(p, 1/2, 9)[:-1])``, 7 from the negative half,
``-Φ⁻¹(linspace(p, 1/2, 8)[:-1])``, and 0, all divided by the largest magnitude, with QLoRA's
offset ``p = 0.9677083`` (the mean of the 1/32 and 1/30 tail quantiles' complements).
A block of ``block_size`` rows of ``W [K, N]`` (per column) keeps ``absmax`` as its scale and
each weight the index of its nearest level: ``w ≈ levels[q] · absmax``.
"""

from __future__ import annotations

import functools
from statistics import NormalDist

import numpy as np

from graphopt.errors import UsageError

__all__ = ["dequantize_nf4", "nf4_levels", "quantize_nf4"]

_NF4_OFFSET = 0.9677083


@functools.cache
def nf4_levels() -> np.ndarray:
    """The 16 NF4 levels, ascending, float32 (``levels[7] == 0``)."""
    ppf = NormalDist().inv_cdf
    positive = [ppf(p) for p in np.linspace(_NF4_OFFSET, 0.5, 9)[:-1]]
    negative = [-ppf(p) for p in np.linspace(_NF4_OFFSET, 0.5, 8)[:-1]]
    levels = np.array(sorted([*positive, 0.0, *negative]), dtype=np.float64)
    levels /= np.abs(levels).max()
    levels.flags.writeable = False
    return levels.astype(np.float32)


def quantize_nf4(w: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes uint8 ``[K, N]`` (0..15) and absmax scales float32 ``[K / block_size, N]``; ``K`` must
    be a multiple of ``block_size``."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise UsageError(f"quantize_nf4 needs a 2-D weight, got shape {w.shape}")
    k, n = w.shape
    if block_size < 1 or k % block_size:
        raise UsageError(f"NF4 needs K ({k}) to be a multiple of block_size ({block_size})")
    grouped = w.reshape(k // block_size, block_size, n)
    scale = np.abs(grouped).max(axis=1)
    scale[scale == 0] = 1.0
    normalised = grouped / scale[:, None, :]
    levels = nf4_levels()
    mids = (levels[1:] + levels[:-1]) / 2
    codes = np.searchsorted(mids, normalised).astype(np.uint8)
    return codes.reshape(k, n), scale.astype(np.float32)


def dequantize_nf4(codes: np.ndarray, scale: np.ndarray, block_size: int) -> np.ndarray:
    """``levels[codes] · scale`` with each scale row repeated over its block."""
    return (nf4_levels()[codes] * np.repeat(scale, block_size, axis=0)).astype(np.float32)
