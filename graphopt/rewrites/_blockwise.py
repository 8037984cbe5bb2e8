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
"""

from __future__ import annotations

import numpy as np

from graphopt.errors import UsageError

__all__ = ["SUPPORTED_BITS", "code_range", "dequantize_blockwise", "quantize_blockwise"]

SUPPORTED_BITS = (2, 3, 4, 8)


def code_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """The smallest and largest code of a ``bits``-wide signed (symmetric) or unsigned integer."""
    if bits not in SUPPORTED_BITS:
        raise UsageError(f"bits must be one of {SUPPORTED_BITS}, not {bits}")
    if symmetric:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def quantize_blockwise(
    w: np.ndarray, bits: int, block_size: int, symmetric: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Quantize ``w [K, N]`` in blocks of ``block_size`` along ``K``.

    Returns ``(q, scale, zero_point)``: ``q`` int8 (symmetric) or uint8 (asymmetric) codes of
    shape ``[K, N]``, ``scale`` float32 ``[ceil(K / block_size), N]`` and ``zero_point`` of
    ``q``'s dtype and ``scale``'s shape, or ``None`` when symmetric.
    """
    w = np.asarray(w)
    if w.ndim != 2:
        raise UsageError(f"quantize_blockwise needs a 2-D weight [K, N], got shape {w.shape}")
    if block_size < 1:
        raise UsageError(f"block_size must be positive, not {block_size}")
    qmin, qmax = code_range(bits, symmetric)
    k, n = w.shape
    blocks = -(-k // block_size)
    padded = np.zeros((blocks * block_size, n), dtype=np.float64)
    padded[:k] = w
    grouped = padded.reshape(blocks, block_size, n)
    if symmetric:
        amax = np.abs(grouped).max(axis=1)
        scale = (amax / qmax).astype(np.float32)
        scale[scale == 0] = 1.0
        q = np.clip(np.rint(grouped / scale[:, None, :].astype(np.float64)), qmin, qmax)
        codes = q.reshape(-1, n)[:k].astype(np.int8)
        return codes, scale, None
    lo = np.minimum(grouped.min(axis=1), 0.0)
    hi = np.maximum(grouped.max(axis=1), 0.0)
    scale = ((hi - lo) / qmax).astype(np.float32)
    scale[scale == 0] = 1.0
    s64 = scale.astype(np.float64)
    zp = np.clip(np.rint(-lo / s64), qmin, qmax)
    q = np.clip(np.rint(grouped / s64[:, None, :]) + zp[:, None, :], qmin, qmax)
    codes = q.reshape(-1, n)[:k].astype(np.uint8)
    return codes, scale, zp.astype(np.uint8)


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
