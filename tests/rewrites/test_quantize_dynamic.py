"""Dynamic W8A8 (``quantize-dynamic``): integer form = QDQ reference = numpy."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.errors import UsageError
from graphopt.passes import create_pass
from graphopt.rewrites.quantize_activations import quantize_per_channel
from graphopt.rewrites.quantize_dynamic import QuantizeDynamicPass
from graphopt.runtime import make_session
from tests.conftest import op_types
from tests.rewrites.test_quantize_activations import block_model, feeds


def _dynamic_quant(x: np.ndarray) -> np.ndarray:
    """ONNX DynamicQuantizeLinear followed by DequantizeLinear, in numpy."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = np.float32((hi - lo) / 255)
    zp = np.clip(np.rint(-lo / scale), 0, 255)
    return ((np.clip(np.rint(x / scale) + zp, 0, 255) - zp) * scale).astype(np.float32)


@pytest.mark.parametrize("form", ["integer", "qdq"])
def test_forms_match_numpy(form: str) -> None:
    original = block_model()
    model = original.clone()
    assert QuantizeDynamicPass(form=form)(model).modified
    ops = op_types(model)
    assert ops.count("DynamicQuantizeLinear") == 2
    assert ops.count("MatMulInteger" if form == "integer" else "DequantizeLinear") == (2 if form == "integer" else 4)
    x = feeds(8, seed=2)["x"]
    got = make_session(model, optimization="basic").run(None, {"x": x})[0]
    init = {n: v.const_value.numpy() for n, v in original.graph.initializers.items()}  # type: ignore[union-attr]
    h = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * init["g1"] + init["b1"]
    q1, s1 = quantize_per_channel(init["w1"], 1)
    q2, s2 = quantize_per_channel(init["w2"], 1)
    y = np.maximum(_dynamic_quant(h.astype(np.float32)) @ (q1 * s1) + init["b"], 0).astype(np.float32)
    expected = _dynamic_quant(y) @ (q2 * s2) + h
    np.testing.assert_allclose(got, expected, atol=2e-3)
    # onnxruntime's fused kernels (DynamicQuantizeMatMul) stay close to the reference.
    fused = make_session(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(fused, got, atol=2e-2)


def test_per_tensor_uses_one_scale() -> None:
    model = block_model()
    QuantizeDynamicPass(per_channel=False)(model)
    scales = [v.const_value for n, v in model.graph.initializers.items() if n.endswith("_w8_scale")]
    assert scales and all(s is not None and s.shape == (1,) for s in scales)


def test_graph_output_matmul_keeps_its_name() -> None:
    import onnx_ir as ir

    rng = np.random.default_rng(0)
    w = ", ".join(f"{v:.4g}" for v in rng.standard_normal(12))
    text = f"""<ir_version: 10, opset_import: ["" : 18]>
    g (float[N, 4] x) => (float[N, 3] y) <float[4, 3] w = {{{w}}}> {{ y = MatMul(x, w) }}"""
    model = ir.from_onnx_text(text)
    QuantizeDynamicPass()(model)
    assert model.graph.outputs[0].name == "y"
    assert make_session(model).run(None, {"x": np.ones((2, 4), np.float32)})[0].shape == (2, 3)


def test_no_weights_and_validation() -> None:
    import onnx_ir as ir

    text = """<ir_version: 10, opset_import: ["" : 18]>
    g (float[N, 4] x, float[4, 3] w) => (float[N, 3] y) { y = MatMul(x, w) }"""
    assert not QuantizeDynamicPass()(ir.from_onnx_text(text)).modified
    with pytest.raises(UsageError):
        create_pass("quantize-dynamic", {"form": "fast"})
