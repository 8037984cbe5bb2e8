"""BAQ's closed-form allocation and its rounding under the budget (``_bitalloc``)."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.errors import UsageError
from graphopt.rewrites._bitalloc import allocate_bits, closed_form_bits


def test_closed_form_meets_the_average_exactly() -> None:
    rng = np.random.default_rng(0)
    s = np.exp(rng.standard_normal(12) * 2)
    n = rng.integers(1_000, 100_000, 12)
    b = closed_form_bits(s, n, 3.5)
    assert np.sum(n * b) == pytest.approx(3.5 * n.sum())
    np.testing.assert_allclose(b[1] - b[0], 0.5 * np.log2(s[1] / s[0]))  # half a bit per factor 2 of s
    np.testing.assert_allclose(closed_form_bits([2.0, 2.0], [5, 7], 4.0), [4.0, 4.0])


@pytest.mark.parametrize("average", [2.0, 2.5, 3.0, 3.3, 4.0, 5.0, 8.0])
def test_rounded_allocation_meets_the_budget(average: float) -> None:
    rng = np.random.default_rng(int(average * 10))
    s = np.exp(rng.standard_normal(30) * 3)
    n = rng.integers(1_000, 50_000, 30)
    bits, _ = allocate_bits(s, n, average, (2, 3, 4, 8))
    assert set(bits) <= {2, 3, 4, 8}
    assert np.sum(n * np.array(bits)) <= average * n.sum() + 1e-6
    # No single step up still fits: the budget is used.
    spare = average * n.sum() - np.sum(n * np.array(bits))
    steps = {2: 1, 3: 1, 4: 4}
    assert all(b == 8 or n[i] * steps[b] > spare for i, b in enumerate(bits))


def test_more_sensitive_layers_get_no_fewer_bits() -> None:
    s = [1e-4, 1e-2, 1.0, 1e2]
    bits, continuous = allocate_bits(s, [1000] * 4, 4.0, (2, 3, 4, 8))
    assert bits == sorted(bits) and bits[0] < bits[-1]
    assert np.all(np.diff(continuous) > 0)


def test_budget_below_the_narrowest_width() -> None:
    with pytest.raises(UsageError, match="below the narrowest"):
        allocate_bits([1.0, 2.0], [10, 10], 1.5, (2, 4))


def test_rounding_trades_bits_between_layers() -> None:
    """Flooring [0.7, 7.3, 4.0] and filling gives [4, 4, 4]; the Lagrangian rounding finds [2, 8, 2],
    whose modelled distortion is six times smaller."""
    bits, continuous = allocate_bits([1e-4, 1.0, 1e-2], [4096] * 3, 4.0, (2, 3, 4, 8))
    assert bits == [2, 8, 2]
    np.testing.assert_allclose(continuous, 4.0 + 0.5 * np.log2(np.array([1e-4, 1.0, 1e-2]) / 1e-2))
