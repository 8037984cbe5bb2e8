"""GPTQ (``_gptq``): the inverse-Hessian factor, equivalence with RTN when H = I, and lower
reconstruction error than RTN on correlated activations."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.errors import UsageError
from graphopt.rewrites._blockwise import dequantize_along, quantize_along
from graphopt.rewrites._gptq import gptq_quantize, inverse_hessian_factor
from graphopt.rewrites._layerstats import layer_error


def _correlated_inputs(rows: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((k, k)) / np.sqrt(k) + np.eye(k)
    scales = np.exp(rng.standard_normal(k))  # channels of very different magnitude, as after LayerNorm
    return (rng.standard_normal((rows, k)) @ mixing) * scales


def test_inverse_hessian_factor() -> None:
    x = _correlated_inputs(200, 48)
    h = x.T @ x
    u = inverse_hessian_factor(h, 0.01)
    damped = h + 0.01 * np.mean(np.diag(h)) * np.eye(48)
    assert np.allclose(u, np.triu(u))
    inverse = np.linalg.inv(damped)
    np.testing.assert_allclose(u.T @ u, inverse, rtol=1e-3, atol=1e-6 * np.abs(inverse).max())


def test_dead_channels_do_not_break_the_factor() -> None:
    x = _correlated_inputs(100, 16)
    x[:, 3] = 0.0
    u = inverse_hessian_factor(x.T @ x, 0.01)
    assert np.all(np.isfinite(u)) and np.all(np.diag(u) > 0)


@pytest.mark.parametrize(("axis", "symmetric"), [(0, True), (0, False), (1, True), (1, False)])
def test_identity_hessian_is_round_to_nearest(axis: int, symmetric: bool) -> None:
    """With H = I the error feedback vanishes (U is diagonal): GPTQ's codes are RTN's."""
    w = np.random.default_rng(1).standard_normal((64, 48)).astype(np.float32)
    codes, scale, zp = gptq_quantize(w, np.eye(64), 4, 16, symmetric, axis=axis)
    ref_codes, ref_scale, ref_zp = quantize_along(w, 4, 16, symmetric, axis)
    np.testing.assert_array_equal(codes, ref_codes)
    np.testing.assert_allclose(scale, ref_scale, rtol=1e-6)
    if symmetric:
        assert zp is None
    else:
        np.testing.assert_array_equal(zp, ref_zp)


@pytest.mark.parametrize(("axis", "bits"), [(0, 4), (0, 3), (1, 4)])
def test_lower_layer_error_than_rtn(axis: int, bits: int) -> None:
    x = _correlated_inputs(512, 96, seed=2)
    h = x.T @ x
    w = np.random.default_rng(3).standard_normal((96, 64)).astype(np.float32)
    rtn = dequantize_along(*quantize_along(w, bits, 32, False, axis), 32, axis)
    gptq = dequantize_along(*gptq_quantize(w, h, bits, 32, False, axis=axis), 32, axis)
    assert layer_error(w, gptq, h) < 0.8 * layer_error(w, rtn, h)


def test_shape_mismatch() -> None:
    with pytest.raises(UsageError, match="does not match"):
        gptq_quantize(np.ones((8, 4), np.float32), np.eye(6), 4, 16, True)
