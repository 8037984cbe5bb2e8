"""lora, nola, bitdelta and merge-adapters: identity cases exact in onnxruntime, the algebra against numpy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.calibration import iter_activations
from graphopt.errors import UsageError
from graphopt.feeds import input_specs, synthesize_feeds
from graphopt.passes import create_pass
from graphopt.rewrites._markers import ADAPTER_PREFIX, INSERTED_BY_KEY, is_adapter, is_trainable
from graphopt.rewrites.adapters import ADAPTER_KEY, weight_matrix
from graphopt.verify import verify_models
from tests.conftest import op_types
from tests.rewrites.test_attention import ATTENTION

# The attention layer of test_attention followed by an MLP (up 8 -> 16 as Gemm with transB, GELU, down 16 -> 8).
_rng = np.random.default_rng(7)
_UP = ", ".join(f"{v:.4f}" for v in _rng.normal(0, 0.5, 16 * 8))
_DOWN = ", ".join(f"{v:.4f}" for v in _rng.normal(0, 0.5, 16 * 8))
LAYER = ATTENTION.replace("float[N, S, 8] y)", "float[N, S, 8] z)").replace(
    "float scale = {2.0}>", f"float scale = {{2.0}}, float[16, 8] wup = {{{_UP}}}, float[16, 8] wdown = {{{_DOWN}}}, "
    "int64[2] flat = {-1, 8}>"
).replace("  y = Add(x, o)\n}", """  y = Add(x, o)
  f = Reshape(y, flat)
  h = Gemm <transB = 1> (f, wup)
  g = Gelu(h)
  d = MatMul(g, wdown)
  shp = Shape(y)
  d3 = Reshape(d, shp)
  z = Add(y, d3)
}""").replace('opset_import: ["" : 18]', 'opset_import: ["" : 20]')


def _feeds(model: ir.Model, seed: int = 0) -> dict[str, np.ndarray]:
    return synthesize_feeds(input_specs(model), shapes={"x": (3, 5, 8), "mask": (3, 1, 1, 5)}, seed=seed)


def _adapt(name: str, **settings: object) -> tuple[ir.Model, ir.Model]:
    original, model = ir.from_onnx_text(LAYER), ir.from_onnx_text(LAYER)
    assert create_pass(name, settings)(model).modified
    return original, model


def _report(a: ir.Model, b: ir.Model, feeds: dict[str, np.ndarray], atol: float = 0.0) -> object:
    return verify_models(a, b, feeds, atol=atol, rtol=0.0, signature=a)


def _adapter_adds(model: ir.Model) -> list[ir.Node]:
    return [n for n in model.graph if ADAPTER_KEY in n.metadata_props]


def _delta_check(model: ir.Model, feeds: dict[str, np.ndarray], delta_of: object) -> None:
    """Each adapted projection's output equals x·W + delta_of(prefix, x) in numpy."""
    for add in _adapter_adds(model):
        info = json.loads(add.metadata_props[ADAPTER_KEY])
        base = next(n for n in model.graph if n.outputs[0] is add.inputs[0])
        names = [base.inputs[0].name, add.outputs[0].name]
        got = next(iter(iter_activations(model, feeds, names, batch_size=None)))
        x = got[names[0]]
        expected = x @ weight_matrix(base) + delta_of(info, x)  # type: ignore[operator]
        np.testing.assert_allclose(got[names[1]], expected, atol=2e-5, rtol=1e-5)


def _param(model: ir.Model, name: str) -> np.ndarray:
    return model.graph.initializers[name].const_value.numpy()


@pytest.mark.parametrize(
    ("targets", "expected"),
    [(("q", "v"), ["0.q", "0.v"]), (("o", "mlp"), ["0.o", "0.up", "0.down"]),
     (("all",), None)],
)
def test_lora_zero_up_projection_is_exact(targets, expected):
    original, model = ir.from_onnx_text(LAYER), ir.from_onnx_text(LAYER)
    assert create_pass("lora", {"targets": targets, "rank": 2})(model).modified
    adds = _adapter_adds(model)
    if expected is not None:
        assert sorted(json.loads(a.metadata_props[ADAPTER_KEY])["prefix"] for a in adds) == sorted(
            f"{ADAPTER_PREFIX}{p}." for p in expected)
    else:  # every projection: q, k, v, o, up, down
        assert len(adds) == 6
    for add in adds:
        prefix = json.loads(add.metadata_props[ADAPTER_KEY])["prefix"]
        assert _param(model, prefix + "A").shape[1] == 2 and not _param(model, prefix + "B").any()
    inserted = [n for n in model.graph if n.name.startswith(ADAPTER_PREFIX)]
    assert inserted and all(n.metadata_props.get(INSERTED_BY_KEY) == "lora" for n in inserted)
    report = _report(original, model, _feeds(original))
    assert report.passed and all(o.max_abs == 0.0 for o in report.outputs)


