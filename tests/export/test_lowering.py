from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.errors import UnsupportedError, UsageError
from graphopt.export import lowering
from graphopt.export.lowering import lower_model
from graphopt.export.targets import parse_target
from graphopt.feeds import input_specs, synthesize_feeds
from graphopt.provenance import read_provenance
from graphopt.runtime import make_session
from tests.export.conftest import float_mlp, quantized_mlp


def _outputs(model: ir.Model | Path, feeds: dict[str, np.ndarray], optimization: str = "all") -> np.ndarray:
    return np.asarray(make_session(model, optimization=optimization).run(None, feeds)[0])


def _reference(model: ir.Model) -> tuple[dict[str, np.ndarray], np.ndarray]:
    feeds = synthesize_feeds(input_specs(model), batch=3, seed=1)
    # "basic": onnxruntime's own extended fusions would change the QDQ reference itself.
    return feeds, _outputs(model, feeds, "basic")


def test_ort_cpu_lowers_qdq_to_matmulnbits(tmp_path: Path) -> None:
    model = quantized_mlp(symmetric=False)
    feeds, expected = _reference(model)
    lowered = lower_model(model, parse_target("ort-cpu"), tmp_path)
    ops = [n.op_type for n in lowered.model.graph]
    assert ops.count("MatMulNBits") == 2 and "DequantizeLinear" not in ops
    assert [(s.step, s.applied) for s in lowered.steps] == [("lower-matmulnbits", True), ("ort-optimize", True)]
    assert [f.name for f in lowered.files] == ["model.onnx"]
    assert [r["pass"] for r in read_provenance(lowered.model)] == ["quantize-weights", "lower-matmulnbits"]
    np.testing.assert_allclose(_outputs(lowered.path, feeds), expected, atol=1e-5, rtol=1e-5)
    assert [n.op_type for n in model.graph].count("MatMulNBits") == 0  # the input model is untouched


def test_tensorrt_keeps_qdq(tmp_path: Path) -> None:
    lowered = lower_model(quantized_mlp(symmetric=True), parse_target("ort-tensorrt"), tmp_path)
    assert [(s.step, s.applied) for s in lowered.steps] == [("lower-tensorrt", False)]  # symmetric INT4 stays
    assert [n.op_type for n in lowered.model.graph].count("DequantizeLinear") == 2


@pytest.mark.parametrize(("source", "target"), [(18, 14), (13, 17)])
def test_opset_conversion(tmp_path: Path, source: int, target: int) -> None:
    model = float_mlp(opset=source)
    feeds, expected = _reference(model)
    lowered = lower_model(model, parse_target(f"onnx-opset{target}"), tmp_path)
    assert lowered.model.opset_imports[""] == target
    assert lowered.steps[0].step == "convert-opset" and lowered.steps[0].applied
    assert ir.load(lowered.path).opset_imports[""] == target
    np.testing.assert_allclose(_outputs(lowered.path, feeds), expected, atol=1e-6)


def test_opset_conversion_to_the_same_opset(tmp_path: Path) -> None:
    same = lower_model(float_mlp(opset=18), parse_target("onnx-opset18"), tmp_path)
    assert not same.steps[0].applied and "already" in same.steps[0].detail


def test_opset_conversion_that_cannot_work(tmp_path: Path) -> None:
    # Blocked DequantizeLinear (block_size, INT4) exists only from opset 21 on.
    with pytest.raises(UnsupportedError, match="cannot convert the model from opset 21 to 19"):
        lower_model(quantized_mlp(symmetric=True), parse_target("onnx-opset19"), tmp_path)
    # onnx.version_converter has no downgrade adapter for Relu below opset 14.
    with pytest.raises(UnsupportedError, match=r"from opset 18 to 13: .*Relu"):
        lower_model(float_mlp(opset=18), parse_target("onnx-opset13"), tmp_path)


