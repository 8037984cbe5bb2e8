"""Live-computation features: what depends on the input and reaches the output, and its paths."""

from __future__ import annotations

import onnx_ir as ir
import pytest

from graphopt.predict import LIVE_FEATURE_NAMES, live_features

_CELL = """
<ir_version: 8, opset_import: ["" : 18]>
cell (float[1,4,8,8] x) => (float[1,4,8,8] y) <float[4,4,3,3] w3 = {W3}, float[4,4,1,1] w1 = {W1}, float zero = {0.0}> {
    a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w3)
    b = Conv <kernel_shape = [1, 1]> (a, w1)
    dead = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w3)
    z = Mul (b, zero)
    killed = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (z, w3)
    s = Add (x, b)
    y = Add (s, killed)
}
"""


def _model(text: str) -> ir.Model:
    values = {"W3": ", ".join(["0.1"] * 144), "W1": ", ".join(["0.1"] * 16)}
    for name, numbers in values.items():
        text = text.replace("{" + name + "}", "{" + numbers + "}")
    return ir.from_onnx_text(text)


def test_dead_branches_and_zeroed_values_are_not_live():
    f = live_features(_model(_CELL))
    assert tuple(f) == LIVE_FEATURE_NAMES
    # live: a, b, s, y; dead: the unused conv; x*0 and the conv after it depend on no input
    assert f["live_nodes"] == 4 and f["live_fraction"] == pytest.approx(4 / 7)
    assert f["live_conv"] == 2 and f["live_conv_spatial"] == 1 and f["live_add"] == 2
    assert f["live_parameters"] == 4 * 4 * 9 + 4 * 4


def test_path_statistics_over_the_two_live_paths():
    # x -> s -> y (no conv) and x -> a -> b -> s -> y (two convs, one spatial)
    f = live_features(_model(_CELL))
    assert f["path_log_count"] == pytest.approx(2.0 ** 0 * 0.6931471805599453)
    assert (f["path_convs_max"], f["path_convs_min"], f["path_convs_mean"]) == (2, 0, 1)
    assert (f["path_spatial_max"], f["path_spatial_min"]) == (1, 0)
    assert (f["path_ops_max"], f["path_ops_min"]) == (4, 2)
    assert (f["path_field_max"], f["path_field_min"]) == (2, 0)


def test_a_graph_whose_output_ignores_its_input_has_no_live_nodes():
    text = _CELL.replace("y = Add (s, killed)", "y = Add (killed, killed)")
    f = live_features(_model(text))
    assert f["live_nodes"] == 0 and f["path_log_count"] == 0 and f["path_convs_max"] == 0


def test_nb201_none_edges_cut_paths():
    from graphopt.nas.spaces import get_space

    space = get_space("nb201")
    convs = live_features(space.build((2, 2, 2, 2, 2, 2)))
    skips = live_features(space.build((0, 0, 0, 0, 0, 0)))
    only_conv_chain = live_features(space.build((1, 1, 2, 1, 1, 1)))  # one 3x3 conv from input to output
    assert convs["path_convs_max"] > only_conv_chain["path_convs_max"] > skips["path_convs_max"]
    # stem + 15 cells, plus two 3x3 convs in each of the two reduction blocks unless through their 1x1 shortcut
    assert (only_conv_chain["path_spatial_min"], only_conv_chain["path_spatial_max"]) == (16, 20)
    assert live_features(space.build((1, 1, 1, 1, 1, 2)))["live_nodes"] == 0  # conv of a zero node


def test_parameters_behind_dequantization_are_counted():
    text = """
    <ir_version: 8, opset_import: ["" : 18]>
    q (float[1,4] x) => (float[1,3] y) <int8[4,3] wq = {Q}, float scale = {0.5}> {
        w = DequantizeLinear (wq, scale)
        y = MatMul (x, w)
    }
    """.replace("{Q}", "{" + ", ".join(["1"] * 12) + "}")
    f = live_features(ir.from_onnx_text(text))
    assert f["live_nodes"] == 1 and f["live_linear"] == 1  # the dequantization is constant work
    assert f["live_parameters"] == 12 + 1
