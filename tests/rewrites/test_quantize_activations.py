"""Static W8A8 QDQ (``quantize-activations``): structure, numpy references, calibration robustness."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.errors import UsageError
from graphopt.passes import create_pass
from graphopt.rewrites._calibrators import quant_params
from graphopt.rewrites.quantize_activations import (
    QuantizeActivationsPass,
    quantize_gathers,
    quantize_per_channel,
    split_holdout,
    weight_sites,
)
from graphopt.runtime import make_session
from tests.conftest import op_types


def _floats(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> str:
    return ", ".join(f"{v:.6g}" for v in (rng.standard_normal(shape) * scale).ravel())


def block_model(seed: int = 0, k: int = 16, n: int = 24) -> ir.Model:
    """``h = LayerNorm(x); y = MatMul(h, w1) + b; z = MatMul(Relu(y), w2) + h`` (the residual Add
    reads the LayerNorm output, which two MatMuls cannot share alone)."""
    rng = np.random.default_rng(seed)
    text = f"""<ir_version: 10, opset_import: ["" : 18]>
    g (float[N, {k}] x) => (float[N, {k}] z)
    <float[{k}] g1 = {{{_floats(rng, k, scale=0.2)}}}, float[{k}] b1 = {{{_floats(rng, k, scale=0.1)}}},
     float[{k}, {n}] w1 = {{{_floats(rng, k, n, scale=0.3)}}}, float[{n}] b = {{{_floats(rng, n, scale=0.1)}}},
     float[{n}, {k}] w2 = {{{_floats(rng, n, k, scale=0.3)}}}> {{
      h = LayerNormalization <axis = -1> (x, g1, b1)
      m = MatMul(h, w1)
      y = Add(m, b)
      r = Relu(y)
      m2 = MatMul(r, w2)
      z = Add(m2, h)
    }}"""
    g1 = np.abs(rng.standard_normal(k)).astype(np.float32) + 0.5
    model = ir.from_onnx_text(text)
    model.graph.initializers["g1"].const_value = ir.Tensor(g1, name="g1")
    return model


def feeds(n: int = 64, k: int = 16, seed: int = 1) -> dict[str, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32) * 2
    return {"x": x}


def _fake_quant(x: np.ndarray, scale: float, zp: int, lo: int, hi: int) -> np.ndarray:
    return ((np.clip(np.rint(x / np.float32(scale)) + zp, lo, hi) - zp) * np.float32(scale)).astype(np.float32)


def test_per_channel_weights_numpy_reference() -> None:
    w = np.random.default_rng(0).standard_normal((20, 6)).astype(np.float32)
    q, scale = quantize_per_channel(w, axis=1)
    np.testing.assert_allclose(scale, np.abs(w).max(axis=0) / 127, rtol=1e-6)
    assert q.dtype == np.int8 and q.min() >= -127 and q.max() <= 127
    assert np.all(np.abs(q * scale - w) <= scale / 2 + 1e-7)
    q0, scale0 = quantize_per_channel(w.T, axis=0)
    np.testing.assert_array_equal(q0, q.T)
    np.testing.assert_array_equal(scale0, scale)


def test_structure_and_float_consumers() -> None:
    model = block_model()
    result = QuantizeActivationsPass(feeds=feeds(), method="minmax")(model)
    assert result.modified
    ops = op_types(model)
    assert ops.count("QuantizeLinear") == 2 and ops.count("DequantizeLinear") == 4
    residual = next(n for n in model.graph if n.op_type == "Add" and n.outputs[0].name == "z")
    producer = residual.inputs[1].producer() if residual.inputs[1] is not None else None
    assert producer is not None and producer.op_type == "LayerNormalization"
    for node in model.graph:
        if node.op_type == "MatMul":
            producers = [v.producer() if v is not None else None for v in node.inputs]
            assert all(p is not None and p.op_type == "DequantizeLinear" for p in producers)
    # Running it again finds nothing new to quantize: the MatMuls read DequantizeLinear outputs.
    assert not QuantizeActivationsPass(feeds=feeds())(model).modified


@pytest.mark.parametrize("activation_type", ["uint8", "int8"])
def test_matches_numpy_fake_quantization(activation_type: str) -> None:
    original = block_model()
    calib = feeds()
    model = original.clone()
    QuantizeActivationsPass(feeds=calib, method="minmax", activation_type=activation_type)(model)
    x = feeds(8, seed=5)["x"]
    got = make_session(model, optimization="basic").run(None, {"x": x})[0]

    init = {name: v.const_value.numpy() for name, v in original.graph.initializers.items()}  # type: ignore[union-attr]
    ref_session = make_session(original, optimization="disabled")
    symmetric = activation_type == "int8"
    lo, hi = (-128, 127) if symmetric else (0, 255)
    mean = x.mean(-1, keepdims=True)
    h = ((x - mean) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * init["g1"] + init["b1"]).astype(np.float32)
    calib_h = calib["x"]
    calib_h = (calib_h - calib_h.mean(-1, keepdims=True)) / np.sqrt(calib_h.var(-1, keepdims=True) + 1e-5)
    calib_h = calib_h * init["g1"] + init["b1"]
    s1, z1 = quant_params(float(calib_h.min()), float(calib_h.max()), symmetric=symmetric)
    q1, ws1 = quantize_per_channel(init["w1"], 1)
    q2, ws2 = quantize_per_channel(init["w2"], 1)
    y = np.maximum(_fake_quant(h, s1, z1, lo, hi) @ (q1 * ws1) + init["b"], 0)
    calib_y = np.maximum(calib_h @ init["w1"] + init["b"], 0)
    s2, z2 = quant_params(float(calib_y.min()), float(calib_y.max()), symmetric=symmetric)
    expected = _fake_quant(y, s2, z2, lo, hi) @ (q2 * ws2) + h
    np.testing.assert_allclose(got, expected, atol=2e-3)
    float_out = ref_session.run(None, {"x": x})[0]
    assert 0 < np.abs(got - float_out).max() < 0.2


def test_ignores_attention_mask_values_in_calibration() -> None:
    model = block_model()
    calib = feeds()
    masked = {"x": calib["x"].copy()}
    masked["x"][0, 0] = -3.4e38  # LayerNorm of this row turns non-finite; its values must not set ranges
    plain, robust = model.clone(), model.clone()
    QuantizeActivationsPass(feeds={"x": calib["x"][1:]}, method="minmax")(plain)
    QuantizeActivationsPass(feeds=masked, method="minmax")(robust)
    scales = {n: v.const_value.numpy() for n, v in plain.graph.initializers.items()  # type: ignore[union-attr]
              if n.endswith("_a8_scale")}
    for name, value in scales.items():
        other = robust.graph.initializers[name].const_value.numpy()  # type: ignore[union-attr]
        assert np.isfinite(other) and other < 10 * value


def test_exclude_keeps_a_site_in_float() -> None:
    model = block_model()
    name = weight_sites(model.graph)[0].name
    QuantizeActivationsPass(feeds=feeds(), exclude=(name,))(model)
    assert [s.name for s in weight_sites(model.graph)] == [name]


def test_an_empty_name_in_exclude_leaves_unnamed_nodes_alone() -> None:
    model = block_model()
    for node in model.graph:
        node.name = ""
    assert len(weight_sites(model.graph, exclude=("",))) == len(weight_sites(model.graph)) > 0


def test_needs_calibration_and_validates_settings() -> None:
    with pytest.raises(UsageError, match="calibration"):
        QuantizeActivationsPass()(block_model())
    with pytest.raises(UsageError, match="method"):
        create_pass("quantize-activations", {"method": "bogus"})
    with pytest.raises(UsageError, match="activation_type"):
        create_pass("quantize-activations", {"activation_type": "int4"})


def test_no_weights_no_rewrite() -> None:
    text = """<ir_version: 10, opset_import: ["" : 18]>
    g (float[N, 4] x, float[4, 3] w) => (float[N, 3] y) { y = MatMul(x, w) }"""
    model = ir.from_onnx_text(text)
    assert not QuantizeActivationsPass(feeds={"x": np.ones((2, 4), np.float32)})(model).modified
    assert op_types(model) == ["MatMul"]


def test_calib_file_and_holdout(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "calib.npz"
    np.savez(path, x=feeds()["x"])
    model = block_model()
    assert create_pass("quantize-activations", {"calib": str(path), "holdout": 0.25})(model).modified
    calib, held = split_holdout(feeds(), 0.25)
    assert len(calib["x"]) == 48 and len(held["x"]) == 16
    with pytest.raises(UsageError):
        split_holdout({"x": np.ones((1, 2))}, 0.5)


def test_embedding_table_int8_per_column() -> None:
    rng = np.random.default_rng(0)
    table = rng.standard_normal((300, 8)).astype(np.float32) * np.arange(1, 9, dtype=np.float32)
    text = """<ir_version: 10, opset_import: ["" : 18]>
    g (int64[N, S] ids) => (float[N, S, 8] y) <float[300, 8] t = {0.0}> { y = Gather <axis = 0> (t, ids) }"""
    model = ir.from_onnx_text(text)
    model.graph.initializers["t"].const_value = ir.Tensor(table, name="t")
    assert quantize_gathers(model.graph, inserted_by="test", min_elements=1000) == 1
    assert op_types(model) == ["Gather", "DequantizeLinear"] and "t" not in model.graph.initializers
    ids = rng.integers(0, 300, size=(2, 5))
    got = make_session(model, optimization="basic").run(None, {"ids": ids})[0]
    q, scale = quantize_per_channel(table, axis=1)
    np.testing.assert_allclose(got, (q * scale)[ids], rtol=1e-6)
    assert np.abs(got - table[ids]).max() <= scale.max() / 2 + 1e-6
    small = ir.from_onnx_text(text)
    assert quantize_gathers(small.graph, inserted_by="test") == 0  # below the default 65536 elements


def test_quantize_bmm_covers_activation_matmuls() -> None:
    text = """<ir_version: 10, opset_import: ["" : 18]>
    g (float[N, 4, 4] a, float[N, 4, 4] b) => (float[N, 4, 4] y) { y = MatMul(a, b) }"""
    calib = {n: np.random.default_rng(i).standard_normal((8, 4, 4)).astype(np.float32) for i, n in enumerate("ab")}
    model = ir.from_onnx_text(text)
    assert not QuantizeActivationsPass(feeds=calib)(model).modified  # off by default
    assert QuantizeActivationsPass(feeds=calib, quantize_bmm=True)(model).modified
    assert op_types(model).count("QuantizeLinear") == 2
    x = {n: v[:2] for n, v in calib.items()}
    got = make_session(model, optimization="basic").run(None, x)[0]
    assert np.abs(got - x["a"] @ x["b"]).max() < 0.1
