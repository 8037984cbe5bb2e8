"""Activation range calibrators over streamed histograms: MinMax, percentile, entropy (KL) and MSE.

:class:`RangeCollector` consumes activation batches one at a time and keeps the exact minimum and
maximum and a signed histogram over ``[-R, R)`` with ``2 * half_bins`` bins. ``R`` is a power of two
that doubles (merging adjacent bin pairs, which is exact) whenever a batch exceeds it, so the
histogram never needs a second pass over the data. Values that are not finite or whose magnitude
exceeds ``max_abs`` (attention-mask adds of ``-inf`` / ``-3.4e38``, padding sentinels) are counted
in ``ignored`` and otherwise left out: they would stretch every range to uselessness.

:meth:`RangeCollector.range` turns the statistics into a float range ``(lo, hi)`` that always
contains 0 (so 0 is exactly representable):

* ``minmax``: ``(min(x), max(x))``;
* ``percentile``: the ``(100 - p)``-th and ``p``-th percentiles (``p``-th percentile of ``|x|``
  when symmetric);
* ``entropy``: the threshold ``T`` on ``|x|`` minimising ``KL(P || Q)`` between the clipped
  histogram ``P`` and its quantised version ``Q`` with ``2^(bits-1)`` levels (TensorRT's method);
* ``mse``: the range ``c * (min, max)``, ``c`` in ``(0, 1]``, minimising the expected squared
  error ``sum_b n_b (x_b - clip(x_b))^2 + n_in * step^2 / 12``.
"""

from __future__ import annotations

import math

import numpy as np

from graphopt.errors import UsageError

__all__ = [
    "METHODS",
    "ChannelAbsMax",
    "RangeCollector",
    "quant_params",
]

METHODS = ("minmax", "percentile", "entropy", "mse")

_DEFAULT_MAX_ABS = 1e6


class RangeCollector:
    """Streamed statistics of one activation tensor (see the module docstring)."""

    def __init__(self, *, half_bins: int = 1024, max_abs: float = _DEFAULT_MAX_ABS) -> None:
        if half_bins < 16 or half_bins % 2:
            raise UsageError(f"half_bins must be an even number >= 16, not {half_bins}")
        if not max_abs > 0:
            raise UsageError(f"max_abs must be positive, not {max_abs}")
        self.half_bins = half_bins
        self.max_abs = float(max_abs)
        self.hist = np.zeros(2 * half_bins, dtype=np.float64)
        self.radius = 0.0  # R; 0 until the first non-zero value
        self.minimum = math.inf
        self.maximum = -math.inf
        self.count = 0
        self.ignored = 0

    def update(self, values: np.ndarray) -> None:
        x = np.asarray(values, dtype=np.float32).ravel()
        keep = np.isfinite(x) & (np.abs(x) <= self.max_abs)
        self.ignored += int(x.size - np.count_nonzero(keep))
        x = x[keep]
        if x.size == 0:
            return
        self.count += int(x.size)
        lo, hi = float(x.min()), float(x.max())
        self.minimum, self.maximum = min(self.minimum, lo), max(self.maximum, hi)
        amax = max(abs(lo), abs(hi))
        if amax > 0 and self.radius == 0:
            self.radius = 2.0 ** math.ceil(math.log2(amax) + 1e-12)
        while self.radius and amax >= self.radius:
            self._double()
        radius = self.radius or 1.0
        counts, _ = np.histogram(x, bins=2 * self.half_bins, range=(-radius, radius))
        self.hist += counts

    def _double(self) -> None:
        """``R -> 2R``: old bin ``j`` falls into new bin ``H/2 + j // 2`` (``H = half_bins``)."""
        merged = self.hist.reshape(-1, 2).sum(axis=1)
        quarter = self.half_bins // 2
        self.hist = np.zeros_like(self.hist)
        self.hist[quarter : quarter + merged.size] = merged
        self.radius *= 2

    @property
    def step(self) -> float:
        return (self.radius or 1.0) / self.half_bins

    def edges(self) -> np.ndarray:
        radius = self.radius or 1.0
        return np.linspace(-radius, radius, 2 * self.half_bins + 1)

    def abs_hist(self) -> np.ndarray:
        """Histogram of ``|x|`` over ``[0, R)`` with ``half_bins`` bins."""
        h = self.half_bins
        return self.hist[h:] + self.hist[:h][::-1]

    def range(
        self, method: str = "minmax", *, percentile: float = 99.999, symmetric: bool = False, bits: int = 8
    ) -> tuple[float, float]:
        """The calibrated float range ``(lo, hi)`` with ``lo <= 0 <= hi`` (see the module docstring)."""
        if method not in METHODS:
            raise UsageError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
        if self.count == 0:
            return 0.0, 0.0
        mn, mx = min(self.minimum, 0.0), max(self.maximum, 0.0)
        if method == "minmax":
            lo, hi = mn, mx
        elif method == "percentile":
            lo, hi = self._percentile(percentile, symmetric)
        elif method == "entropy":
            t = self._entropy_threshold(bits)
            lo, hi = max(mn, -t), min(mx, t)
        else:
            lo, hi = self._mse(symmetric, bits)
        if symmetric:
            t = max(-lo, hi)
            lo, hi = -t, t
        return min(float(lo), 0.0), max(float(hi), 0.0)

    def _percentile(self, p: float, symmetric: bool) -> tuple[float, float]:
        if not 50 < p <= 100:
            raise UsageError(f"percentile must lie in (50, 100], not {p}")
        total = self.hist.sum()
        if symmetric:
            cdf = np.cumsum(self.abs_hist()) / total
            index = int(np.searchsorted(cdf, p / 100.0))
            t = min((index + 1) * self.step, max(-self.minimum, self.maximum))
            return -t, t
        cdf = np.cumsum(self.hist) / total
        edges = self.edges()
        lo_index = int(np.searchsorted(cdf, 1 - p / 100.0, side="right"))
        hi_index = int(np.searchsorted(cdf, p / 100.0))
        lo = max(edges[min(lo_index, cdf.size - 1)], self.minimum)
        hi = min(edges[min(hi_index + 1, cdf.size)], self.maximum)
        return float(lo), float(hi)

    def _entropy_threshold(self, bits: int) -> float:
        hist = self.abs_hist()
        levels = 1 << (bits - 1)
        nonzero = np.nonzero(hist)[0]
        last = int(nonzero[-1]) + 1 if nonzero.size else levels
        if last <= levels:
            return last * self.step
        best, best_kl = last, math.inf
        for i in range(levels, last + 1):
            p = hist[:i].copy()
            p[-1] += hist[i:].sum()
            q = _spread(hist[:i], levels)
            kl = _kl(p, q)
            if kl < best_kl:
                best, best_kl = i, kl
        return best * self.step

    def _mse(self, symmetric: bool, bits: int) -> tuple[float, float]:
        edges = self.edges()
        centers = (edges[:-1] + edges[1:]) / 2
        counts = self.hist
        mn, mx = min(self.minimum, 0.0), max(self.maximum, 0.0)
        if symmetric:
            t = max(-mn, mx)
            mn, mx = -t, t
        steps = (1 << bits) - (2 if symmetric else 1)
        best, best_err = (mn, mx), math.inf
        for c in np.linspace(1.0, 0.02, 99):
            lo, hi = mn * c, mx * c
            step = (hi - lo) / steps
            clipped = np.clip(centers, lo, hi)
            inside = counts[(centers >= lo) & (centers <= hi)].sum()
            err = float((counts * (centers - clipped) ** 2).sum() + inside * step**2 / 12)
            if err < best_err:
                best, best_err = (lo, hi), err
        return best


