"""onnxruntime's fused com.microsoft operators match onnxruntime's own kernels."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.errors import UnsupportedError
from graphopt.executor import TorchExecutor
from tests.executor._parity import graph, max_abs_diff, rand


def _ms(body: str, inputs: str, outputs: str) -> str:
    return graph(body, inputs, outputs, ms=True)


def test_skip_layer_norm_with_all_outputs() -> None:
    text = _ms(
        "y, m, r, s = com.microsoft.SkipLayerNormalization <epsilon = 0.00001> (x, k, g, b, c)",
        "float[2, 3, 8] x, float[2, 3, 8] k, float[8] g, float[8] b, float[8] c",
        "float[2, 3, 8] y, float[2, 3, 1] m, float[2, 3, 1] r, float[2, 3, 8] s",
    )
    feeds = {"x": rand(2, 3, 8), "k": rand(2, 3, 8, seed=1), "g": rand(8, seed=2), "b": rand(8, seed=3),
             "c": rand(8, seed=4)}
    # onnxruntime returns mean and inverse std only in training builds; compare the normalized and summed outputs.
    text_main = _ms("y, , , s = com.microsoft.SkipLayerNormalization <epsilon = 0.00001> (x, k, g, b, c)",
                    "float[2, 3, 8] x, float[2, 3, 8] k, float[8] g, float[8] b, float[8] c",
                    "float[2, 3, 8] y, float[2, 3, 8] s")
    assert max_abs_diff(text_main, feeds) <= 1e-5
    assert TorchExecutor(__import__("onnx_ir").from_onnx_text(text)).run(feeds)["m"].shape == (2, 3, 1)


def test_rms_norms() -> None:
    text = _ms(
        "y = com.microsoft.SkipSimplifiedLayerNormalization <epsilon = 0.00001> (x, k, g)\n"
        "z = SimplifiedLayerNormalization <epsilon = 0.00001> (x, g)",
        "float[2, 3, 8] x, float[2, 3, 8] k, float[8] g", "float[2, 3, 8] y, float[2, 3, 8] z",
    )
    assert max_abs_diff(text, {"x": rand(2, 3, 8), "k": rand(2, 3, 8, seed=1), "g": rand(8, seed=2)}) <= 1e-5


@pytest.mark.parametrize(
    "body",
    ["y = com.microsoft.BiasGelu(x, b)", "y = com.microsoft.FastGelu(x, b)", "y = com.microsoft.Gelu(x)",
     "y = com.microsoft.QuickGelu <alpha = 1.5> (x)"],
)
def test_gelus(body: str) -> None:
    text = _ms(body, "float[2, 3, 8] x" + (", float[8] b" if ", b)" in body else ""), "float[2, 3, 8] y")
    feeds = {"x": rand(2, 3, 8, low=-4, high=4)}
    if ", b)" in body:
        feeds["b"] = rand(8, seed=1)
    assert max_abs_diff(text, feeds) <= 1e-5


def test_fused_matmul() -> None:
    text = _ms("y = com.microsoft.FusedMatMul <alpha = 0.5, transB = 1> (a, b)", "float[2, 3, 4] a, float[2, 5, 4] b",
               "float[2, 3, 5] y")
    assert max_abs_diff(text, {"a": rand(2, 3, 4), "b": rand(2, 5, 4, seed=1)}) <= 1e-5


@pytest.mark.parametrize("variant", ["plain", "mask", "bias", "causal"])
def test_attention(variant: str) -> None:
    args = {"plain": "x, w, b", "mask": "x, w, b, m", "bias": "x, w, b, , , ab", "causal": "x, w, b"}[variant]
    attrs = "num_heads = 2" + (", unidirectional = 1" if variant == "causal" else "")
    text = _ms(f"y = com.microsoft.Attention <{attrs}> ({args})",
               "float[2, 5, 8] x, float[8, 24] w, float[24] b, int32[2, 5] m, float[2, 2, 5, 5] ab", "float[2, 5, 8] y")
    feeds = {"x": rand(2, 5, 8), "w": rand(8, 24, seed=1), "b": rand(24, seed=2),
             "m": np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int32), "ab": rand(2, 2, 5, 5, seed=3)}
    assert max_abs_diff(text, feeds) <= 1e-5


def test_multi_head_attention() -> None:
    text = _ms(
        "y = com.microsoft.MultiHeadAttention <num_heads = 2> (q, k, v, b, m)",
        "float[2, 4, 8] q, float[2, 6, 8] k, float[2, 6, 8] v, float[24] b, int32[2, 6] m", "float[2, 4, 8] y",
    )
    feeds = {"q": rand(2, 4, 8), "k": rand(2, 6, 8, seed=1), "v": rand(2, 6, 8, seed=2), "b": rand(24, seed=3),
             "m": np.array([[1, 1, 1, 1, 0, 0], [1] * 6], np.int32)}
    assert max_abs_diff(text, feeds) <= 1e-5


def test_attention_with_past_state_is_refused_by_name() -> None:
    import onnx_ir as ir

    text = _ms("y = com.microsoft.Attention <num_heads = 2> (x, w, b, , p)",
               "float[2, 5, 8] x, float[8, 24] w, float[24] b, float[2, 2, 2, 3, 4] p", "float[2, 5, 8] y")
    with pytest.raises(UnsupportedError, match=r"Attention .*past"):
        TorchExecutor(ir.from_onnx_text(text)).run(
            {"x": rand(2, 5, 8), "w": rand(8, 24), "b": rand(24), "p": rand(2, 2, 2, 3, 4)}
        )


@pytest.mark.parametrize("symmetric", [True, False])
def test_matmul_nbits_from_the_lowering_pass(symmetric: bool) -> None:
    import graphopt.rewrites  # noqa: F401
    from graphopt.passes import create_pass
    from tests.executor._parity import with_initializers

    text = graph("y = MatMul(x, w)", "float[2, 3, 80] x, float[80, 64] w", "float[2, 3, 64] y")
    model = with_initializers(text, {"w": rand(80, 64, seed=1)})
    create_pass("quantize-weights", {"bits": 4, "block_size": 32, "symmetric": symmetric, "min_elements": 1})(model)
    create_pass("lower-matmulnbits")(model)
    assert [n.op_type for n in model.graph] == ["MatMulNBits"]
    assert max_abs_diff(model, {"x": rand(2, 3, 80)}) <= 1e-5
