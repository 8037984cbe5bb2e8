"""``quantize-ternary``: BitNet b1.58 weights (absmean and median scales)."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.errors import UsageError
from graphopt.passes import create_pass
from graphopt.rewrites.quantize_ternary import QuantizeTernaryPass, ternarize
from graphopt.runtime import make_session
from tests.conftest import op_types


def _model(k: int = 64, n: int = 32, seed: int = 0) -> ir.Model:
    w = np.random.default_rng(seed).standard_normal(k * n)
    return ir.from_onnx_text(
        f'<ir_version: 8, opset_import: ["" : 18]>\n'
        f"g (float[M, {k}] x) => (float[M, {n}] y) <float[{k}, {n}] w = {{{', '.join(f'{v:.6g}' for v in w)}}}> {{\n"
        "  y = MatMul(x, w)\n}"
    )


def test_ternarize_numpy() -> None:
    w = np.array([[0.1, -2.0], [0.6, 0.2], [-0.5, 0.05]], dtype=np.float32)
    codes, gamma = ternarize(w, "absmean", "tensor")
    assert gamma.shape == () and gamma == pytest.approx(np.abs(w).mean())
    np.testing.assert_array_equal(codes, np.clip(np.rint(w / np.abs(w).mean()), -1, 1))
    _, median = ternarize(w, "median", "tensor")
    assert median == pytest.approx(np.median(np.abs(w)))
    codes_c, gamma_c = ternarize(w, "absmean", "channel")
    np.testing.assert_allclose(gamma_c, np.abs(w).mean(axis=0))
    assert set(np.unique(codes_c)) <= {-1, 0, 1}


@pytest.mark.parametrize(("scale", "granularity"), [("absmean", "tensor"), ("median", "channel")])
def test_graph_and_numerics(scale: str, granularity: str) -> None:
    model = _model()
    w = model.graph.initializers["w"].const_value.numpy()  # type: ignore[union-attr]
    assert QuantizeTernaryPass(scale=scale, granularity=granularity, min_elements=0)(model).modified
    assert op_types(model) == ["DequantizeLinear", "MatMul"]
    dq = model.graph.node(0)
    codes = model.graph.initializers["w_q"].const_value
    assert codes is not None and codes.dtype == ir.DataType.INT4
    assert ("axis" in dq.attributes) == (granularity == "channel") and "block_size" not in dq.attributes
    assert model.opset_imports[""] == 21
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    q, gamma = ternarize(w, scale, granularity)
    expected = x @ (q.astype(np.float32) * gamma)
    y = make_session(model, optimization="basic").run(None, {"x": x})[0]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    record = json.loads(model.metadata_props["graphopt.quantization"])[-1]
    assert record["pass"] == "quantize-ternary" and record["settings"]["scale"] == scale
    assert 0 < record["weights"]["w"]["zeros"] < 1


def test_small_weights_and_bad_settings() -> None:
    assert not QuantizeTernaryPass()(_model()).modified  # 2048 < min_elements
    for bad in ({"scale": "max"}, {"granularity": "row"}, {"exclude": "w"}):
        with pytest.raises(UsageError):
            create_pass("quantize-ternary", bad)
