"""GPTQ: blocked quantization of ``W [K, N]`` with error feedback through the inverse Hessian.

With ``H = XᵀX + λI`` (``λ = damp · mean(diag H)``) and ``H⁻¹ = UᵀU`` (``U`` upper triangular),
rows of ``W`` (input channels) are rounded in order; the error of row ``i``,
``e = (w_i - ŵ_i) / U_ii``, is spread over the rows not yet rounded, ``w_j -= U_ij e`` (j > i),
which minimises the layer reconstruction error ``||XW - XŴ||²`` greedily (Frantar et al., 2022).
Updates are applied lazily per batch of rows (one matrix product per batch).

The grid of a block is fitted when its first row is reached, from the rows as updated so far:
blocks along ``K`` (``axis=0``) span ``block_size`` rows; blocks along ``N`` (``axis=1``) lie in
one row, so each row's grid is fitted just before it is rounded.
"""

from __future__ import annotations

import numpy as np

from graphopt.errors import UsageError
from graphopt.rewrites._blockwise import fit_grid, quantize_along, round_to_grid

__all__ = ["gptq_quantize", "inverse_hessian_factor"]


def inverse_hessian_factor(hessian: np.ndarray, damp: float) -> np.ndarray:
    """Upper ``U`` with ``UᵀU = (H + λI)⁻¹``; channels never seen (``H_ii = 0``) get ``H_ii = 1``.

    With ``P`` the reversal permutation and ``PHP = MMᵀ`` (``M`` lower), ``U = P M⁻¹ P``: one
    Cholesky factorisation and one inverse, in float32 (float64 if float32 is not enough).
    """
    h = np.array(hessian, dtype=np.float64, copy=True)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    mean = float(np.mean(np.diag(h)))
    for attempt in range(8):
        dtype = np.float32 if attempt < 2 else np.float64
        damped = (h + (damp * 10 ** (attempt // 2)) * mean * np.eye(len(h)))[::-1, ::-1].astype(dtype)
        try:
            m_inv = np.linalg.inv(np.linalg.cholesky(damped))
        except np.linalg.LinAlgError:
            continue
        u = np.triu(m_inv[::-1, ::-1]).astype(np.float64)
        if np.all(np.isfinite(u)) and np.all(np.diag(u) > 0):
            return u
    raise UsageError("GPTQ: the calibration Hessian is not positive definite even with damping")


def gptq_quantize(
    w: np.ndarray,
    hessian: np.ndarray,
    bits: int,
    block_size: int,
    symmetric: bool,
    *,
    axis: int = 0,
    damp: float = 0.01,
    clip: tuple[float, ...] = (1.0,),
    lazy: int = 128,
    factor: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Quantize ``w [K, N]`` given ``H [K, K]``; returns codes, scales and zero points in the
    layout of :func:`graphopt.rewrites._blockwise.quantize_along` for the same ``axis``.
    ``factor`` is :func:`inverse_hessian_factor` of ``H`` when already computed (weights sharing an input)."""
    k, n = w.shape
    if hessian.shape != (k, k):
        raise UsageError(f"GPTQ: Hessian shape {hessian.shape} does not match the weight's K = {k}")
    work = np.array(w, dtype=np.float64, copy=True)
    u = factor if factor is not None else inverse_hessian_factor(hessian, damp)
    lazy = max(lazy // block_size, 1) * block_size if axis == 0 else lazy
    codes = np.zeros((k, n), dtype=np.float64)
    if axis == 0:
        blocks = -(-k // block_size)
        scale = np.ones((blocks, n), dtype=np.float32)
        zero: np.ndarray | None = None if symmetric else np.zeros((blocks, n), dtype=np.float64)
    else:
        cols = -(-n // block_size)
        scale = np.ones((k, cols), dtype=np.float32)
        zero = None if symmetric else np.zeros((k, cols), dtype=np.float64)
    row_scale = np.ones(n, dtype=np.float32)
    row_zero: np.ndarray | None = None
    for i1 in range(0, k, lazy):
        i2 = min(i1 + lazy, k)
        errors = np.zeros((i2 - i1, n))
        for i in range(i1, i2):
            if axis == 0 and i % block_size == 0:
                g = i // block_size
                row_scale, row_zero = fit_grid(work[i : i + block_size], bits, symmetric, clip=clip)
                scale[g] = row_scale
                if zero is not None and row_zero is not None:
                    zero[g] = row_zero
            elif axis == 1:
                _, s_row, z_row = quantize_along(work[i : i + 1], bits, block_size, symmetric, 1, clip=clip)
                scale[i] = s_row[0]
                row_scale = np.repeat(s_row[0], block_size)[:n]
                if zero is not None and z_row is not None:
                    zero[i] = z_row[0]
                    row_zero = np.repeat(z_row[0].astype(np.float64), block_size)[:n]
            q, deq = round_to_grid(work[i], row_scale, row_zero, bits, symmetric)
            codes[i] = q
            err = (work[i] - deq) / u[i, i]
            work[i + 1 : i2] -= np.outer(u[i, i + 1 : i2], err)
            errors[i - i1] = err
        if i2 < k:
            work[i2:] -= u[i1:i2, i2:].T @ errors
    dtype = np.int8 if symmetric else np.uint8
    return codes.astype(dtype), scale, None if zero is None else zero.astype(dtype)