def test_lora_matches_numpy_and_merges():
    original, model = _adapt("lora", targets=("q", "v", "o", "mlp"), rank=3, alpha=6.0, b_std=0.2, seed=1)
    feeds = _feeds(original, seed=2)

    def delta(info, x):
        p = info["prefix"]
        return 2.0 * (x @ _param(model, p + "A")) @ _param(model, p + "B")  # alpha / rank = 2

    _delta_check(model, feeds, delta)
    assert not _report(original, model, feeds).passed  # a real change
    merged = model.clone()
    assert create_pass("merge-adapters")(merged).modified
    assert op_types(merged) == op_types(original)
    assert not any(is_adapter(n) for n in merged.graph.initializers)
    report = _report(model, merged, feeds, atol=1e-5)
    assert report.passed, report
    # The Gemm (transB) weight was merged in its stored layout.
    up = next(n for n in merged.graph if n.op_type == "Gemm")
    assert up.inputs[1].const_value.numpy().shape == (16, 8)


def test_nola_identity_exact_then_numpy_and_merge():
    original, model = _adapt("nola", targets=("q", "mlp"), rank=2, bases=5)
    feeds = _feeds(original)
    report = _report(original, model, feeds)
    assert report.passed and all(o.max_abs == 0.0 for o in report.outputs)
    trainable = sorted(n for n in model.graph.initializers if is_trainable(n))
    assert trainable and all(n.rsplit(".", 1)[1] in ("coef_A", "coef_B") for n in trainable)
    assert _param(model, f"{ADAPTER_PREFIX}0.q.basis_A").shape == (5, 8 * 2)

    original, model = _adapt("nola", targets=("q", "mlp"), rank=2, bases=5, b_std=0.5, alpha=2.0)

    def delta(info, x):
        p = info["prefix"]
        a = (_param(model, p + "coef_A") @ _param(model, p + "basis_A")).reshape(x.shape[-1], 2)
        b = (_param(model, p + "coef_B") @ _param(model, p + "basis_B")).reshape(2, -1)
        return (x @ a) @ b  # alpha / rank = 1

    _delta_check(model, feeds, delta)
    merged = model.clone()
    assert create_pass("merge-adapters")(merged).modified
    assert _report(model, merged, feeds, atol=1e-5).passed


def test_bitdelta_from_a_finetuned_model(tmp_path: Path):
    original = ir.from_onnx_text(LAYER)
    tuned = ir.from_onnx_text(LAYER)
    rng = np.random.default_rng(3)
    for name in ("wq", "wdown"):
        weight = tuned.graph.initializers[name]
        array = weight.const_value.numpy()
        weight.const_value = ir.tensor((array + rng.normal(0, 0.05, array.shape)).astype(np.float32), name=name)
    ir.save(tuned, tmp_path / "tuned.onnx")
    model = ir.from_onnx_text(LAYER)
    assert create_pass("bitdelta", {"targets": ("q", "mlp"), "finetuned": str(tmp_path / "tuned.onnx")})(model).modified
    sign, scale = _param(model, f"{ADAPTER_PREFIX}0.q.sign"), _param(model, f"{ADAPTER_PREFIX}0.q.scale")
    diff = tuned.graph.initializers["wq"].const_value.numpy() - original.graph.initializers["wq"].const_value.numpy()
    assert sign.dtype == np.uint8 and sign.shape == (8, 1)  # one bit per weight
    np.testing.assert_array_equal(np.unpackbits(sign, axis=-1, bitorder="little"), diff >= 0)
    np.testing.assert_allclose(scale, np.abs(diff).mean(), rtol=1e-6)
    assert not is_trainable(f"{ADAPTER_PREFIX}0.q.sign") and is_trainable(f"{ADAPTER_PREFIX}0.q.scale")
    # wup did not change: its delta is zero, so the scale is 0
    assert _param(model, f"{ADAPTER_PREFIX}0.up.scale") == 0
    feeds = _feeds(original)

    def delta(info, x):
        p = info["prefix"]
        bits = np.unpackbits(_param(model, p + "sign"), axis=-1, count=info["out"], bitorder="little")
        return _param(model, p + "scale") * (x @ (2.0 * bits - 1.0))

    _delta_check(model, feeds, delta)
    merged = model.clone()
    assert create_pass("merge-adapters")(merged).modified
    assert _report(model, merged, feeds, atol=1e-5).passed
    # The 1-bit model approximates the fine-tuned one better than the base model does.
    to_tuned = _report(tuned, model, feeds).outputs[0].max_abs
    base_to_tuned = _report(tuned, original, feeds).outputs[0].max_abs
    assert to_tuned < base_to_tuned


