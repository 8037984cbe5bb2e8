"""``quantize-float`` (fp16 / bf16 with fp32 fallback ops) and ``quantize-fp8`` (E4M3 weights)."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import onnx_ir as ir
import pytest

from graphopt.errors import UsageError
from graphopt.passes import create_pass
from graphopt.rewrites.quantize_float import fp8_weight
from graphopt.runtime import make_session


def _block(seed: int = 0) -> ir.Model:
    """MatMul -> Add -> LayerNormalization -> Softmax -> MatMul, float32 in and out."""
    rng = np.random.default_rng(seed)
    w1 = ", ".join(f"{v:.6g}" for v in rng.standard_normal(32 * 32) * 0.2)
    w2 = ", ".join(f"{v:.6g}" for v in rng.standard_normal(32 * 16) * 0.2)
    ones = ", ".join(["1"] * 32)
    zeros = ", ".join(["0"] * 32)
    return ir.from_onnx_text(
        '<ir_version: 8, opset_import: ["" : 18]>\n'
        "g (float[M, 32] x) => (float[M, 16] y) "
        f"<float[32, 32] w1 = {{{w1}}}, float[32, 16] w2 = {{{w2}}}, float[32] g = {{{ones}}}, "
        f"float[32] b = {{{zeros}}}> {{\n"
        "  h = MatMul(x, w1)\n  r = Add(h, x)\n  n = LayerNormalization(r, g, b)\n  s = Softmax(n)\n"
        "  y = MatMul(s, w2)\n}"
    )


def _run(model: ir.Model, x: np.ndarray) -> np.ndarray:
    return make_session(model, optimization="basic").run(None, {"x": x})[0]


def test_fp16_compute_keeps_sensitive_ops_in_fp32() -> None:
    original, model = _block(), _block()
    assert create_pass("quantize-float", {"dtype": "float16"})(model).modified
    nodes = {n.op_type: n for n in model.graph if n.op_type != "Cast"}
    f16, f32 = ir.DataType.FLOAT16, ir.DataType.FLOAT
    assert nodes["Add"].outputs[0].dtype == f16
    assert nodes["LayerNormalization"].outputs[0].dtype == f32 and nodes["Softmax"].outputs[0].dtype == f32
    assert model.graph.initializers["w1"].const_value.dtype == f16  # type: ignore[union-attr]
    assert model.graph.initializers["g"].const_value.dtype == f32  # type: ignore[union-attr]  (LayerNorm's)
    assert model.graph.inputs[0].dtype == f32 and model.graph.outputs[0].dtype == f32
    assert model.graph.outputs[0].name == "y"
    casts = [n for n in model.graph if n.op_type == "Cast"]
    assert all(n.metadata_props["graphopt.inserted_by"] == "quantize-float" for n in casts)
    x = np.random.default_rng(1).standard_normal((4, 32)).astype(np.float32)
    y, ref = _run(model, x), _run(original, x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref, atol=3e-3 * np.abs(ref).max(), rtol=0)
    assert not np.array_equal(y, ref)  # it did compute in half precision
    record = json.loads(model.metadata_props["graphopt.quantization"])[-1]
    assert record["pass"] == "quantize-float" and record["settings"]["dtype"] == "float16"


def test_keep_fp32_is_honoured() -> None:
    model = _block()
    create_pass("quantize-float", {"dtype": "float16", "keep_fp32": ["MatMul", "Add", "LayerNormalization",
                                                                     "Softmax"]})(model)
    assert all(v.dtype == ir.DataType.FLOAT for n in model.graph for v in n.outputs)
    assert not any(n.op_type == "Cast" for n in model.graph)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_weight_storage_only(dtype: str) -> None:
    original, model = _block(), _block()
    assert create_pass("quantize-float", {"dtype": dtype, "compute": False, "min_elements": 100})(model).modified
    stored = {n: v.const_value.dtype for n, v in model.graph.initializers.items()}  # type: ignore[union-attr]
    low = ir.DataType.BFLOAT16 if dtype == "bfloat16" else ir.DataType.FLOAT16
    assert stored["w1_" + low.name.lower()] == low and stored["g"] == ir.DataType.FLOAT  # 32 < min_elements
    x = np.random.default_rng(2).standard_normal((3, 32)).astype(np.float32)
    rounded = _block()
    numpy_type = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16
    for name in ("w1", "w2"):
        value = rounded.graph.initializers[name]
        value.const_value = ir.Tensor(value.const_value.numpy().astype(numpy_type).astype(np.float32))  # type: ignore[union-attr]
    np.testing.assert_allclose(_run(model, x), _run(rounded, x), rtol=1e-5, atol=1e-6)
    assert not np.array_equal(_run(model, x), _run(original, x))


def test_fp8_weights() -> None:
    model = _block()
    w1 = model.graph.initializers["w1"].const_value.numpy()  # type: ignore[union-attr]
    assert create_pass("quantize-fp8", {"min_elements": 0})(model).modified
    assert model.graph.initializers["w1_q"].const_value.dtype == ir.DataType.FLOAT8E4M3FN  # type: ignore[union-attr]
    assert model.opset_imports[""] == 21
    codes, scale = fp8_weight(w1, axis=1)
    np.testing.assert_allclose(np.abs(codes.astype(np.float32)).max(axis=0), 448.0)  # the column max is exact
    deq = codes.astype(np.float32) * scale
    assert np.abs(deq - w1).max() <= np.abs(w1).max() * 2**-4  # 3 mantissa bits: relative step 2^-3, error half
    x = np.random.default_rng(3).standard_normal((2, 32)).astype(np.float32)
    rewired = _block()
    for name in ("w1", "w2"):
        value = rewired.graph.initializers[name]
        c, s = fp8_weight(value.const_value.numpy(), axis=1)  # type: ignore[union-attr]
        value.const_value = ir.Tensor((c.astype(np.float32) * s).astype(np.float32))
    np.testing.assert_allclose(_run(model, x), _run(rewired, x), rtol=1e-5, atol=1e-6)


def test_bad_settings() -> None:
    for name, bad in (("quantize-float", {"dtype": "float8"}), ("quantize-float", {"keep_fp32": "Softmax"}),
                      ("quantize-fp8", {"min_elements": -1})):
        with pytest.raises(UsageError):
            create_pass(name, bad)


def test_compute_conversion_leaves_the_model_it_was_cloned_from_alone() -> None:
    """onnx_ir clones share type objects; setting a value's dtype in place would retype the original."""
    from graphopt.passes import create_pass
    from tests.rewrites.test_quantize_activations import block_model

    original = block_model(k=64, n=128)
    work = original.clone()
    create_pass("quantize-float", {"dtype": "float16"})(work)
    assert {v.dtype for n in work.graph for v in n.outputs} >= {ir.DataType.FLOAT16}
    assert {v.dtype for n in original.graph for v in n.outputs} <= {ir.DataType.FLOAT, None}
