"""Shape and data-movement operators match onnxruntime, across the opsets that changed them."""

from __future__ import annotations

import numpy as np
import pytest

from tests.executor._parity import graph, max_abs_diff, rand

I64 = np.int64


def _ints(*values: int) -> np.ndarray:
    return np.array(values, I64)


def test_reshape_transpose_flatten() -> None:
    text = graph(
        "r = Reshape(x, s)\nt = Transpose <perm = [2, 0, 1]> (r)\nu = Transpose(x)\nf = Flatten <axis = 2> (x)",
        "float[2, 3, 4] x, int64[3] s", "float[4, 2, 6] t, float[4, 3, 2] u, float[6, 4] f",
    )
    assert max_abs_diff(text, {"x": rand(2, 3, 4), "s": _ints(0, -1, 4)}) == 0


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_unsqueeze(opset: int) -> None:
    if opset < 13:
        body = "s = Squeeze <axes = [1]> (x)\nu = Unsqueeze <axes = [0, -1]> (s)"
        inputs = "float[2, 1, 3] x"
        feeds = {"x": rand(2, 1, 3)}
    else:
        body = "s = Squeeze(x, a)\nu = Unsqueeze(s, b)"
        inputs = "float[2, 1, 3] x, int64[1] a, int64[2] b"
        feeds = {"x": rand(2, 1, 3), "a": _ints(1), "b": _ints(0, -1)}
    assert max_abs_diff(graph(body, inputs, "float[1, 2, 3, 1] u", opset=opset), feeds) == 0


@pytest.mark.parametrize(
    ("body", "opset"),
    [
        ("a, b, c = Split <axis = 1, split = [1, 2, 3]> (x)", 11),
        ("a, b, c = Split <axis = 1> (x, s)", 13),
        ("a, b, c = Split <axis = 1, num_outputs = 3> (x)", 18),
    ],
)
def test_split_and_concat(body: str, opset: int) -> None:
    inputs = "float[2, 6] x" + (", int64[3] s" if "s)" in body else "")
    feeds = {"x": rand(2, 6)}
    if "s)" in body:
        feeds["s"] = _ints(1, 2, 3)
    text = graph(body + "\ny = Concat <axis = 1> (c, a, b)", inputs, "float[2, 6] y", opset=opset)
    assert max_abs_diff(text, feeds) == 0


@pytest.mark.parametrize(
    ("starts", "ends", "axes", "steps"),
    [
        ((1,), (4,), (1,), (1,)),
        ((-1,), (-9999,), (1,), (-1,)),
        ((4, 0), (0, 3), (1, 0), (-2, 2)),
        ((0,), (9223372036854775807,), (-1,), (3,)),
        ((-9223372036854775807,), (-2,), (0,), (1,)),
    ],
)
def test_slice(starts: tuple[int, ...], ends: tuple[int, ...], axes: tuple[int, ...], steps: tuple[int, ...]) -> None:
    n = len(starts)
    text = graph(
        "y = Slice(x, s, e, a, t)",
        f"float[4, 6] x, int64[{n}] s, int64[{n}] e, int64[{n}] a, int64[{n}] t", "float[?, ?] y",
    )
    feeds = {"x": rand(4, 6), "s": _ints(*starts), "e": _ints(*ends), "a": _ints(*axes), "t": _ints(*steps)}
    assert max_abs_diff(text, feeds) == 0


def test_slice_opset9_attributes() -> None:
    text = graph("y = Slice <starts = [1, 0], ends = [3, -1], axes = [0, 1]> (x)", "float[4, 6] x", "float[2, 5] y", 9)
    assert max_abs_diff(text, {"x": rand(4, 6)}) == 0


def test_gathers() -> None:
    text = graph(
        "a = Gather <axis = 1> (x, i)\nb = Gather(x, k)\nc = GatherElements <axis = 1> (x, j)\n"
        "d = GatherND(x, n)\ne = GatherND <batch_dims = 1> (x, m)",
        "float[3, 4] x, int64[2, 2] i, int64 k, int64[3, 2] j, int64[2, 2] n, int64[3, 1] m",
        "float[3, 2, 2] a, float[4] b, float[3, 2] c, float[2] d, float[3] e",
    )
    feeds = {
        "x": rand(3, 4), "i": _ints(0, -1, 2, 3).reshape(2, 2), "k": np.array(-1, I64),
        "j": _ints(0, 3, -1, 1, 2, 2).reshape(3, 2), "n": _ints(0, 1, 2, -1).reshape(2, 2),
        "m": _ints(3, 0, 1).reshape(3, 1),
    }
    assert max_abs_diff(text, feeds) == 0


