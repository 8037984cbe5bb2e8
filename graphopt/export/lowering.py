"""Lowering a reference graph for one target, step by step, with a record of each step.

The steps reuse what exists: the ``lower-tensorrt`` pass (:mod:`graphopt.export.tensorrt`), the
``lower-matmulnbits`` pass (weight-only QDQ -> onnxruntime's
``MatMulNBits``), the registered float16 pass (:data:`graphopt.export.targets.FP16_PASS`),
``onnx.version_converter`` for opset conversion, and onnxruntime itself for its offline graph
optimisation (``SessionOptions.optimized_model_filepath``) and the ``.ort`` format
(``session.save_model_format = ORT``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import onnx_ir as ir

from graphopt._io import EXTERNAL_DATA_THRESHOLD, model_bytes, save_model
from graphopt.errors import InputError, UnsupportedError, UsageError, one_line
from graphopt.export.targets import FP16_PASS, FP16_SETTINGS, TargetSpec
from graphopt.passes import create_pass, get_pass_class

__all__ = ["LoweredModel", "LoweringStep", "lower_model"]

logger = logging.getLogger(__name__)

_LEVELS = ("disabled", "basic", "extended", "all")


@dataclasses.dataclass(frozen=True)
class LoweringStep:
    """One lowering step: whether it changed the graph and what it did (or why it did not run)."""

    step: str
    applied: bool
    detail: str
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class LoweredModel:
    """The lowered graph (``model``), the files that hold it in ``work_dir`` (model first, then
    its external data) and the steps taken."""

    model: ir.Model
    files: tuple[Path, ...]
    steps: tuple[LoweringStep, ...]

    @property
    def path(self) -> Path:
        return self.files[0]


def lower_model(
    model: ir.Model,
    spec: TargetSpec,
    work_dir: Path,
    *,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
) -> LoweredModel:
    """Lower a clone of ``model`` for ``spec`` and write it into ``work_dir`` as ``spec.model_file``.

    ONNX weights go to ``model.onnx.data`` when they total at least ``external_data_threshold`` bytes.
    Raises :class:`UnsupportedError` when a step cannot lower this graph (e.g. opset conversion).
    """
    if external_data_threshold < 0:
        raise UsageError("the external data threshold must not be negative")
    work_dir.mkdir(parents=True, exist_ok=True)
    model = model.clone()
    steps: list[LoweringStep] = []
    if spec.tensorrt:
        steps.append(_tensorrt(model))
    if spec.matmulnbits:
        steps.append(_run_pass(model, "lower-matmulnbits", {}))
    if spec.float16:
        steps.append(_float16(model))
    if spec.opset is not None:
        model, step = _convert_opset(model, spec.opset)
        steps.append(step)
    if spec.ort_optimization is not None:
        model, step = _ort_optimize(model, spec.ort_optimization, work_dir)
        steps.append(step)
    onnx_path = work_dir / "model.onnx"
    external = model_bytes(model) >= external_data_threshold
    save_model(model, onnx_path, external_data=external)
    files = [onnx_path] + ([work_dir / "model.onnx.data"] if external else [])
    if spec.ort_format:
        ort_path = work_dir / spec.model_file
        _save_ort_format(onnx_path, ort_path)
        size = ort_path.stat().st_size
        steps.append(LoweringStep("ort-format", True, f"saved as the .ort flatbuffer ({size} bytes)"))
        for path in files:
            path.unlink()
        files = [ort_path]
    return LoweredModel(model, tuple(files), tuple(steps))


def _run_pass(model: ir.Model, name: str, settings: dict[str, Any]) -> LoweringStep:
    before = _histogram(model)
    result = create_pass(name, settings)(model)
    after = _histogram(model)
    changed = {op: after[op] - before[op] for op in sorted(set(before) | set(after)) if after[op] != before[op]}
    detail = f"op count changes: {changed}" if result.modified else "nothing to lower"
    return LoweringStep(name, bool(result.modified), detail, dict(settings))


def _tensorrt(model: ir.Model) -> LoweringStep:
    from graphopt.export.tensorrt import LowerTensorrtPass

    lower = LowerTensorrtPass()
    result = lower(model)
    detail = "; ".join(f"{count} {what}" for what, count in sorted(lower.report.items())) or "nothing to lower"
    return LoweringStep(lower.name, bool(result.modified), detail, lower.settings.to_dict())


def _float16(model: ir.Model) -> LoweringStep:
    try:
        get_pass_class(FP16_PASS)
    except UsageError:
        logger.warning("export: pass %r is not registered; the graph stays float32", FP16_PASS)
        return LoweringStep(FP16_PASS, False, f"pass {FP16_PASS!r} is not available in this graphopt; float32 kept")
    return _run_pass(model, FP16_PASS, dict(FP16_SETTINGS))


def _convert_opset(model: ir.Model, opset: int) -> tuple[ir.Model, LoweringStep]:
    import onnx.version_converter

    current = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    if current == opset:
        return model, LoweringStep("convert-opset", False, f"the model already imports opset {opset}", {"opset": opset})
    try:
        converted = onnx.version_converter.convert_version(ir.to_proto(model), opset)
        # The converter can leave attributes the target opset does not know (e.g. ReduceL2's
        # noop_with_empty_axes below opset 18): check its result against the target's schemas.
        onnx.checker.check_model(converted)
    except Exception as exc:  # the converter and checker raise plain RuntimeError/ValueError/ValidationError
        raise UnsupportedError(f"cannot convert the model from opset {current} to {opset}: {one_line(exc)}") from exc
    result = ir.from_proto(converted)
    result.metadata_props.update(model.metadata_props)
    return result, LoweringStep("convert-opset", True, f"opset {current} -> {opset}", {"opset": opset})


def _ort_optimize(model: ir.Model, level: str, work_dir: Path) -> tuple[ir.Model, LoweringStep]:
    """Run onnxruntime's offline optimisation at ``level`` on CPU and load the graph it saves."""
    import onnxruntime

    if level not in _LEVELS:
        raise UsageError(f"unknown onnxruntime optimisation level {level!r}")
    source = work_dir / "pre-ort.onnx"
    save_model(model, source)
    target = work_dir / "ort-optimized.onnx"
    options = _session_options(level)
    options.optimized_model_filepath = str(target)
    if model_bytes(model) >= EXTERNAL_DATA_THRESHOLD:
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", "ort-optimized.onnx.data"
        )
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        _create_session(onnxruntime, source, options)
    except (InputError, UnsupportedError) as exc:
        logger.warning("export: onnxruntime's offline optimisation skipped: %s", exc)
        return model, LoweringStep("ort-optimize", False, f"skipped: {exc}", {"level": level})
    nodes_before = sum(1 for _ in model.graph)
    optimized = ir.load(target)
    ir.external_data.load_to_model(optimized)
    optimized.metadata_props.update(model.metadata_props)
    nodes_after = sum(1 for _ in optimized.graph)
    detail = f"onnxruntime {onnxruntime.__version__} {level} optimisation saved: {nodes_before} -> {nodes_after} nodes"
    return optimized, LoweringStep("ort-optimize", True, detail, {"level": level})


def _save_ort_format(source: Path, target: Path) -> None:
    import onnxruntime

    options = _session_options("disabled")  # already optimised; save the graph as it is
    options.optimized_model_filepath = str(target)
    options.add_session_config_entry("session.save_model_format", "ORT")
    _create_session(onnxruntime, source, options)


def _session_options(level: str) -> Any:
    import onnxruntime

    levels = {
        "disabled": onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = levels[level]
    options.log_severity_level = 3
    return options


def _create_session(onnxruntime: Any, source: Path, options: Any) -> None:
    try:
        onnxruntime.InferenceSession(str(source), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        message = one_line(exc)
        if "NOT_IMPLEMENTED" in message or "Could not find an implementation" in message:
            raise UnsupportedError(f"onnxruntime cannot load the lowered model on CPU: {message}") from exc
        raise InputError(f"onnxruntime rejected the lowered model: {message}") from exc


def _histogram(model: ir.Model) -> Counter[str]:
    return Counter(n.op_type for n in model.graph.all_nodes())
