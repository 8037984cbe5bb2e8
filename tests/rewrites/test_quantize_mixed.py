"""``quantize-mixed``: per-weight widths from BAQ's allocation, within the average budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.errors import UsageError
from graphopt.feeds import save_feeds
from graphopt.passes import create_pass
from graphopt.rewrites._blockwise import code_range
from graphopt.runtime import make_session


def _model(seed: int = 0) -> ir.Model:
    """Three 64x64 layers whose weights differ in scale by 100x: the allocation must tell them apart."""
    rng = np.random.default_rng(seed)
    inits = []
    for name, scale in (("w1", 0.01), ("w2", 1.0), ("w3", 0.1)):
        values = ", ".join(f"{v:.6g}" for v in rng.standard_normal(64 * 64) * scale)
        inits.append(f"float[64, 64] {name} = {{{values}}}")
    return ir.from_onnx_text(
        '<ir_version: 8, opset_import: ["" : 18]>\n'
        f"g (float[M, 64] x) => (float[M, 64] y) <{', '.join(inits)}> {{\n"
        "  a = MatMul(x, w1)\n  b = MatMul(a, w2)\n  y = MatMul(b, w3)\n}"
    )


def _bits(model: ir.Model) -> dict[str, int]:
    record = json.loads(model.metadata_props["graphopt.quantization"])[-1]
    return {name: info["bits"] for name, info in record["weights"].items()}


@pytest.mark.parametrize("average", [3.0, 4.0, 5.0])
def test_allocation_meets_the_budget_and_runs(average: float) -> None:
    model = _model()
    assert create_pass("quantize-mixed", {"average_bits": average, "min_elements": 0})(model).modified
    bits = _bits(model)
    assert sum(bits.values()) / 3 <= average and len(set(bits.values())) > 1
    assert bits["w2"] >= bits["w3"] >= bits["w1"]  # larger weights, larger errors: more bits
    for name, b in bits.items():
        codes = model.graph.initializers[f"{name}_q"].const_value.numpy().astype(int)  # type: ignore[union-attr]
        lo, hi = code_range(b, True)
        assert codes.min() >= lo and codes.max() <= hi
    record = json.loads(model.metadata_props["graphopt.quantization"])[-1]
    assert record["pass"] == "quantize-mixed" and record["settings"]["average_bits"] == average
    assert all("baq_bits" in info for info in record["weights"].values())
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    make_session(model, optimization="basic").run(None, {"x": x})


def test_calibration_changes_the_sensitivity(tmp_path: Path) -> None:
    """Inputs of w2 are tiny once w1 (scale 0.01) has run: with activations w2 matters less."""
    x = np.random.default_rng(2).standard_normal((16, 64)).astype(np.float32)
    path = save_feeds({"x": x}, tmp_path / "calib.npz")
    plain, calibrated = _model(), _model()
    create_pass("quantize-mixed", {"average_bits": 4.0, "min_elements": 0})(plain)
    create_pass("quantize-mixed", {"average_bits": 4.0, "min_elements": 0, "calibration": str(path)})(calibrated)
    sens = lambda m: {n: i["sensitivity"] for n, i in json.loads(m.metadata_props["graphopt.quantization"])[-1][  # noqa: E731
        "weights"].items()}
    assert sens(calibrated)["w2"] / sens(calibrated)["w1"] < sens(plain)["w2"] / sens(plain)["w1"]


def test_bad_settings() -> None:
    for bad in ({"average_bits": 1.0}, {"choices": [5]}, {"format": "nf4"}, {"average_bits": 9}):
        with pytest.raises(UsageError):
            create_pass("quantize-mixed", bad)
