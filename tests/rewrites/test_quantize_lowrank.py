"""``quantize-lowrank``: a quantized base plus a float low-rank branch (LQ-LoRA)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.errors import UsageError
from graphopt.feeds import save_feeds
from graphopt.passes import create_pass
from graphopt.rewrites._blockwise import dequantize_blockwise, quantize_blockwise
from graphopt.runtime import make_session
from tests.conftest import op_types


def _model(k: int = 64, n: int = 48, seed: int = 0, tail: str = "") -> ir.Model:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, 3)) @ rng.standard_normal((3, n)) + 0.1 * rng.standard_normal((k, n))
    out = "z" if tail else "y"
    return ir.from_onnx_text(
        f'<ir_version: 8, opset_import: ["" : 18]>\n'
        f"g (float[M, {k}] x) => (float[M, {n}] {out}) "
        f"<float[{k}, {n}] w = {{{', '.join(f'{v:.6g}' for v in w.ravel())}}}> {{\n"
        f"  y = MatMul(x, w)\n{tail}}}"
    )


def _effective_weight(model: ir.Model) -> np.ndarray:
    init = {name: v.const_value.numpy() for name, v in model.graph.initializers.items()}  # type: ignore[union-attr]
    zp = init.get("w_zp")
    base = dequantize_blockwise(init["w_q"], init["w_scale"], zp, 32)
    return base + init["w_lora_a"] @ init["w_lora_b"]


@pytest.mark.parametrize("tail", ["", "  z = Relu(y)\n"])
def test_graph_and_numerics(tail: str) -> None:
    model = _model(tail=tail)
    w = model.graph.initializers["w"].const_value.numpy()  # type: ignore[union-attr]
    assert create_pass("quantize-lowrank", {"bits": 2, "rank": 3, "block_size": 32, "min_elements": 0})(model).modified
    expected_ops = ["DequantizeLinear", "MatMul", "MatMul", "MatMul", "Add"] + (["Relu"] if tail else [])
    assert op_types(model) == expected_ops
    assert model.graph.outputs[0].name == ("z" if tail else "y")
    x = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    y = make_session(model, optimization="basic").run(None, {"x": x})[0]
    effective = _effective_weight(model)
    reference = x @ effective
    np.testing.assert_allclose(y, np.maximum(reference, 0) if tail else reference, rtol=1e-4, atol=1e-4)
    plain = dequantize_blockwise(*quantize_blockwise(w, 2, 32, False), 32)
    assert np.linalg.norm(w - effective) < 0.5 * np.linalg.norm(w - plain)  # the branch holds the low-rank part
    record = json.loads(model.metadata_props["graphopt.quantization"])[-1]
    assert record["pass"] == "quantize-lowrank" and record["weights"]["w"]["error_best"] <= record["weights"]["w"][
        "error_first"]


def test_fisher_weighting_from_calibration(tmp_path: Path) -> None:
    model = _model()
    x = np.random.default_rng(2).standard_normal((16, 64)).astype(np.float32)
    x[:, :4] *= 20
    path = save_feeds({"x": x}, tmp_path / "calib.npz")
    settings = {"bits": 2, "rank": 2, "block_size": 32, "min_elements": 0}
    weighted, plain = _model(), _model()
    create_pass("quantize-lowrank", {**settings, "calibration": str(path)})(weighted)
    create_pass("quantize-lowrank", settings)(plain)
    w = model.graph.initializers["w"].const_value.numpy()  # type: ignore[union-attr]
    error = lambda m: np.linalg.norm(x @ (w - _effective_weight(m)))  # noqa: E731
    assert error(weighted) < error(plain)


def test_rank_must_save_parameters() -> None:
    model = ir.from_onnx_text(
        '<ir_version: 8, opset_import: ["" : 18]>\n'
        "g (float[M, 4] x) => (float[M, 4] y) <float[4, 4] w = {" + ", ".join(["0.5"] * 16) + "}> {\n"
        "  y = MatMul(x, w)\n}"
    )
    assert not create_pass("quantize-lowrank", {"rank": 2, "min_elements": 0})(model).modified  # 2*(4+4) >= 16
    with pytest.raises(UsageError):
        create_pass("quantize-lowrank", {"rank": 0})
