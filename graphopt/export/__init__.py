"""Export: lower a graph for a runtime target, report per-node compatibility, write a deployable bundle.

Targets (:mod:`graphopt.export.targets`): ``ort-cpu``, ``ort-cuda``, ``ort-tensorrt``, ``ort-format``
and ``onnx-opsetN``. :func:`export_model` runs the whole chain; the modules below can be used alone.
"""

from __future__ import annotations

from graphopt.export.compatibility import CompatibilityReport, NodeCompatibility, check_compatibility
from graphopt.export.exporter import ExportResult, export_model
from graphopt.export.lowering import LoweredModel, LoweringStep, lower_model
from graphopt.export.targets import TARGET_NAMES, TargetSpec, parse_target

__all__ = [
    "TARGET_NAMES",
    "CompatibilityReport",
    "ExportResult",
    "LoweredModel",
    "LoweringStep",
    "NodeCompatibility",
    "TargetSpec",
    "check_compatibility",
    "export_model",
    "lower_model",
    "parse_target",
]
