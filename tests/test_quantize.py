"""The quantization facade: schemes, metadata, accuracy-aware fallback, text calibration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.cli import main
from graphopt.errors import InputError, UsageError
from graphopt.quantize import (
    QUANTIZATION_KEY,
    SCHEMES,
    QuantizeOptions,
    feeds_from_text,
    fidelity,
    quantize,
    scheme_recipe,
)
from tests.conftest import op_types
from tests.rewrites.test_quantize_activations import block_model, feeds
from tests.rewrites.test_quantize_activations_residual import stream_feeds, stream_model


def test_fidelity_is_the_worst_mean_cosine() -> None:
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    b = np.array([[1.0, 0.0], [1.0, 1.0]])
    assert fidelity([a, a], [a, b]) == pytest.approx((1 + 2**-0.5) / 2)


def test_schemes_and_recipes() -> None:
    assert {"w8a8", "w8a8-dynamic", "w4a16"} <= set(SCHEMES)
    recipe = scheme_recipe("w8a8", QuantizeOptions(smooth_alpha=0.5, calib_path="c.npz"))
    assert [s.pass_name for s in recipe.steps] == ["smooth-quant", "quantize-activations"]
    assert recipe.steps[1].settings["calib"] == "c.npz"
    with pytest.raises(UsageError, match="unknown quantization scheme"):
        scheme_recipe("w3a3")


@pytest.mark.parametrize("scheme", ["w8a8", "w8a8-dynamic"])
def test_quantize_records_metadata_and_keeps_the_input(scheme: str) -> None:
    model = block_model()
    before = len(list(model.graph))
    result = quantize(model, scheme, feeds())
    assert len(list(model.graph)) == before
    record = json.loads(result.model.metadata_props[QUANTIZATION_KEY])
    assert record["scheme"] == scheme and record["options"]["method"] == "percentile"
    assert "graphopt.provenance" in result.model.metadata_props


def test_fallback_meets_the_target_with_few_sites() -> None:
    model = block_model()
    plain = quantize(model, "w8a8", feeds(), method="minmax", target_fidelity=0.5)
    assert plain.fallback == () and plain.fidelity is not None and plain.trials == 1
    target = min(0.99999, (1 + plain.fidelity) / 2)  # above what full quantization reaches
    result = quantize(model, "w8a8", feeds(), method="minmax", target_fidelity=target)
    assert result.fidelity is not None and result.fidelity >= target
    # Unnamed nodes are named by their weights; quantizing w2 alone costs more than w1 alone.
    assert result.sensitivity.keys() == {"w1", "w2"}
    assert result.fallback == (max(result.sensitivity, key=result.sensitivity.__getitem__),)
    assert result.trials == 1 + 2 + 1  # full, one per site, one binary-search step
    step = result.recipe.steps[-1]
    assert list(step.settings["exclude"]) == list(result.fallback)


def test_errors() -> None:
    with pytest.raises(UsageError, match="calibration"):
        quantize(block_model(), "w8a8")
    with pytest.raises(UsageError, match="target fidelity"):
        quantize(block_model(), "w8a8", feeds(), target_fidelity=1.5)
    with pytest.raises(UsageError, match="no per-site fallback"):
        quantize(block_model(), "w4a16", feeds(), target_fidelity=0.9)
    with pytest.raises(UsageError):
        quantize(block_model(), "w8a8", feeds(), bogus=1)
    with pytest.raises(InputError):
        quantize(block_model(), "w8a8", {"y": np.ones((2, 16), np.float32)})


@pytest.mark.slow
def test_feeds_from_text(tmp_path: Path) -> None:
    import onnx_ir as ir

    from graphopt.frontend import minilm_dir

    text = """<ir_version: 10, opset_import: ["" : 18]>
    g (int64[N, S] input_ids, int64[N, S] attention_mask) => (int64[N, S] y) { y = Add(input_ids, attention_mask) }"""
    model = ir.from_onnx_text(text)
    path = tmp_path / "calib.txt"
    path.write_text("The quick brown fox.\n\nJumps over the lazy dog.\n")
    built = feeds_from_text(model, path, minilm_dir(), sequence=16)
    assert set(built) == {"input_ids", "attention_mask"} and built["input_ids"].shape == (2, 16)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(InputError, match="no text"):
        feeds_from_text(model, empty, minilm_dir())


_WEIGHT_ONLY = [
    ("w4a16", "MatMulNBits"),
    ("w3a16", "DequantizeLinear"),
    ("w2a16", "DequantizeLinear"),
    ("nf4", "Gather"),  # codes index the NF4 codebook
    ("mixed:3", "DequantizeLinear"),
    ("lowrank-q:3,8", "DequantizeLinear"),
    ("ternary", "DequantizeLinear"),
    ("ternary:median", "DequantizeLinear"),
    ("fp16", "Cast"),
    ("bf16", "Cast"),
    ("fp8", "DequantizeLinear"),
]


@pytest.mark.parametrize(("scheme", "marker_op"), _WEIGHT_ONLY)
def test_weight_only_and_float_schemes_run_in_onnxruntime(scheme: str, marker_op: str) -> None:
    from graphopt.quantize import _outputs

    model = block_model(k=64, n=128)
    data = feeds(n=32, k=64)
    result = quantize(model, scheme, data)
    ops = {n.op_type for n in result.model.graph}
    assert marker_op in ops, (scheme, sorted(ops))
    reference = _outputs(model, data, 8)
    score = fidelity(reference, _outputs(result.model, data, 8))
    # Coarse floors: 2-bit and ternary weights are lossy by design; the rest stay close.
    floor = {"w2a16": 0.5, "ternary": 0.5, "ternary:median": 0.5, "mixed:3": 0.9, "lowrank-q:3,8": 0.9}
    assert score >= floor.get(scheme, 0.97), (scheme, score)
    record = json.loads(result.model.metadata_props[QUANTIZATION_KEY])
    assert record["scheme"] == scheme
    assert record["options"]["calib_path"] == "<in-memory calibration feeds>"


def test_weight_method_auto_uses_gptq_only_with_calibration() -> None:
    with_data = scheme_recipe("w4a16", QuantizeOptions(calib_path="c.npz"))
    without = scheme_recipe("w4a16")
    assert with_data.steps[1].settings["method"] == "gptq" and with_data.steps[1].settings["calibration"] == "c.npz"
    assert without.steps[1].settings["method"] == "rtn" and "calibration" not in without.steps[1].settings
    assert [s.pass_name for s in without.steps] == ["fold-constants", "quantize-weights", "lower-matmulnbits"]
    mixed = scheme_recipe("mixed:2.5")
    assert mixed.steps[1].pass_name == "quantize-mixed" and mixed.steps[1].settings["average_bits"] == 2.5
    lowrank = scheme_recipe("lowrank-q:4,16")
    assert lowrank.steps[1].settings["bits"] == 4 and lowrank.steps[1].settings["rank"] == 16


@pytest.mark.parametrize(
    ("scheme", "message"),
    [
        ("mixed", "needs arguments"),
        ("mixed:x", "must be a number"),
        ("mixed:12", "2 <= B <= 8"),
        ("lowrank-q:3", "lowrank-q:B,R"),
        ("w4a16:3", "takes no arguments"),
        ("ternary:mean", "absmean or median"),
    ],
)
def test_scheme_argument_errors(scheme: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        scheme_recipe(scheme)


def test_w8a8_residual_option_reaches_the_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "residual" not in scheme_recipe("w8a8", QuantizeOptions()).steps[-1].settings
    assert scheme_recipe("w8a8", QuantizeOptions(residual=True)).steps[-1].settings["residual"] is True
    plain = quantize(stream_model(), "w8a8", stream_feeds())
    result = quantize(stream_model(), "w8a8", stream_feeds(), residual=True)
    assert op_types(plain.model).count("QuantizeLinear") == 2
    assert op_types(result.model).count("QuantizeLinear") == 7
    assert json.loads(result.model.metadata_props[QUANTIZATION_KEY])["options"]["residual"] is True
    model = tmp_path / "m.onnx"
    ir.save(stream_model(), model)
    assert main(["quantize", str(model), "--dry-run", "--calib", "c.npz", "--residual", "--json"]) == 0
    assert '"residual": true' in capsys.readouterr().out
    out = tmp_path / "q.onnx"
    assert main(["quantize", str(model), "-o", str(out), "--scheme", "w4a16", "--residual"]) == 2
    assert "--residual applies to the w8a8 scheme" in capsys.readouterr().err and not out.exists()