def test_expand_tile_where_cast_shape() -> None:
    text = graph(
        "e = Expand(x, s)\nt = Tile(x, r)\nc = Cast <to = 7> (e)\nh = Shape <start = 1> (e)\n"
        "z = Size(t)\nl = CastLike(c, x)",
        "float[3, 1] x, int64[3] s, int64[2] r",
        "float[2, 3, 4] e, float[6, 3] t, int64[2] h, int64 z, float[2, 3, 4] l",
    )
    feeds = {"x": rand(3, 1) * 3, "s": _ints(2, 1, 4), "r": _ints(2, 3)}
    assert max_abs_diff(text, feeds) == 0


def test_constants_and_ranges() -> None:
    text = graph(
        "s = Shape(x)\nz = ConstantOfShape <value = int64[1] {7}> (s)\nf = ConstantOfShape(s)\n"
        "k = Constant <value_floats = [1.5, 2.5]> ()\nr = Range(a, b, d)\ny = Add(f, k)",
        "float[3, 2] x, int64 a, int64 b, int64 d", "int64[3, 2] z, float[3, 2] y, int64[?] r",
    )
    feeds = {"x": rand(3, 2), "a": np.array(10, I64), "b": np.array(-2, I64), "d": np.array(-3, I64)}
    assert max_abs_diff(text, feeds) == 0


def test_float_range_trilu() -> None:
    text = graph(
        "r = Range(a, b, d)\nu = Trilu(x, k)\nl = Trilu <upper = 0> (x)",
        "float a, float b, float d, float[4, 5] x, int64 k", "float[?] r, float[4, 5] u, float[4, 5] l",
    )
    feeds = {
        "a": np.array(0.5, np.float32), "b": np.array(3.0, np.float32), "d": np.array(0.75, np.float32),
        "x": rand(4, 5), "k": np.array(-1, I64),
    }
    assert max_abs_diff(text, feeds) == 0


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad(mode: str) -> None:
    inputs = "float[2, 3, 4] x, int64[6] p, float v"
    text = graph(f'y = Pad <mode = "{mode}"> (x, p, v)', inputs, "float[?, ?, ?] y", 19)
    feeds = {"x": rand(2, 3, 4), "p": _ints(0, 1, 2, 1, 0, 1), "v": np.array(0.5, np.float32)}
    assert max_abs_diff(text, feeds) == 0


def test_pad_axes_and_opset2() -> None:
    text = graph("y = Pad(x, p, , a)", "float[2, 3, 4] x, int64[2] p, int64[1] a", "float[2, 3, 6] y")
    assert max_abs_diff(text, {"x": rand(2, 3, 4), "p": _ints(1, 1), "a": _ints(-1)}) == 0
    old = graph("y = Pad <pads = [0, 1, 0, 2], value = 1.5> (x)", "float[2, 3] x", "float[2, 6] y", opset=2)
    assert max_abs_diff(old, {"x": rand(2, 3)}) == 0


def test_einsum() -> None:
    text = graph('y = Einsum <equation = "bij,bjk->bik"> (a, b)', "float[2, 3, 4] a, float[2, 4, 5] b",
                 "float[2, 3, 5] y")
    assert max_abs_diff(text, {"a": rand(2, 3, 4), "b": rand(2, 4, 5, seed=1)}) <= 1e-5


def test_dequantize_linear_per_axis_and_blocked() -> None:
    text = graph(
        "a = DequantizeLinear <axis = 0> (q, s, z)\nb = DequantizeLinear <axis = 0, block_size = 2> (q, bs, bz)\n"
        "c = DequantizeLinear(q, t)",
        "uint8[4, 3] q, float[4] s, uint8[4] z, float[2, 3] bs, uint8[2, 3] bz, float t",
        "float[4, 3] a, float[4, 3] b, float[4, 3] c", opset=21,
    )
    rng = np.random.default_rng(0)
    feeds = {
        "q": rng.integers(0, 255, (4, 3)).astype(np.uint8), "s": rand(4, low=0.01, high=0.1),
        "z": rng.integers(0, 255, 4).astype(np.uint8), "bs": rand(2, 3, low=0.01, high=0.1),
        "bz": rng.integers(0, 255, (2, 3)).astype(np.uint8), "t": np.array(0.05, np.float32),
    }
    assert max_abs_diff(text, feeds) <= 1e-6


def test_dropout_is_identity_in_inference() -> None:
    text = graph("y, m = Dropout(x)", "float[3, 4] x", "float[3, 4] y, bool[3, 4] m")
    assert max_abs_diff(text, {"x": rand(3, 4)}) == 0
