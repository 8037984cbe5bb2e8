"""Blocked round-to-nearest (RTN) quantization of a MatMul weight, in numpy.

A weight ``w`` of shape ``[K, N]`` (MatMul's ``B``; ``K`` is the reduction axis) is cut along
``K`` into blocks of ``block_size`` rows; every block of every column gets its own scale (and,
when asymmetric, its own zero point):

* symmetric, signed codes ``q in [-2^(b-1), 2^(b-1) - 1]``: ``scale = max|w| / (2^(b-1) - 1)``,
  ``q = clip(round(w / scale))``, ``w ≈ q * scale``;
* asymmetric, unsigned codes ``q in [0, 2^b - 1]``: ``lo = min(w, 0)``, ``hi = max(w, 0)``,
  ``scale = (hi - lo) / (2^b - 1)``, ``zp = round(-lo / scale)``, ``q = clip(round(w / scale) + zp)``,
  ``w ≈ (q - zp) * scale``.

Either way every element is reconstructed within ``scale / 2`` (the range always contains 0, so
0 is exact). ``K`` need not be a multiple of ``block_size``: the last block is shorter (it is
quantized as if padded with zeros), and ``scale`` has ``ceil(K / block_size)`` rows, which is the
shape ONNX's blocked ``DequantizeLinear`` (opset 21) expects. Blocks of zeros get ``scale = 1``.

``clip`` ratios shrink each block's range (``lo, hi -> r*lo, r*hi``) and keep, per block, the
ratio with the least (optionally row-weighted) squared error: a clipped outlier costs less than
the coarser steps it would impose on the whole block. :func:`quantize_along` blocks along either
axis (axis 1: each row of ``K`` has its own scales, shared by ``block_size`` columns);
:func:`fit_grid` and :func:`round_to_grid` split the two steps for GPTQ, which rounds row by row.
"""

from __future__ import annotations

import numpy as np

from graphopt.errors import UsageError

__all__ = [
    "SUPPORTED_BITS",
    "code_range",
    "dequantize_along",
    "dequantize_blockwise",
    "fit_grid",
    "quantize_along",
    "quantize_blockwise",
    "round_to_grid",
]

SUPPORTED_BITS = (2, 3, 4, 8)


