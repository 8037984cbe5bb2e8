"""Fusions: Before/Expected graphs checked structurally and with onnxruntime."""

from __future__ import annotations

import numpy as np

from tests.conftest import check_no_rewrite, check_rewrite

HEADER = '<ir_version: 8, opset_import: ["" : 18]>\n'


def _conv_bn_model() -> str:
    """Conv followed by BatchNormalization, weights as initializers (as exporters emit them)."""
    rng = np.random.default_rng(0)
    w = ", ".join(f"{v:.4f}" for v in rng.standard_normal(4 * 3 * 3 * 3))
    return (
        HEADER
        + f"""
    g (float[1, 3, 8, 8] x) => (float[1, 4, 6, 6] y)
    <float[4, 3, 3, 3] w = {{{w}}}, float[4] scale = {{1.5, 0.5, 2.0, 1.0}},
     float[4] bias = {{0.1, -0.2, 0.3, 0.0}}, float[4] mean = {{0.05, 0.1, -0.1, 0.2}},
     float[4] var = {{1.0, 2.0, 0.5, 1.5}}> {{
      c = Conv(x, w)
      y = BatchNormalization(c, scale, bias, mean, var)
    }}"""
    )


def test_fuse_batchnorm_into_conv() -> None:
    expected = HEADER + "g (float[1, 3, 8, 8] x) => (float[1, 4, 6, 6] y) { y = Conv(x, w, b) }"
    check_rewrite(_conv_bn_model(), "fuse-standard", expected, atol=1e-4)


def test_fuse_layer_norm() -> None:
    before = (
        HEADER
        + """
    g (float[2, 4, 8] x) => (float[2, 4, 8] y) {
      axes = Constant <value = int64[1] {-1}> ()
      mean = ReduceMean <keepdims = 1> (x, axes)
      d = Sub(x, mean)
      sq = Mul(d, d)
      var = ReduceMean <keepdims = 1> (sq, axes)
      eps = Constant <value = float {1e-5}> ()
      ve = Add(var, eps)
      sd = Sqrt(ve)
      n = Div(d, sd)
      g = Constant <value = float[8] {1, 2, 1, 2, 1, 2, 1, 2}> ()
      b = Constant <value = float[8] {0, 1, 0, 1, 0, 1, 0, 1}> ()
      s = Mul(n, g)
      y = Add(s, b)
    }"""
    )
    expected = (
        HEADER
        + """
    g (float[2, 4, 8] x) => (float[2, 4, 8] y) {
      g = Constant <value = float[8] {1, 2, 1, 2, 1, 2, 1, 2}> ()
      b = Constant <value = float[8] {0, 1, 0, 1, 0, 1, 0, 1}> ()
      y = LayerNormalization(x, g, b)
    }"""
    )
    check_rewrite(before, "fuse-standard", expected, atol=1e-4)


def test_fuse_standard_leaves_plain_graph() -> None:
    check_no_rewrite(HEADER + "g (float[2] x) => (float[2] y) { y = Sigmoid(x) }", "fuse-standard")