def test_bitdelta_without_finetuned_model_is_exact():
    original, model = _adapt("bitdelta", targets=("o",))
    report = _report(original, model, _feeds(original))
    assert report.passed and all(o.max_abs == 0.0 for o in report.outputs)


def test_bitdelta_with_a_mismatched_model_is_a_usage_error(tmp_path: Path):
    ir.save(ir.from_onnx_text(ATTENTION), tmp_path / "other.onnx")
    model = ir.from_onnx_text(LAYER)
    with pytest.raises(UsageError, match="fine-tuned model has no weight"):
        create_pass("bitdelta", {"targets": ("mlp",), "finetuned": str(tmp_path / "other.onnx")})(model)


def test_pattern_selects_by_weight_name_and_adapters_are_not_stacked():
    _, model = _adapt("lora", targets=(), pattern="^w(up|down)$")
    bases = [add.inputs[0].producer() for add in _adapter_adds(model)]
    assert sorted(n.inputs[1].name for n in bases) == ["wdown", "wup"]
    assert not create_pass("lora", {"targets": (), "pattern": "^w(up|down)$", "seed": 1})(model).modified


def test_merge_without_adapters_does_nothing():
    model = ir.from_onnx_text(LAYER)
    assert not create_pass("merge-adapters")(model).modified


@pytest.mark.parametrize(
    ("name", "settings", "message"),
    [("lora", {"targets": ("x",)}, "unknown adapter target"), ("lora", {"rank": 0}, "rank"),
     ("lora", {"targets": ()}, "targets or a pattern"), ("nola", {"bases": 0}, "bases"),
     ("lora", {"pattern": "("}, "bad pattern")],
)
def test_bad_adapter_settings(name, settings, message):
    with pytest.raises(UsageError, match=message):
        create_pass(name, settings)


def test_bitdelta_packs_an_odd_output_width(tmp_path: Path):
    values = ", ".join(f"{v:.3f}" for v in np.random.default_rng(1).normal(size=20))
    text = f"""<ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 4] x) => (float[N, 5] y) <float[4, 5] w = {{{values}}}> {{ y = MatMul(x, w) }}"""
    tuned = ir.from_onnx_text(text)
    base = tuned.graph.initializers["w"].const_value.numpy()
    delta = np.random.default_rng(2).normal(0, 0.1, base.shape).astype(np.float32)
    tuned.graph.initializers["w"].const_value = ir.tensor(base + delta, name="w")
    ir.save(tuned, tmp_path / "tuned.onnx")
    model = ir.from_onnx_text(text)
    assert create_pass("bitdelta", {"targets": ("all",), "finetuned": str(tmp_path / "tuned.onnx")})(model).modified
    assert "Slice" in op_types(model)
    x = np.random.default_rng(3).normal(size=(6, 4)).astype(np.float32)
    expected = x @ (base + np.abs(delta).mean() * np.where(delta >= 0, 1.0, -1.0))
    (got,) = iter_activations(model, {"x": x}, ["y"], batch_size=None)
    np.testing.assert_allclose(got["y"], expected, atol=1e-5)
    assert create_pass("merge-adapters")(model).modified and op_types(model) == ["MatMul"]
    np.testing.assert_allclose(model.graph.initializers["w"].const_value.numpy(),
                               base + np.abs(delta).mean() * np.where(delta >= 0, 1.0, -1.0), atol=1e-6)
