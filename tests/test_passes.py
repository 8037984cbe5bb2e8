from __future__ import annotations

import dataclasses

import onnx_ir as ir
import pytest

from graphopt.errors import UsageError
from graphopt.passes import (
    GraphoptPass,
    PassSettings,
    TimingHook,
    available_passes,
    create_pass,
    register_pass,
    run_passes,
    setting,
)
from graphopt.provenance import PROVENANCE_KEY, read_provenance
from tests.conftest import SMALL_MLP


def test_builtin_passes_are_registered() -> None:
    names = set(available_passes())
    assert {
        "fold-constants",
        "remove-dead-code",
        "remove-no-ops",
        "simplify-shapes",
        "deduplicate",
        "fuse-standard",
        "fuse-ort",
    } <= names


def test_settings_are_validated() -> None:
    with pytest.raises(UsageError, match="size limits must be positive"):
        create_pass("fold-constants", {"input_size_limit": 0})
    with pytest.raises(UsageError, match="known settings: shape_inference"):
        create_pass("fold-constants", {"no_such_setting": 1})
    with pytest.raises(UsageError, match="unknown pass 'nope'"):
        create_pass("nope")


def test_settings_describe_search_space() -> None:
    infos = {i.name: i for i in create_pass("fold-constants").Settings.describe()}
    assert infos["shape_inference"].default is True
    assert "shape inference" in infos["shape_inference"].description


def test_mutable_setting_default_rejected() -> None:
    with pytest.raises(TypeError):
        setting([1], "list default")


def test_provenance_recorded_only_when_modified() -> None:
    model = ir.from_onnx_text(SMALL_MLP)
    assert create_pass("remove-no-ops")(model).modified
    records = read_provenance(model)
    assert [r["pass"] for r in records] == ["remove-no-ops"]
    assert not create_pass("remove-no-ops")(model).modified
    assert len(read_provenance(model)) == 1
    assert PROVENANCE_KEY in model.metadata_props


@dataclasses.dataclass(frozen=True)
class _ScaleSettings(PassSettings):
    factor: float = setting(2.0, "scale", search=(0.5, 2.0))


@register_pass
class _TouchPass(GraphoptPass[_ScaleSettings]):
    """Test pass: stores its setting in metadata."""

    name = "test-touch"
    Settings = _ScaleSettings

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        model.metadata_props["touched"] = str(self.settings.factor)
        return ir.passes.PassResult(model, True)


def test_run_passes_with_hooks_and_settings() -> None:
    model = ir.from_onnx_text(SMALL_MLP)
    hook = TimingHook()
    seen: list[str] = []
    assert run_passes(model, [create_pass("test-touch", {"factor": 3.0})], hooks=[hook], progress=seen.append)
    assert model.metadata_props["touched"] == "3.0"
    assert seen == ["test-touch"]
    assert hook.records[0]["pass"] == "test-touch" and hook.records[0]["modified"]
    assert read_provenance(model)[-1]["settings"] == {"factor": 3.0}
    assert _ScaleSettings.describe()[0].search == (0.5, 2.0)


def test_duplicate_pass_name_rejected() -> None:
    with pytest.raises(TypeError, match="already taken"):

        @register_pass
        class _Other(GraphoptPass[PassSettings]):
            name = "test-touch"

            def call(self, model: ir.Model) -> ir.passes.PassResult:
                return ir.passes.PassResult(model, False)


@register_pass
class _BreakOutputsPass(GraphoptPass[PassSettings]):
    """Test pass that wrongly claims to preserve outputs: ``Relu(x) -> Sigmoid(x)``."""

    name = "test-break-outputs"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for node in model.graph:
            if node.op_type == "Relu":
                node.op_type = "Sigmoid"
        return ir.passes.PassResult(model, True)


def test_list_settings_from_recipes_become_tuples() -> None:
    """JSON / YAML recipes give lists; every tuple-valued setting is stored as a tuple (settings stay hashable)."""
    settings = create_pass("quantize-mixed", {"choices": [2, 4], "exclude": ["lm_head"]}).settings
    assert settings.choices == (2, 4) and settings.exclude == ("lm_head",)
    assert create_pass("quantize-float", {"keep_fp32": ["Softmax"]}).settings.keep_fp32 == ("Softmax",)
    hash(settings)
