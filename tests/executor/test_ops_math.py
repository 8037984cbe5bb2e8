"""Elementwise, activation, comparison and reduction operators match onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from tests.executor._parity import graph, max_abs_diff, rand

UNARY = ["Abs", "Neg", "Exp", "Tanh", "Sigmoid", "Relu", "Erf", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos",
         "Softsign", "Softplus", "HardSwish", "Mish", "Identity", "Atan"]


@pytest.mark.parametrize("op", UNARY)
def test_unary(op: str) -> None:
    text = graph(f"y = {op}(x)", "float[2, 3, 4] x", "float[2, 3, 4] y")
    assert max_abs_diff(text, {"x": rand(2, 3, 4)}) <= 1e-5


@pytest.mark.parametrize("op", ["Sqrt", "Log", "Reciprocal"])
def test_unary_on_positive_values(op: str) -> None:
    text = graph(f"y = {op}(x)", "float[2, 3] x", "float[2, 3] y")
    assert max_abs_diff(text, {"x": rand(2, 3, low=0.1, high=3.0)}) <= 1e-5


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean"])
def test_binary_broadcast(op: str) -> None:
    text = graph(f"y = {op}(a, b)", "float[2, 3, 4] a, float[4] b", "float[2, 3, 4] y")
    assert max_abs_diff(text, {"a": rand(2, 3, 4), "b": rand(4, seed=1, low=0.5)}) <= 1e-6


def test_pow_and_integer_division() -> None:
    text = graph(
        "p = Pow(a, e)\nq = Div(i, j)\nm = Mod(i, j)\nf = Mod <fmod = 1> (i, j)",
        "float[5] a, float[5] e, int64[5] i, int64[5] j", "float[5] p, int64[5] q, int64[5] m, int64[5] f",
    )
    feeds = {
        "a": rand(5, low=0.5, high=2.0), "e": rand(5, seed=1),
        "i": np.array([7, -7, 7, -7, 0], np.int64), "j": np.array([2, 2, -3, -3, 5], np.int64),
    }
    assert max_abs_diff(text, feeds) <= 1e-5


@pytest.mark.parametrize("op", ["Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"])
def test_comparison_and_logic(op: str) -> None:
    text = graph(
        f"c = {op}(a, b)\nn = Not(c)\nz = And(c, n)\no = Or(z, c)\nw = Where(o, a, b)",
        "float[6] a, float[6] b", "bool[6] o, float[6] w",
    )
    a = np.array([1, 2, 3, 4, 5, 6], np.float32)
    assert max_abs_diff(text, {"a": a, "b": np.array([6, 2, 1, 4, 7, 0], np.float32)}) == 0


@pytest.mark.parametrize(
    ("body", "opset"),
    [
        ("y = Clip(x, lo, hi)", 18),
        ("y = Clip <min = -0.5, max = 0.7> (x)", 6),
        ("y = LeakyRelu <alpha = 0.2> (x)", 18),
        ("y = Elu <alpha = 0.7> (x)", 18),
        ("y = Selu(x)", 18),
        ("y = HardSigmoid <alpha = 0.3, beta = 0.4> (x)", 18),
        ("y = PRelu(x, hi)", 18),
        ("y = Gelu(x)", 20),
        ('y = Gelu <approximate = "tanh"> (x)', 20),
        ("y = Celu <alpha = 0.5> (x)", 18),
    ],
)
def test_parameterised_activations(body: str, opset: int) -> None:
    inputs = "float[2, 4] x" + (", float lo, float hi" if "lo" in body else ", float[4] hi" if "hi" in body else "")
    feeds = {"x": rand(2, 4)}
    if "lo" in body:
        feeds.update(lo=np.array(-0.5, np.float32), hi=np.array(0.7, np.float32))
    elif "hi" in body:
        feeds["hi"] = rand(4, seed=2, low=0.1, high=0.5)
    assert max_abs_diff(graph(body, inputs, "float[2, 4] y", opset=opset), feeds) <= 1e-5


@pytest.mark.parametrize(
    ("body", "opset", "out"),
    [
        ("y = ReduceSum(x, ax)", 13, "float[2, 1, 4] y"),
        ("y = ReduceSum <keepdims = 0> (x, ax)", 13, "float[2, 4] y"),
        ("y = ReduceMean <axes = [1, 2], keepdims = 0> (x)", 13, "float[2] y"),
        ("y = ReduceMean(x, ax)", 18, "float[2, 1, 4] y"),
        ("y = ReduceMax <keepdims = 0> (x)", 18, "float y"),
        ("y = ReduceMin(x, ax)", 18, "float[2, 1, 4] y"),
        ("y = ReduceProd(x, ax)", 18, "float[2, 1, 4] y"),
        ("y = ReduceL1(x, ax)", 18, "float[2, 1, 4] y"),
        ("y = ReduceL2(x, ax)", 18, "float[2, 1, 4] y"),
        ("y = ReduceSumSquare(x, ax)", 18, "float[2, 1, 4] y"),
        ("y = ReduceLogSumExp(x, ax)", 18, "float[2, 1, 4] y"),
        ("y = ReduceSum <noop_with_empty_axes = 1> (x)", 18, "float[2, 3, 4] y"),
    ],
)
def test_reductions(body: str, opset: int, out: str) -> None:
    ax = "int64[1] ax" if "ax)" in body else None
    inputs = "float[2, 3, 4] x" + (f", {ax}" if ax else "")
    feeds = {"x": rand(2, 3, 4, low=0.2)}
    if ax:
        feeds["ax"] = np.array([1], np.int64)
    assert max_abs_diff(graph(body, inputs, out, opset=opset), feeds) <= 1e-5


def test_argmax_argmin_and_cumsum() -> None:
    text = graph(
        "a = ArgMax <axis = 1> (x)\nb = ArgMin <axis = -1, keepdims = 0, select_last_index = 1> (x)\n"
        "c = CumSum <exclusive = 1, reverse = 1> (x, ax)\nd = CumSum(x, ax)",
        "float[2, 5] x, int64 ax", "int64[2, 1] a, int64[2] b, float[2, 5] c, float[2, 5] d",
    )
    x = np.array([[1, 3, 3, 0, 0], [2, 2, -1, 5, -1]], np.float32)
    assert max_abs_diff(text, {"x": x, "ax": np.array(1, np.int64)}) <= 1e-6


def test_isnan_isinf() -> None:
    text = graph("a = IsNaN(x)\nb = IsInf <detect_negative = 0> (x)", "float[4] x", "bool[4] a, bool[4] b")
    assert max_abs_diff(text, {"x": np.array([np.nan, np.inf, -np.inf, 1.0], np.float32)}) == 0
