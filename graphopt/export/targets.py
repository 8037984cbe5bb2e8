"""Deployment targets: what each runtime runs natively and how a graph is lowered for it.

A :class:`TargetSpec` is what a runtime supports, kept apart from what the user asked for
(a quantization spec, a recipe): the reference graph is lowered per target by
:mod:`graphopt.export.lowering` and checked by :mod:`graphopt.export.compatibility`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from graphopt.errors import UsageError

__all__ = ["FP16_PASS", "FP16_SETTINGS", "TARGET_NAMES", "TargetSpec", "max_opset", "parse_target"]

FP16_PASS = "quantize-float"
"""Registered name of the float16 conversion pass (float32 kept for sensitive ops, graph inputs
and outputs float32) that the CUDA lowering runs; :func:`graphopt.export.lowering.lower_model`
records the step as not applied when no pass is registered under this name."""
FP16_SETTINGS: dict[str, object] = {"dtype": "float16", "compute": True}

TARGET_NAMES = ("ort-cpu", "ort-cuda", "ort-tensorrt", "ort-format", "onnx-opsetN")
MIN_OPSET = 7  # the oldest opset onnx.version_converter and onnxruntime both still handle


@dataclasses.dataclass(frozen=True)
class TargetSpec:
    """One runtime target.

    ``provider`` is the onnxruntime execution provider that should run the graph (``None`` for a
    plain ONNX file meant for any runtime); ``fallbacks`` the providers onnxruntime assigns
    unsupported nodes to, in order. ``check`` says how compatibility is decided: ``"probe"``
    (onnxruntime's CPU kernel registry, asked by creating sessions here) or ``"structural"``
    (documented support tables, :mod:`graphopt.export._tables`). The lowering fields are applied
    in this order: ``tensorrt`` (QDQ placement and symmetric types for TensorRT,
    :mod:`graphopt.export.tensorrt`), ``matmulnbits`` (weight-only QDQ -> ``MatMulNBits``), ``float16``, ``opset``
    (``onnx.version_converter``), ``ort_optimization`` (onnxruntime's offline graph optimisation,
    saved), ``ort_format`` (the ``.ort`` flatbuffer). ``provider_options`` are the options the
    bundle's example passes to ``provider`` (``(key, value)`` pairs).
    """

    name: str
    description: str
    provider: str | None
    fallbacks: tuple[str, ...]
    check: str
    tensorrt: bool = False
    matmulnbits: bool = False
    float16: bool = False
    opset: int | None = None
    ort_optimization: str | None = None
    ort_format: bool = False
    atol: float = 1e-4
    rtol: float = 1e-3
    provider_options: tuple[tuple[str, str], ...] = ()

    @property
    def model_file(self) -> str:
        """File name of the model inside the bundle."""
        return "model.ort" if self.ort_format else "model.onnx"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["fallbacks"] = list(self.fallbacks)
        data["provider_options"] = {self.provider: dict(self.provider_options)} if self.provider_options else {}
        data["model_file"] = self.model_file
        return data


_CPU = "CPUExecutionProvider"
_CUDA = "CUDAExecutionProvider"
_TRT = "TensorrtExecutionProvider"

_FIXED = {
    "ort-cpu": TargetSpec(
        "ort-cpu",
        "onnxruntime on CPU: weight-only QDQ lowered to MatMulNBits, extended offline optimisation saved",
        _CPU, (), "probe", matmulnbits=True, ort_optimization="extended",
    ),
    # No offline optimisation: onnxruntime saves the graph as optimised for the session's providers, and a
    # CPU session bakes its own float32 fallbacks (Casts around float16 nodes it has no kernel for) into it.
    "ort-cuda": TargetSpec(
        "ort-cuda",
        "onnxruntime CUDA: MatMulNBits, float16 compute with float32 kept for sensitive ops",
        _CUDA, (_CPU,), "structural", matmulnbits=True, float16=True, atol=5e-2, rtol=5e-2,
    ),
    # Symmetric re-quantization of asymmetric activations changes results (by up to a quantization step of
    # the widened range), hence tolerances like CUDA's float16. TensorRT builds explicit Q/DQ networks only
    # with its INT8 flag set; the FP16 flag lets it run the layers left in float in float16.
    "ort-tensorrt": TargetSpec(
        "ort-tensorrt",
        "onnxruntime TensorRT: explicit symmetric int8 QDQ on the inputs of the ops TensorRT runs in int8, "
        "standard ONNX ops, float16 for the rest in TensorRT",
        _TRT, (_CUDA, _CPU), "structural", tensorrt=True, atol=5e-2, rtol=5e-2,
        provider_options=(("trt_int8_enable", "True"), ("trt_fp16_enable", "True")),
    ),
    "ort-format": TargetSpec(
        "ort-format",
        "onnxruntime .ort flatbuffer for mobile/edge (minimal builds), MatMulNBits, extended optimisation",
        _CPU, (), "probe", matmulnbits=True, ort_optimization="extended", ort_format=True,
    ),
}


def max_opset() -> int:
    """The newest default-domain opset the installed ``onnx`` knows."""
    import onnx.defs

    return int(onnx.defs.onnx_opset_version())


def parse_target(name: str) -> TargetSpec:
    """The :class:`TargetSpec` for ``name`` (one of :data:`TARGET_NAMES`, ``onnx-opsetN`` with a
    number); :class:`UsageError` for anything else."""
    if name in _FIXED:
        return _FIXED[name]
    match = re.fullmatch(r"onnx-opset(\d+)", name)
    if match is None:
        raise UsageError(f"unknown target {name!r}; choose one of {', '.join(TARGET_NAMES)} (e.g. onnx-opset17)")
    opset = int(match.group(1))
    newest = max_opset()
    if not MIN_OPSET <= opset <= newest:
        raise UsageError(f"target {name!r}: opset {opset} is out of range ({MIN_OPSET}..{newest})")
    return TargetSpec(
        name,
        f"plain ONNX at opset {opset} (onnx.version_converter), for any runtime",
        None, (), "probe", opset=opset,
    )
