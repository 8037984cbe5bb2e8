"""The numpy grids of ``_blockwise``: clip search, blocks along either axis, row-by-row rounding."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.errors import UsageError
from graphopt.rewrites._blockwise import (
    dequantize_along,
    dequantize_blockwise,
    fit_grid,
    quantize_along,
    quantize_blockwise,
    round_to_grid,
)
from graphopt.runtime import make_session


def _heavy_tailed(k: int, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_t(3, size=(k, n)).astype(np.float32)


@pytest.mark.parametrize("symmetric", [True, False])
def test_clip_search_never_worse_per_block(symmetric: bool) -> None:
    w = _heavy_tailed(128, 16)
    plain = dequantize_blockwise(*quantize_blockwise(w, 4, 32, symmetric), 32)
    clipped = dequantize_blockwise(*quantize_blockwise(w, 4, 32, symmetric, clip=(1.0, 0.9, 0.8, 0.7)), 32)
    per_block = lambda d: ((d - w) ** 2).reshape(4, 32, 16).sum(axis=1)  # noqa: E731
    assert np.all(per_block(clipped) <= per_block(plain) + 1e-9)
    # Heavy tails: clipping pays, most on the symmetric grid (whose range is set by the larger side).
    assert per_block(clipped).sum() < (0.95 if symmetric else 1.0) * per_block(plain).sum()


def test_row_weights_steer_the_clip_choice() -> None:
    w = _heavy_tailed(64, 8, seed=1)
    weight = np.ones(64)
    weight[np.abs(w).argmax(axis=0)] = 1e6  # the outlier rows matter most: they must not be clipped
    q, scale, zp = quantize_blockwise(w, 4, 64, True, clip=(1.0, 0.7), row_weight=weight)
    np.testing.assert_allclose(scale[0], np.abs(w).max(axis=0) / 7, rtol=1e-6)
    assert zp is None and q.dtype == np.int8


def test_blocks_along_n_match_dequantize_linear_axis_1() -> None:
    w = _heavy_tailed(24, 96, seed=2)
    q, scale, zp = quantize_along(w, 4, 32, False, axis=1)
    assert q.shape == (24, 96) and scale.shape == (24, 3) and zp is not None and zp.shape == (24, 3)
    np.testing.assert_array_equal(q, quantize_blockwise(w.T, 4, 32, False)[0].T)
    # onnxruntime's blocked DequantizeLinear along axis 1 (INT4 codes live in initializers).
    from graphopt.rewrites.quantize_weights import QuantizedWeight, emit_weight

    graph_model = ir.from_onnx_text(
        '<ir_version: 10, opset_import: ["" : 21]>\n'
        "g (float[2, 24] x) => (float[2, 96] y) <float[24, 96] w = {" + ", ".join(["0"] * (24 * 96)) + "}> {\n"
        "  y = MatMul(x, w)\n}"
    )
    weight = graph_model.graph.initializers["w"]
    matmul = graph_model.graph.node(0)
    value = emit_weight(graph_model.graph, weight, matmul, QuantizedWeight(q, scale, zp, 4, 1), 32, "test")
    matmul.replace_input_with(1, value)
    x = np.random.default_rng(3).standard_normal((2, 24)).astype(np.float32)
    out = make_session(graph_model, optimization="basic").run(None, {"x": x})[0]
    expected = x @ dequantize_along(q, scale, zp, 32, axis=1)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_fit_grid_and_round_to_grid_reproduce_quantize_blockwise() -> None:
    w = _heavy_tailed(32, 12, seed=4)
    for symmetric in (True, False):
        scale, zp = fit_grid(w, 3, symmetric)
        codes, deq = round_to_grid(w, scale, zp, 3, symmetric)
        q, s_ref, z_ref = quantize_blockwise(w, 3, 32, symmetric)
        np.testing.assert_array_equal(codes, q.astype(np.float64))
        np.testing.assert_allclose(deq, dequantize_blockwise(q, s_ref, z_ref, 32), rtol=1e-6, atol=1e-7)


def test_bad_arguments() -> None:
    with pytest.raises(UsageError):
        quantize_blockwise(np.ones((4, 4)), 4, 4, True, clip=(1.2,))
    with pytest.raises(UsageError):
        quantize_along(np.ones((4, 4)), 4, 4, True, axis=2)
