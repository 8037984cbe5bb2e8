"""NF4 (``_codebooks``): the QLoRA levels and nearest-level rounding."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.errors import UsageError
from graphopt.rewrites._codebooks import dequantize_nf4, nf4_levels, quantize_nf4

# The NF4 table as published with QLoRA (Dettmers et al., 2023, appendix E / bitsandbytes).
PUBLISHED_NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]


def test_levels_match_qlora() -> None:
    levels = nf4_levels()
    assert levels.shape == (16,) and levels.dtype == np.float32
    np.testing.assert_allclose(levels, PUBLISHED_NF4, atol=1e-6)


def test_nearest_level_and_absmax_scale() -> None:
    w = np.random.default_rng(0).standard_normal((64, 10)).astype(np.float32)
    codes, scale = quantize_nf4(w, 32)
    assert codes.shape == (64, 10) and codes.max() <= 15 and scale.shape == (2, 10)
    np.testing.assert_allclose(scale, np.abs(w.reshape(2, 32, 10)).max(axis=1))
    normalised = w / np.repeat(scale, 32, axis=0)
    brute = np.abs(normalised[..., None] - nf4_levels()).argmin(axis=-1)
    np.testing.assert_array_equal(codes, brute)
    deq = dequantize_nf4(codes, scale, 32)
    assert np.all(np.abs(deq) <= np.repeat(scale, 32, axis=0) + 1e-7)
    assert np.abs(deq).max(axis=0).tolist() == pytest.approx(np.abs(w).max(axis=0).tolist())  # absmax exact


def test_k_must_be_whole_blocks() -> None:
    with pytest.raises(UsageError, match="multiple"):
        quantize_nf4(np.ones((40, 4), np.float32), 32)
