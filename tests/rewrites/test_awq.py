"""AWQ-style scaling (``_awq``): scale normalisation, and a search that never loses to RTN and
wins when a few input channels carry large activations."""

from __future__ import annotations

import numpy as np

from graphopt.rewrites._awq import awq_scales, awq_search
from graphopt.rewrites._blockwise import dequantize_blockwise, quantize_blockwise
from graphopt.rewrites._layerstats import layer_error


def _fake_quantize(w: np.ndarray) -> np.ndarray:
    return dequantize_blockwise(*quantize_blockwise(w, 3, 32, True), 32)


def test_scales() -> None:
    a = np.array([0.5, 1.0, 8.0, 0.0])
    np.testing.assert_array_equal(awq_scales(a, 0.0), np.ones(4))
    s = awq_scales(a, 0.5)
    assert s[3] == 1.0  # never active: left alone
    np.testing.assert_allclose(s[:3].max() * s[:3].min(), 1.0)  # geometric mid-range 1
    np.testing.assert_allclose(s[2] / s[1], np.sqrt(8.0))


def test_search_helps_with_salient_channels() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1024, 64))
    x[:, :4] *= 30.0  # a few salient input channels, as in transformer activations
    h = x.T @ x
    w = rng.standard_normal((64, 32)).astype(np.float32)
    scales, alpha, error = awq_search(w, h, np.abs(x).mean(axis=0), _fake_quantize)
    rtn_error = layer_error(w, _fake_quantize(w), h)
    assert alpha > 0 and error < 0.7 * rtn_error
    np.testing.assert_allclose(error, layer_error(w, _fake_quantize(w * scales[:, None]) / scales[:, None], h))


def test_search_never_worse_than_rtn() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((256, 64))
    h = x.T @ x
    w = rng.standard_normal((64, 32)).astype(np.float32)
    _, _alpha, error = awq_search(w, h, np.abs(x).mean(axis=0), _fake_quantize)
    assert error <= layer_error(w, _fake_quantize(w), h) + 1e-9
