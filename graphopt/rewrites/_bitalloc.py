"""Bit allocation under an average budget: the closed-form rate-distortion solution of BAQ.

Model: quantizing layer ``i`` (``n_i`` weights, sensitivity ``s_i``) at ``b`` bits costs
``D_i(b) = n_i · s_i · 2^(-2b)``. Minimising ``Σ D_i`` subject to ``Σ n_i b_i = B Σ n_i`` gives
``b_i = B + ½·log2(s_i / G)`` with ``G`` the ``n``-weighted geometric mean of ``s``. The
continuous bits are then rounded to the available widths under the budget, two ways, keeping the
one with the smaller modelled distortion: (a) each layer takes the widest width not above its
``b_i``; (b) the discrete Lagrangian relaxation, each layer minimising ``D_i(b) + λ n_i b`` with
the smallest ``λ`` that meets the budget (bisection). Either way, while some step up still fits,
the one that gains most per extra bit is taken. The result never exceeds ``B`` bits per weight
on average.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from graphopt.errors import UsageError

__all__ = ["allocate_bits", "closed_form_bits"]


def closed_form_bits(
    sensitivity: Sequence[float] | np.ndarray, sizes: Sequence[int] | np.ndarray, average_bits: float
) -> np.ndarray:
    """``b_i = B + ½·log2(s_i / G)``, ``G = exp(Σ n_i ln s_i / Σ n_i)`` (so ``Σ n_i b_i = B Σ n_i``)."""
    s = np.maximum(np.asarray(sensitivity, dtype=np.float64), 1e-30)
    n = np.asarray(sizes, dtype=np.float64)
    if s.shape != n.shape or s.ndim != 1 or not len(s):
        raise UsageError("sensitivity and sizes must be non-empty lists of the same length")
    log_geomean = float(np.sum(n * np.log(s)) / np.sum(n))
    return average_bits + 0.5 * (np.log(s) - log_geomean) / np.log(2)


def allocate_bits(
    sensitivity: Sequence[float], sizes: Sequence[int], average_bits: float, choices: Sequence[int]
) -> tuple[list[int], np.ndarray]:
    """Integer widths from ``choices`` with ``Σ n_i b_i <= B Σ n_i``, and the continuous solution."""
    widths = sorted(set(int(c) for c in choices))
    if not widths:
        raise UsageError("no bit widths to choose from")
    n = np.asarray(sizes, dtype=np.float64)
    s = np.maximum(np.asarray(sensitivity, dtype=np.float64), 1e-30)
    budget = average_bits * n.sum()
    if widths[0] * n.sum() > budget + 1e-9:
        raise UsageError(f"an average of {average_bits} bits is below the narrowest width {widths[0]}")
    continuous = closed_form_bits(s, n, average_bits)
    floor = [max([j for j, w in enumerate(widths) if w <= b + 1e-9], default=0) for b in continuous]
    options = [_fill(floor, n, s, widths, budget), _fill(_lagrangian(n, s, widths, budget), n, s, widths, budget)]
    best = min(options, key=lambda level: _distortion(level, n, s, widths))
    return [widths[j] for j in best], continuous


def _distortion(level: list[int], n: np.ndarray, s: np.ndarray, widths: list[int]) -> float:
    return float(sum(n[i] * s[i] * 2.0 ** (-2 * widths[j]) for i, j in enumerate(level)))


def _lagrangian(n: np.ndarray, s: np.ndarray, widths: list[int], budget: float) -> list[int]:
    """Per-layer ``argmin_b n_i s_i 2^(-2b) + λ n_i b`` for the smallest feasible ``λ`` (bisection in log λ)."""
    w = np.asarray(widths, dtype=np.float64)

    def choose(log_lam: float) -> list[int]:
        cost = s[:, None] * 2.0 ** (-2 * w[None, :]) + np.exp(log_lam) * w[None, :]
        return [int(j) for j in cost.argmin(axis=1)]

    def total(level: list[int]) -> float:
        return float(np.sum(n * w[level]))

    centre = float(np.log(np.median(s)))
    lo, hi = centre - 120.0, centre + 120.0  # lo: everyone widest; hi: everyone narrowest
    for _ in range(100):
        mid = (lo + hi) / 2
        if total(choose(mid)) > budget + 1e-9:
            lo = mid
        else:
            hi = mid
    return choose(hi)


def _fill(start: list[int], n: np.ndarray, s: np.ndarray, widths: list[int], budget: float) -> list[int]:
    """Step layers down until the budget holds, then up while a step fits (best ratio first)."""
    level = list(start)

    def total() -> float:
        return float(sum(n[i] * widths[level[i]] for i in range(len(level))))

    def cost(i: int, j: int) -> float:
        return float(n[i] * s[i] * 2.0 ** (-2 * widths[j]))

    while total() > budget + 1e-9:
        down = [i for i in range(len(level)) if level[i] > 0]
        i = min(down, key=lambda i: (cost(i, level[i] - 1) - cost(i, level[i]))
                / (n[i] * (widths[level[i]] - widths[level[i] - 1])))
        level[i] -= 1
    while True:
        spare = budget - total()
        up = [i for i in range(len(level)) if level[i] + 1 < len(widths)
              and n[i] * (widths[level[i] + 1] - widths[level[i]]) <= spare + 1e-9]
        if not up:
            return level
        i = max(up, key=lambda i: (cost(i, level[i]) - cost(i, level[i] + 1))
                / (n[i] * (widths[level[i] + 1] - widths[level[i]])))
        level[i] += 1