def _spread(hist: np.ndarray, levels: int) -> np.ndarray:
    """Quantise ``hist`` (at least ``levels`` bins) into ``levels`` groups and spread each group's
    mass evenly over its non-empty bins (the ``Q`` of the KL calibrator)."""
    starts = np.linspace(0, hist.size, levels + 1).astype(int)
    lengths = np.diff(starts)
    used = hist > 0
    sums = np.add.reduceat(hist, starts[:-1])
    counts = np.add.reduceat(used.astype(np.float64), starts[:-1])
    per_bin = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    return np.where(used, np.repeat(per_bin, lengths), 0.0)


def _kl(p: np.ndarray, q: np.ndarray, eps: float = 1e-4) -> float:
    """``KL(p || q)`` of the normalised histograms; bins where ``p`` has mass and ``q`` has none
    get probability ``eps`` in ``q`` (the clipped mass the candidate cannot represent)."""
    p_sum, q_sum = p.sum(), q.sum()
    if p_sum == 0 or q_sum == 0:
        return math.inf
    p, q = p / p_sum, q / q_sum
    mask = p > 0
    q = np.where(mask & (q == 0), eps, q)
    q = q / q.sum()
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


class ChannelAbsMax:
    """Streamed ``max |x|`` per channel of the last axis (SmoothQuant's activation statistic),
    ignoring non-finite values and those beyond ``max_abs``."""

    def __init__(self, *, max_abs: float = _DEFAULT_MAX_ABS) -> None:
        self.max_abs = float(max_abs)
        self.value: np.ndarray | None = None

    def update(self, values: np.ndarray) -> None:
        x = np.abs(np.asarray(values, dtype=np.float32))
        x = np.where(np.isfinite(x) & (x <= self.max_abs), x, 0.0)
        current = x.reshape(-1, x.shape[-1]).max(axis=0) if x.ndim else x.reshape(1)
        self.value = current if self.value is None else np.maximum(self.value, current)


def quant_params(lo: float, hi: float, *, symmetric: bool, bits: int = 8) -> tuple[float, int]:
    """``(scale, zero_point)`` for the float range ``[lo, hi]`` (``lo <= 0 <= hi``).

    Symmetric (signed codes): ``scale = max(|lo|, |hi|) / (2^(b-1) - 1)``, ``zero_point = 0``.
    Asymmetric (unsigned codes): ``scale = (hi - lo) / (2^b - 1)``, ``zero_point = round(-lo / scale)``.
    An empty range gets ``scale = 1`` (every value is 0).
    """
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if symmetric:
        qmax = (1 << (bits - 1)) - 1
        scale = max(-lo, hi) / qmax
        return (float(np.float32(scale)) if scale > 0 else 1.0), 0
    qmax = (1 << bits) - 1
    scale = (hi - lo) / qmax
    if scale <= 0:
        return 1.0, 0
    scale = float(np.float32(scale))
    return scale, int(np.clip(round(-lo / scale), 0, qmax))
