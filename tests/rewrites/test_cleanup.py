"""Before/Expected graphs for each cleanup pass, checked structurally and with onnxruntime."""

from __future__ import annotations

import numpy as np

from tests.conftest import check_no_rewrite, check_rewrite

HEADER = '<ir_version: 8, opset_import: ["" : 18]>\n'


def test_fold_constants() -> None:
    before = (
        HEADER
        + """
    g (float[2, 3] x) => (float[2, 3] y) {
      a = Constant <value = float[3] {1, 2, 3}> ()
      b = Constant <value = float[3] {4, 5, 6}> ()
      c = Add(a, b)
      d = Sqrt(c)
      y = Mul(x, d)
    }"""
    )
    expected = (
        HEADER
        + """
    g (float[2, 3] x) => (float[2, 3] y) <float[3] d = {2.23607, 2.64575, 3}> {
      y = Mul(x, d)
    }"""
    )
    model = check_rewrite(before, "fold-constants", expected)
    (folded,) = model.graph.initializers.values()
    np.testing.assert_allclose(folded.const_value.numpy(), np.sqrt([5.0, 7.0, 9.0]), rtol=1e-6)


def test_fold_constants_shape_of_static_input() -> None:
    before = (
        HEADER
        + """
    g (float[2, 3] x) => (float[6] y) {
      s = Shape(x)
      n = ReduceProd(s)
      y = Reshape(x, n)
    }"""
    )
    expected = HEADER + "g (float[2, 3] x) => (float[6] y) <int64[1] n = {6}> { y = Reshape(x, n) }"
    check_rewrite(before, "fold-constants", expected)


def test_fold_constants_leaves_dynamic_graph() -> None:
    check_no_rewrite(HEADER + "g (float[N, 3] x) => (float[N, 3] y) { y = Relu(x) }", "fold-constants")


def test_remove_no_ops() -> None:
    before = (
        HEADER
        + """
    g (float[2, 3] x) => (float[2, 3] y) {
      one = Constant <value = float {1.0}> ()
      zero = Constant <value = float {0.0}> ()
      a = Cast <to = 1> (x)
      b = Identity(a)
      c = Mul(b, one)
      d = Add(c, zero)
      y = Relu(d)
    }"""
    )
    expected = HEADER + "g (float[2, 3] x) => (float[2, 3] y) { y = Relu(x) }"
    check_rewrite(before, "remove-no-ops", expected)


def test_remove_no_ops_keeps_broadcasting_mul() -> None:
    """Mul(x, ones[3]) broadcasts x of shape [3, 1] to [3, 3]: not a no-op."""
    check_no_rewrite(
        HEADER
        + """
    g (float[3, 1] x) => (float[3, 3] y) {
      one = Constant <value = float[3] {1, 1, 1}> ()
      y = Mul(x, one)
    }""",
        "remove-no-ops",
    )


def test_remove_dead_code() -> None:
    before = (
        HEADER
        + """
    g (float[2] x) => (float[2] y) {
      unused = Sigmoid(x)
      also = Exp(unused)
      y = Relu(x)
    }"""
    )
    check_rewrite(before, "remove-dead-code", HEADER + "g (float[2] x) => (float[2] y) { y = Relu(x) }")


def test_simplify_shapes_reshape_chain() -> None:
    before = (
        HEADER
        + """
    g (float[2, 3, 4] x) => (float[4, 6] y) {
      s1 = Constant <value = int64[2] {6, 4}> ()
      s2 = Constant <value = int64[2] {4, 6}> ()
      a = Reshape(x, s1)
      y = Reshape(a, s2)
    }"""
    )
    expected = HEADER + "g (float[2, 3, 4] x) => (float[4, 6] y) <int64[2] s2 = {4, 6}> { y = Reshape(x, s2) }"
    check_rewrite(before, "simplify-shapes", expected)


def test_simplify_shapes_transpose_pair() -> None:
    before = (
        HEADER
        + """
    g (float[2, 3, 4] x) => (float[2, 3, 4] y) {
      a = Transpose <perm = [1, 0, 2]> (x)
      y = Transpose <perm = [1, 0, 2]> (a)
    }"""
    )
    expected = HEADER + "g (float[2, 3, 4] x) => (float[2, 3, 4] y) { y = Identity(x) }"
    check_rewrite(before, "simplify-shapes", expected)


def test_simplify_shapes_leaves_no_identity_inside_the_graph() -> None:
    before = (
        HEADER
        + """
    g (float[2, 3, 4] x) => (float[2, 3, 4] y) {
      a = Transpose <perm = [1, 0, 2]> (x)
      b = Transpose <perm = [1, 0, 2]> (a)
      y = Relu(b)
    }"""
    )
    check_rewrite(before, "simplify-shapes", HEADER + "g (float[2, 3, 4] x) => (float[2, 3, 4] y) { y = Relu(x) }")


def test_deduplicate() -> None:
    before = (
        HEADER
        + """
    g (float[2] x) => (float[2] y) {
      a = Exp(x)
      b = Exp(x)
      y = Add(a, b)
    }"""
    )
    expected = (
        HEADER
        + """
    g (float[2] x) => (float[2] y) {
      a = Exp(x)
      y = Add(a, a)
    }"""
    )
    check_rewrite(before, "deduplicate", expected)