def test_opset_conversion_result_is_checked(tmp_path: Path) -> None:
    """onnx.version_converter keeps ReduceL2's noop_with_empty_axes (opset 18) when going to 17."""
    model = ir.from_onnx_text(
        """<ir_version: 8, opset_import: ["" : 18]>
        g (float[2, 3] x) => (float[2, 1] y) {
          axes = Constant <value = int64[1] {1}> ()
          y = ReduceL2 <keepdims = 1, noop_with_empty_axes = 0> (x, axes)
        }"""
    )
    with pytest.raises(UnsupportedError, match="18 to 17: Unrecognized attribute: noop_with_empty_axes"):
        lower_model(model, parse_target("onnx-opset17"), tmp_path)


def test_external_data_above_threshold(tmp_path: Path) -> None:
    model = float_mlp()
    feeds, expected = _reference(model)
    lowered = lower_model(model, parse_target("ort-cpu"), tmp_path, external_data_threshold=1024)
    assert [f.name for f in lowered.files] == ["model.onnx", "model.onnx.data"]
    assert lowered.files[1].stat().st_size >= (64 * 64 + 64 * 16) * 4
    np.testing.assert_allclose(_outputs(lowered.path, feeds), expected, atol=1e-5)
    small = lower_model(model, parse_target("ort-cpu"), tmp_path / "small")
    assert [f.name for f in small.files] == ["model.onnx"]
    with pytest.raises(UsageError, match="must not be negative"):
        lower_model(model, parse_target("ort-cpu"), tmp_path / "neg", external_data_threshold=-1)


def test_ort_format(tmp_path: Path) -> None:
    model = quantized_mlp(symmetric=True)
    feeds, expected = _reference(model)
    lowered = lower_model(model, parse_target("ort-format"), tmp_path)
    assert [f.name for f in lowered.files] == ["model.ort"]
    assert lowered.steps[-1].step == "ort-format" and lowered.steps[-1].applied
    assert lowered.path.read_bytes()[4:8] == b"ORTM"  # the flatbuffer's file identifier
    np.testing.assert_allclose(_outputs(lowered.path, feeds), expected, atol=1e-5, rtol=1e-5)


def test_float16_step_runs_the_registered_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lowering, "FP16_PASS", "test-export-scale-output")
    monkeypatch.setattr(lowering, "FP16_SETTINGS", {})
    lowered = lower_model(float_mlp(), parse_target("ort-cuda"), tmp_path)
    step = next(s for s in lowered.steps if s.step == "test-export-scale-output")
    assert step.applied and "'Mul': 1" in step.detail
    assert "test-export-scale-output" in [r["pass"] for r in read_provenance(lowered.model)]


def test_float16_step_reports_a_missing_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lowering, "FP16_PASS", "no-such-float16-pass")
    lowered = lower_model(float_mlp(), parse_target("ort-cuda"), tmp_path)
    step = next(s for s in lowered.steps if s.step == "no-such-float16-pass")
    assert not step.applied and "not available" in step.detail
    assert all(n.op_type != "Cast" for n in lowered.model.graph)


def test_cuda_lowering_runs_the_float16_pass(tmp_path: Path) -> None:
    model = float_mlp()
    feeds, expected = _reference(model)
    lowered = lower_model(model, parse_target("ort-cuda"), tmp_path)
    assert [(s.step, s.applied) for s in lowered.steps] == [("lower-matmulnbits", False), ("quantize-float", True)]
    weights = {v.const_value.dtype for v in lowered.model.graph.initializers.values() if v.const_value is not None}
    assert weights == {ir.DataType.FLOAT16}
    assert {v.dtype for v in [*lowered.model.graph.inputs, *lowered.model.graph.outputs]} == {ir.DataType.FLOAT}
    actual = _outputs(lowered.path, feeds, "basic")
    np.testing.assert_allclose(actual, expected, atol=2e-2, rtol=2e-2)
    assert not np.array_equal(actual, expected)  # float16 weights really change the arithmetic
