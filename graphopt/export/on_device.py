"""Checks that need the target's own execution provider: is it usable here, and where do the nodes run.

GPU targets are checked structurally everywhere (:mod:`graphopt.export.compatibility`). Where this
machine has the target's provider (``onnxruntime-gpu`` with a working GPU), the exporter also asks
onnxruntime itself: :func:`provider_problem` says whether a session really runs on the provider (an
unusable CUDA/TensorRT install makes onnxruntime fall back to CPU silently), and
:func:`node_placement` reads, from onnxruntime's profile of one run, which provider executed each
node of the graph onnxruntime actually ran (after its own optimisations and fusions).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from graphopt.errors import InputError, one_line
from graphopt.runtime import available_providers

__all__ = ["node_placement", "provider_problem"]

CPU = "CPUExecutionProvider"


def provider_problem(provider: str) -> str | None:
    """None when onnxruntime runs a session on ``provider`` here, else why not (one line)."""
    import onnx
    import onnxruntime as ort

    if provider == CPU:
        return None
    if provider not in available_providers():
        return f"{provider} is not in this onnxruntime build ({ort.__version__}: {', '.join(available_providers())})"
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 2])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 2])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Add", ["x", "x"], ["y"])], "probe", [x], [y])
    probe = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(probe.SerializeToString(), sess_options=options, providers=[provider, CPU])
    except Exception as exc:  # onnxruntime raises its own types when a provider library fails to load
        return f"{provider} failed to start: {one_line(exc)}"
    if session.get_providers()[0] != provider:
        return f"{provider} could not be loaded (missing libraries or no device); onnxruntime fell back to CPU"
    return None


def node_placement(model: str | os.PathLike[str], provider: str, feeds: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Which provider ran each node of ``model`` in one onnxruntime run with ``[provider, CPU]``.

    The session is built as deployed (all optimisations), so the nodes are those of onnxruntime's
    optimised graph (fused kernels included), not the ONNX file's. Returns ``{"provider", "counts":
    {provider: nodes}, "elsewhere": [{"node", "op", "provider"}...]}`` where ``elsewhere`` lists the
    nodes that did not run on ``provider``. Raises :class:`InputError` if onnxruntime rejects the
    model or the feeds.
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="graphopt-placement-") as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        try:
            providers = [provider] if provider == CPU else [provider, CPU]
            session = ort.InferenceSession(os.fspath(model), sess_options=options, providers=providers)
            session.run(None, dict(feeds))
        except Exception as exc:  # onnxruntime raises its own types
            raise InputError(f"onnxruntime could not run the model on {provider}: {one_line(exc)}") from exc
        events = json.loads(Path(session.end_profiling()).read_text())
    ran: dict[str, tuple[str, str]] = {}
    for event in events:
        args = event.get("args") or {}
        if event.get("cat") == "Node" and "provider" in args and event.get("name", "").endswith("_kernel_time"):
            ran[event["name"][: -len("_kernel_time")]] = (args.get("op_name", "?"), args["provider"])
    counts = Counter(where for _, where in ran.values())
    elsewhere = [{"node": name, "op": op, "provider": where}
                 for name, (op, where) in sorted(ran.items()) if where != provider]
    return {"provider": provider, "nodes": len(ran), "counts": dict(sorted(counts.items())), "elsewhere": elsewhere}