def code_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """The smallest and largest code of a ``bits``-wide signed (symmetric) or unsigned integer."""
    if bits not in SUPPORTED_BITS:
        raise UsageError(f"bits must be one of {SUPPORTED_BITS}, not {bits}")
    if symmetric:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def quantize_blockwise(
    w: np.ndarray,
    bits: int,
    block_size: int,
    symmetric: bool,
    *,
    clip: tuple[float, ...] = (1.0,),
    row_weight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Quantize ``w [K, N]`` in blocks of ``block_size`` along ``K``.

    Returns ``(q, scale, zero_point)``: ``q`` int8 (symmetric) or uint8 (asymmetric) codes of
    shape ``[K, N]``, ``scale`` float32 ``[ceil(K / block_size), N]`` and ``zero_point`` of
    ``q``'s dtype and ``scale``'s shape, or ``None`` when symmetric. ``clip`` lists range ratios
    to try per block; ``row_weight [K]`` weighs the squared error of each row when choosing.
    """
    w = np.asarray(w)
    if w.ndim != 2:
        raise UsageError(f"quantize_blockwise needs a 2-D weight [K, N], got shape {w.shape}")
    if block_size < 1:
        raise UsageError(f"block_size must be positive, not {block_size}")
    if not clip or any(not 0 < r <= 1 for r in clip):
        raise UsageError(f"clip ratios must lie in (0, 1], got {clip}")
    k, n = w.shape
    blocks = -(-k // block_size)
    padded = np.zeros((blocks * block_size, n), dtype=np.float64)
    padded[:k] = w
    grouped = padded.reshape(blocks, block_size, n)
    weight = np.ones((blocks * block_size,), dtype=np.float64)
    if row_weight is not None:
        weight[:k] = row_weight
    weight[k:] = 0.0
    weight_g = weight.reshape(blocks, block_size, 1)
    best: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None
    best_err = None
    for ratio in clip:
        scale, zp = _grid(grouped, bits, symmetric, ratio)
        q = _round(grouped, scale[:, None, :], None if zp is None else zp[:, None, :], bits, symmetric)
        if len(clip) == 1:
            best = (q, scale, zp)
            break
        deq = (q - (0.0 if zp is None else zp[:, None, :])) * scale[:, None, :].astype(np.float64)
        err = (weight_g * (deq - grouped) ** 2).sum(axis=1)
        if best is None or best_err is None:
            best, best_err = (q, scale, zp), err
            continue
        better = err < best_err
        best_err = np.where(better, err, best_err)
        bq, bs, bz = best
        bq = np.where(better[:, None, :], q, bq)
        bs = np.where(better, scale, bs)
        bz = None if zp is None or bz is None else np.where(better, zp, bz)
        best = (bq, bs, bz)
    assert best is not None
    q, scale, zp = best
    dtype = np.int8 if symmetric else np.uint8
    codes = q.reshape(-1, n)[:k].astype(dtype)
    return codes, scale.astype(np.float32), None if zp is None else zp.astype(dtype)


def _grid(grouped: np.ndarray, bits: int, symmetric: bool, ratio: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Scale (float32) and zero point (float64 codes) per block of ``grouped [blocks, B, N]``."""
    qmin, qmax = code_range(bits, symmetric)
    if symmetric:
        scale = (np.abs(grouped).max(axis=1) * ratio / qmax).astype(np.float32)
        scale[scale == 0] = 1.0
        return scale, None
    lo = np.minimum(grouped.min(axis=1), 0.0) * ratio
    hi = np.maximum(grouped.max(axis=1), 0.0) * ratio
    scale = ((hi - lo) / qmax).astype(np.float32)
    scale[scale == 0] = 1.0
    zp = np.clip(np.rint(-lo / scale.astype(np.float64)), qmin, qmax)
    return scale, zp


def _round(w: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, bits: int, symmetric: bool) -> np.ndarray:
    """Codes (float64) of ``w`` on the grid ``(scale, zp)`` (broadcast against ``w``)."""
    qmin, qmax = code_range(bits, symmetric)
    shifted = np.rint(w / scale.astype(np.float64)) + (0.0 if zp is None else zp)
    return np.clip(shifted, qmin, qmax)


def fit_grid(
    rows: np.ndarray, bits: int, symmetric: bool, *, clip: tuple[float, ...] = (1.0,)
) -> tuple[np.ndarray, np.ndarray | None]:
    """The grid of one block ``rows [B, N]`` (one scale per column): ``(scale [N], zero_point [N] | None)``."""
    _, scale, zp = quantize_blockwise(rows, bits, max(len(rows), 1), symmetric, clip=clip)
    return scale[0], None if zp is None else zp[0]


def round_to_grid(
    w: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, bits: int, symmetric: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, dequantized)`` of ``w`` on a given grid (``scale``/``zero_point`` broadcast against ``w``)."""
    zp = None if zero_point is None else np.asarray(zero_point, dtype=np.float64)
    codes = _round(np.asarray(w, dtype=np.float64), np.asarray(scale), zp, bits, symmetric)
    deq = (codes - (0.0 if zp is None else zp)) * np.asarray(scale, dtype=np.float64)
    return codes, deq


def quantize_along(
    w: np.ndarray,
    bits: int,
    block_size: int,
    symmetric: bool,
    axis: int,
    *,
    clip: tuple[float, ...] = (1.0,),
    row_weight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """:func:`quantize_blockwise` with blocks along ``axis`` (0: K, scale ``[ceil(K/B), N]``;
    1: N, scale ``[K, ceil(N/B)]``, the layout of ``DequantizeLinear(axis=1, block_size=B)``)."""
    if axis == 0:
        return quantize_blockwise(w, bits, block_size, symmetric, clip=clip, row_weight=row_weight)
    if axis != 1:
        raise UsageError(f"axis must be 0 or 1, not {axis}")
    # Blocks along N: transpose, so each row of K becomes a column with its own scales; the
    # row weights then weigh whole columns, which does not change the choice per block.
    q, scale, zp = quantize_blockwise(np.asarray(w).T, bits, block_size, symmetric, clip=clip)
    return q.T.copy(), scale.T.copy(), None if zp is None else zp.T.copy()


def dequantize_along(
    q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, block_size: int, axis: int
) -> np.ndarray:
    """Inverse of :func:`quantize_along`."""
    if axis == 0:
        return dequantize_blockwise(q, scale, zero_point, block_size)
    zp = None if zero_point is None else np.asarray(zero_point).T
    return dequantize_blockwise(np.asarray(q).T, np.asarray(scale).T, zp, block_size).T.copy()


def dequantize_blockwise(
    q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, block_size: int
) -> np.ndarray:
    """``(q - zero_point) * scale`` with each scale row repeated over its block: float32 ``[K, N]``."""
    q = np.asarray(q)
    k = q.shape[0]
    expand = np.repeat(np.asarray(scale, dtype=np.float32), block_size, axis=0)[:k]
    codes = q.astype(np.int32)
    if zero_point is not None:
        codes = codes - np.repeat(np.asarray(zero_point).astype(np.int32), block_size, axis=0)[:k]
    return (codes.astype(np.float32) * expand).astype(np.float32)
