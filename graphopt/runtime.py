"""onnxruntime sessions: provider detection and session creation from models or files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import onnx_ir as ir

from graphopt._io import EXTERNAL_DATA_THRESHOLD, model_bytes, save_model
from graphopt.errors import InputError, UnsupportedError, UsageError, one_line

__all__ = ["available_providers", "make_session", "resolve_providers"]

_PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise UsageError("onnxruntime is not installed: pip install 'graphopt[cpu]' (or 'graphopt[gpu]')") from exc
    return onnxruntime


def available_providers() -> list[str]:
    return list(_ort().get_available_providers())


def resolve_providers(provider: str | None) -> list[str]:
    """Map a user's provider name (``cpu``, ``cuda``, full names) to a provider list with CPU fallback."""
    available = available_providers()
    if provider is None:
        return ["CPUExecutionProvider"]
    name = _PROVIDER_ALIASES.get(provider.lower(), provider)
    if name not in available:
        raise UsageError(f"provider {provider!r} is not available here; available: {', '.join(available)}")
    return [name] if name == "CPUExecutionProvider" else [name, "CPUExecutionProvider"]


def make_session(
    model: ir.Model | str | os.PathLike[str],
    *,
    provider: str | None = None,
    threads: int | None = None,
    optimization: str = "all",
) -> Any:
    """An ``InferenceSession`` for an in-memory model or a file.

    ``optimization`` is ``"all"``, ``"extended"``, ``"basic"`` or ``"disabled"``. Models above
    the protobuf limit are written to a temporary folder first.
    """
    ort = _ort()
    options = ort.SessionOptions()
    levels = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }
    options.graph_optimization_level = levels[optimization]
    options.log_severity_level = 3
    if threads is not None:
        if threads < 1:
            raise UsageError("threads must be at least 1")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    providers = resolve_providers(provider)
    if isinstance(model, ir.Model):
        if model_bytes(model) >= EXTERNAL_DATA_THRESHOLD or _has_external_tensors(model):
            # onnxruntime cannot resolve external data for a model handed over as bytes.
            with tempfile.TemporaryDirectory(prefix="graphopt-session-") as tmp:
                path = save_model(model, Path(tmp) / "model.onnx")
                return _create(ort, str(path), options, providers)
        return _create(ort, ir.to_proto(model).SerializeToString(), options, providers)
    return _create(ort, os.fspath(model), options, providers)


def _has_external_tensors(model: ir.Model) -> bool:
    return any(
        isinstance(value.const_value, ir.ExternalTensor) for value in model.graph.initializers.values()
    )


def _create(ort: Any, source: Any, options: Any, providers: list[str]) -> Any:
    try:
        return ort.InferenceSession(source, sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
        message = one_line(exc)
        if "NOT_IMPLEMENTED" in message or "Could not find an implementation" in message:
            raise UnsupportedError(f"onnxruntime cannot run this model: {message}") from exc
        raise InputError(f"onnxruntime rejected the model: {message}") from exc
