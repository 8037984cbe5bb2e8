"""Calibrators against numpy references on known distributions."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.errors import UsageError
from graphopt.rewrites._calibrators import METHODS, ChannelAbsMax, RangeCollector, quant_params


def _collect(*batches: np.ndarray, **kwargs: float) -> RangeCollector:
    collector = RangeCollector(**kwargs)  # type: ignore[arg-type]
    for batch in batches:
        collector.update(batch)
    return collector


def test_minmax_is_exact_and_ignores_masks() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(10_000).astype(np.float32)
    masked = np.concatenate([x, [-np.inf, np.nan, np.float32(-3.4e38), 1e9]]).astype(np.float32)
    c = _collect(masked[:5000], masked[5000:])
    assert c.range("minmax") == (float(x.min()), float(x.max()))
    assert c.ignored == 4 and c.count == x.size


def test_streamed_histogram_equals_one_shot_histogram() -> None:
    rng = np.random.default_rng(1)
    small, large = rng.uniform(-0.3, 0.3, 4000), rng.uniform(-5, 7, 4000)
    c = _collect(small, large, half_bins=64)  # the range doubles from 0.5 to 8
    assert c.radius == 8.0
    expected, _ = np.histogram(np.concatenate([small, large]).astype(np.float32), bins=128, range=(-8, 8))
    np.testing.assert_array_equal(c.hist, expected)


@pytest.mark.parametrize("p", [99.0, 99.9])
def test_percentile_matches_numpy_within_a_bin(p: float) -> None:
    x = np.random.default_rng(2).standard_normal(200_000).astype(np.float32)
    c = _collect(x)
    lo, hi = c.range("percentile", percentile=p)
    assert abs(lo - np.percentile(x, 100 - p)) <= 2 * c.step
    assert abs(hi - np.percentile(x, p)) <= 2 * c.step
    _, t = c.range("percentile", percentile=p, symmetric=True)
    assert abs(t - np.percentile(np.abs(x), p)) <= 2 * c.step


def test_entropy_and_mse_clip_outliers() -> None:
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal(100_000), [60.0, -55.0]]).astype(np.float32)
    c = _collect(x)
    _, hi_entropy = c.range("entropy")
    _, hi_mse = c.range("mse")
    assert 2.0 < hi_entropy < 20.0
    assert 2.0 < hi_mse < 60.0  # the squared error of two outliers outweighs a finer step only near them


def test_mse_choice_minimises_the_error_on_the_data() -> None:
    x = np.random.default_rng(4).laplace(size=50_000).astype(np.float32)
    c = _collect(x)

    def error(lo: float, hi: float) -> float:
        scale, zp = quant_params(lo, hi, symmetric=False)
        q = np.clip(np.rint(x / scale) + zp, 0, 255)
        return float(np.mean(((q - zp) * scale - x) ** 2))

    assert error(*c.range("mse")) < error(*c.range("minmax"))


def test_every_method_contains_zero_and_rejects_unknown() -> None:
    c = _collect(np.linspace(1.0, 3.0, 1000))
    for method in METHODS:
        lo, hi = c.range(method)
        assert lo == 0.0 and hi > 1.0
    with pytest.raises(UsageError):
        c.range("bogus")
    assert RangeCollector().range("minmax") == (0.0, 0.0)


def test_quant_params_numpy_reference() -> None:
    scale, zp = quant_params(-1.0, 3.0, symmetric=False)
    assert scale == pytest.approx(4.0 / 255) and zp == round(1.0 / (4.0 / 255))
    scale, zp = quant_params(-1.0, 3.0, symmetric=True)
    assert scale == pytest.approx(3.0 / 127) and zp == 0
    assert quant_params(0.0, 0.0, symmetric=False) == (1.0, 0)


def test_channel_absmax_ignores_masks() -> None:
    stat = ChannelAbsMax()
    stat.update(np.array([[[1.0, -2.0], [-np.inf, 0.5]]], dtype=np.float32))
    stat.update(np.array([[3.0, -3.4e38]], dtype=np.float32))
    np.testing.assert_array_equal(stat.value, [3.0, 2.0])
