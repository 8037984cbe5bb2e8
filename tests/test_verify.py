from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.errors import InputError
from graphopt.feeds import input_specs, synthesize_feeds
from graphopt.verify import compare_outputs, verify_models

HEADER = '<ir_version: 8, opset_import: ["" : 18]>\n'
RELU = HEADER + "g (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }"
SHIFTED = (
    HEADER
    + """g (float[N, 4] x) => (float[N, 4] y) {
  c = Constant <value = float {0.01}> ()
  r = Relu(x)
  y = Add(r, c)
}"""
)


def test_compare_outputs_metrics() -> None:
    a = np.array([1.0, 2.0, -3.0], np.float32)
    (same,) = compare_outputs([a], [a.copy()], ["y"], 1e-6, 0)
    assert same.passed and same.max_abs == 0 and same.cosine == pytest.approx(1.0)
    (off,) = compare_outputs([a], [a + np.float32(0.5)], ["y"], 0.1, 0)
    assert not off.passed and off.max_abs == pytest.approx(0.5)
    assert off.max_rel == pytest.approx(0.5)
    (shape,) = compare_outputs([a], [a[:2]], ["y"], 1, 1)
    assert not shape.passed and "shape" in shape.note
    nan = np.array([np.nan, 1.0])
    (nans,) = compare_outputs([nan], [nan.copy()], ["y"], 0, 0)
    assert nans.passed


def test_verify_identical_and_different_models() -> None:
    relu, shifted = ir.from_onnx_text(RELU), ir.from_onnx_text(SHIFTED)
    feeds = synthesize_feeds(input_specs(relu), batch=6)
    same = verify_models(relu, ir.from_onnx_text(RELU), feeds, signature=relu, batch_size=4)
    assert same.passed and same.batches == 2
    differs = verify_models(relu, shifted, feeds, atol=1e-3, rtol=0, signature=relu)
    assert not differs.passed
    assert differs.max_abs == pytest.approx(0.01, rel=1e-4)
    assert verify_models(relu, shifted, feeds, atol=0.02, rtol=0, signature=relu).passed


def test_verify_rejects_different_signatures() -> None:
    relu = ir.from_onnx_text(RELU)
    other = ir.from_onnx_text(HEADER + "g (float[N, 4] z) => (float[N, 4] y) { y = Relu(z) }")
    with pytest.raises(InputError, match="different inputs"):
        verify_models(relu, other, synthesize_feeds(input_specs(relu)), signature=relu)


def test_verify_reports_bad_feed_shape() -> None:
    relu = ir.from_onnx_text(RELU)
    with pytest.raises(InputError, match="rank"):
        verify_models(relu, relu, {"x": np.zeros((2,), np.float32)}, signature=relu)
