"""MatMul/Gemm, convolutions, pooling, normalizations and softmax match onnxruntime."""

from __future__ import annotations

import pytest

from tests.executor._parity import graph, max_abs_diff, rand


def test_matmul_batched_and_gemm() -> None:
    text = graph(
        "m = MatMul(a, b)\ng = Gemm <transA = 1, transB = 1, alpha = 0.5, beta = 2.0> (p, q, c)\nh = Gemm(p2, q2)",
        "float[2, 3, 4] a, float[4, 5] b, float[4, 3] p, float[5, 4] q, float[5] c, float[3, 4] p2, float[4, 5] q2",
        "float[2, 3, 5] m, float[3, 5] g, float[3, 5] h",
    )
    feeds = {"a": rand(2, 3, 4), "b": rand(4, 5, seed=1), "p": rand(4, 3, seed=2), "q": rand(5, 4, seed=3),
             "c": rand(5, seed=4), "p2": rand(3, 4, seed=5), "q2": rand(4, 5, seed=6)}
    assert max_abs_diff(text, feeds) <= 1e-5


@pytest.mark.parametrize(
    "attrs",
    [
        "pads = [1, 1, 1, 1]",
        "strides = [2, 2], pads = [0, 1, 2, 0]",
        'auto_pad = "SAME_UPPER", strides = [2, 2]',
        'auto_pad = "SAME_LOWER", strides = [1, 2]',
        "group = 2, dilations = [2, 2]",
        'auto_pad = "VALID"',
    ],
)
def test_conv2d(attrs: str) -> None:
    text = graph(f"y = Conv <{attrs}> (x, w, b)", "float[2, 4, 9, 8] x, float[6, ?, 3, 3] w, float[6] b",
                 "float[2, 6, ?, ?] y")
    channels = 2 if "group" in attrs else 4
    feeds = {"x": rand(2, 4, 9, 8), "w": rand(6, channels, 3, 3, seed=1), "b": rand(6, seed=2)}
    assert max_abs_diff(text, feeds) <= 1e-4


def test_conv1d_without_bias() -> None:
    text = graph("y = Conv <pads = [2, 0]> (x, w)", "float[2, 3, 10] x, float[4, 3, 3] w", "float[2, 4, ?] y")
    assert max_abs_diff(text, {"x": rand(2, 3, 10), "w": rand(4, 3, 3, seed=1)}) <= 1e-5


@pytest.mark.parametrize("attrs", ["strides = [2, 2], pads = [1, 0, 0, 1], output_padding = [1, 1]", "group = 2"])
def test_conv_transpose(attrs: str) -> None:
    text = graph(f"y = ConvTranspose <{attrs}> (x, w, b)", "float[1, 4, 5, 6] x, float[4, 3, 3, 3] w, float[?] b",
                 "float[1, ?, ?, ?] y")
    out = 6 if "group" in attrs else 3
    assert max_abs_diff(text, {"x": rand(1, 4, 5, 6), "w": rand(4, 3, 3, 3, seed=1), "b": rand(out, seed=2)}) <= 1e-4


@pytest.mark.parametrize(
    "body",
    [
        "y = MaxPool <kernel_shape = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1]> (x)",
        "y = MaxPool <kernel_shape = [3, 3], strides = [2, 2], ceil_mode = 1> (x)",
        "y = MaxPool <kernel_shape = [2, 2], pads = [0, 0, 1, 1]> (x)",
        'y = MaxPool <kernel_shape = [3, 3], auto_pad = "SAME_UPPER", strides = [2, 2]> (x)',
        "y = AveragePool <kernel_shape = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1]> (x)",
        "y = AveragePool <kernel_shape = [3, 3], pads = [1, 1, 1, 1], count_include_pad = 1> (x)",
        "y = AveragePool <kernel_shape = [2, 3], pads = [0, 1, 1, 0]> (x)",
        "y = AveragePool <kernel_shape = [2, 3], pads = [0, 1, 1, 0], count_include_pad = 1> (x)",
        "y = GlobalAveragePool(x)",
        "y = GlobalMaxPool(x)",
        "y = LRN <size = 3, alpha = 0.001, beta = 0.75, bias = 2.0> (x)",
    ],
)
def test_pooling(body: str) -> None:
    text = graph(body, "float[2, 4, 9, 8] x", "float[2, 4, ?, ?] y")
    assert max_abs_diff(text, {"x": rand(2, 4, 9, 8)}) <= 1e-5


def test_normalizations() -> None:
    text = graph(
        "b = BatchNormalization <epsilon = 0.001> (x, s, o, m, v)\ni = InstanceNormalization(x, s, o)\n"
        "l = LayerNormalization <axis = 1> (x, ls, lb)",
        "float[2, 4, 3, 5] x, float[4] s, float[4] o, float[4] m, float[4] v, float[4, 3, 5] ls, float[3, 5] lb",
        "float[2, 4, 3, 5] b, float[2, 4, 3, 5] i, float[2, 4, 3, 5] l",
    )
    feeds = {"x": rand(2, 4, 3, 5), "s": rand(4, seed=1), "o": rand(4, seed=2), "m": rand(4, seed=3),
             "v": rand(4, seed=4, low=0.5), "ls": rand(4, 3, 5, seed=5), "lb": rand(3, 5, seed=6)}
    assert max_abs_diff(text, feeds) <= 1e-5


def test_layer_norm_statistics_outputs() -> None:
    text = graph("y, m, r = LayerNormalization <epsilon = 0.01> (x, s)", "float[2, 3, 8] x, float[8] s",
                 "float[2, 3, 8] y, float[2, 3, 1] m, float[2, 3, 1] r")
    assert max_abs_diff(text, {"x": rand(2, 3, 8), "s": rand(8, seed=1)}) <= 1e-5


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_opset_semantics(op: str, opset: int) -> None:
    # Before opset 13 axis=1 means "flatten to [d0, d1*d2]" — a different result from opset 13.
    text = graph(f"y = {op} <axis = 1> (x)", "float[2, 3, 4] x", "float[2, 3, 4] y", opset=opset)
    assert max_abs_diff(text, {"x": rand(2, 3, 4)}) <= 1e-6
