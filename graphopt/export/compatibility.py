"""Per-node compatibility of a graph with a target: native, falls back to another provider, or unsupported.

Before a user finds out at deploy time, every node is labelled with the execution provider that
would run it and why:

* CPU (``ort-cpu``, ``ort-format``, ``onnx-opsetN``): onnxruntime's own CPU kernel registry is
  asked, by creating a session for the whole graph and, when that fails, one single-node session
  per distinct (op, input types) to find the nodes without a kernel ("probe").
* CUDA and TensorRT: the documented support tables in :mod:`graphopt.export._tables`
  ("structural check": no GPU is asked); a node the table does not cover falls back along the
  target's provider chain, ending with the CPU probe.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from graphopt.errors import one_line
from graphopt.export import _tables
from graphopt.export.targets import TargetSpec

__all__ = [
    "FALLBACK",
    "NATIVE",
    "UNKNOWN",
    "UNSUPPORTED",
    "CompatibilityReport",
    "NodeCompatibility",
    "check_compatibility",
    "cpu_kernel_status",
]

logger = logging.getLogger(__name__)

NATIVE, FALLBACK, UNSUPPORTED, UNKNOWN = "native", "fallback", "unsupported", "unknown"
_CPU, _CUDA, _TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
_PROBE_INITIALIZER_LIMIT = 1 << 20  # larger constants become graph inputs in a probe
_NEEDS_CONSTANT_AXES = {"Squeeze", "Unsqueeze"} | {
    f"Reduce{k}" for k in ("L1", "L2", "LogSum", "LogSumExp", "Max", "Mean", "Min", "Prod", "Sum", "SumSquare")
}


@dataclasses.dataclass(frozen=True)
class NodeCompatibility:
    """Where one node runs: ``status`` is native / fallback / unsupported / unknown, ``provider``
    the execution provider that would run it (``None`` when none would)."""

    node: str
    op: str
    status: str
    provider: str | None
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class CompatibilityReport:
    """Every node of a graph checked against one target."""

    target: str
    provider: str | None
    method: str
    source: str
    nodes: tuple[NodeCompatibility, ...]
    issues: tuple[str, ...] = ()

    @property
    def counts(self) -> dict[str, int]:
        counts = {NATIVE: 0, FALLBACK: 0, UNSUPPORTED: 0, UNKNOWN: 0}
        for node in self.nodes:
            counts[node.status] += 1
        return counts

    @property
    def ok(self) -> bool:
        """True when every node runs on the target's own provider and no graph-level issue exists."""
        return not self.issues and all(n.status == NATIVE for n in self.nodes)

    def problems(self) -> list[NodeCompatibility]:
        return [n for n in self.nodes if n.status != NATIVE]

    def to_dict(self) -> dict[str, Any]:
        by_op: dict[str, dict[str, Any]] = {}
        for node in self.problems():
            entry = by_op.setdefault(
                f"{node.op} -> {node.status}", {"op": node.op, "status": node.status, "provider": node.provider,
                                                "reason": node.reason, "nodes": []}
            )
            entry["nodes"].append(node.node)
        return {
            "target": self.target,
            "provider": self.provider,
            "method": self.method,
            "source": self.source,
            "ok": self.ok,
            "counts": self.counts,
            "issues": list(self.issues),
            "problems": list(by_op.values()),
            "nodes": [dataclasses.asdict(n) for n in self.nodes],
        }


def check_compatibility(model: ir.Model, spec: TargetSpec) -> CompatibilityReport:
    """Label every node of ``model`` (the graph as it will be deployed) for ``spec``."""
    nodes = list(model.graph)
    types = _value_types(model)
    cpu = cpu_kernel_status(model, types)
    if spec.provider == _CUDA:
        records = [_cuda_node(node, types, cpu) for node in nodes]
        return CompatibilityReport(spec.name, spec.provider, "structural check (no GPU asked)",
                                   _tables.CUDA_TABLE_SOURCE, tuple(records))
    if spec.provider == _TRT:
        records = [_tensorrt_node(node, types, cpu) for node in nodes]
        return CompatibilityReport(spec.name, spec.provider, "structural check (no GPU asked)",
                                   f"{_tables.TENSORRT_TABLE_SOURCE}; fallback: {_tables.CUDA_TABLE_SOURCE}",
                                   tuple(records), tuple(_tensorrt_issues(model)))
    import onnxruntime

    records = []
    for node in nodes:
        ok, reason = cpu[id(node)]
        status = NATIVE if ok else UNKNOWN if ok is None else UNSUPPORTED
        records.append(NodeCompatibility(_node_name(node), _qualified(node), status, _CPU if ok else None, reason))
    return CompatibilityReport(spec.name, spec.provider or _CPU, "probe",
                               f"onnxruntime {onnxruntime.__version__} CPU kernel registry", tuple(records))


def cpu_kernel_status(
    model: ir.Model, types: dict[str, str] | None = None
) -> dict[int, tuple[bool | None, str]]:
    """``id(node) -> (has a CPU kernel, reason)`` for every top-level node, asked of onnxruntime.

    One session for the whole graph settles it when it loads; otherwise each distinct
    (domain, op, input types) is probed in a single-node session. ``None`` means the probe could
    not decide (types unknown, subgraphs, or an error other than a missing kernel).
    """
    nodes = list(model.graph)
    whole = _try_session(ir.to_proto(model))
    if whole is None:
        return {id(n): (True, "") for n in nodes}
    logger.info("compatibility: the whole graph does not load on CPU (%s); probing node by node", whole)
    types = types if types is not None else _value_types(model)
    cache: dict[tuple[Any, ...], tuple[bool | None, str]] = {}
    result = {}
    for node in nodes:
        key = (node.domain, node.op_type, tuple(types.get(v.name or "", "?") if v else "" for v in node.inputs))
        if key not in cache:
            cache[key] = _probe_node(model, node, types)
        result[id(node)] = cache[key]
    return result


def _probe_node(model: ir.Model, node: ir.Node, types: dict[str, str]) -> tuple[bool | None, str]:
    if any(isinstance(a.value, ir.Graph) or a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
           for a in node.attributes.values()):
        return None, "has subgraphs: checked only as part of the whole graph"
    proto = ir.serde.serialize_node(node)
    inputs: list[onnx.ValueInfoProto] = []
    initializers: list[onnx.TensorProto] = []
    for value in node.inputs:
        if value is None:
            continue
        name = value.name or ""
        const = value.const_value
        if const is not None and const.nbytes <= _PROBE_INITIALIZER_LIMIT:
            initializers.append(ir.serde.serialize_tensor(const))
            initializers[-1].name = name
            continue
        elem = types.get(name)
        if elem is None:
            return None, f"input {name!r} has an unknown type"
        if any(i.name == name for i in inputs):
            continue
        inputs.append(onnx.helper.make_tensor_value_info(name, getattr(onnx.TensorProto, elem), None))
    outputs = [onnx.helper.make_empty_tensor_value_info(v.name or "") for v in node.outputs if v.name]
    graph = onnx.helper.make_graph([proto], "probe", inputs, outputs, initializer=initializers)
    probe = onnx.helper.make_model(
        graph,
        opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in model.opset_imports.items()],
        ir_version=model.ir_version,
    )
    error = _try_session(probe)
    if error is None:
        return True, ""
    if "Could not find an implementation" in error or "NOT_IMPLEMENTED" in error:
        return False, "onnxruntime has no CPU kernel for these input types"
    if "is not a registered function/op" in error:
        return False, "onnxruntime does not know this op"
    if "Type Error" in error or "invalid" in error.lower():
        return False, f"onnxruntime rejects it: {error}"
    return None, f"probe inconclusive: {error}"


def _try_session(proto: onnx.ModelProto) -> str | None:
    """None when onnxruntime builds a CPU session (no graph optimisation) for ``proto``, else the error."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        data = proto.SerializeToString()
    except ValueError as exc:  # over protobuf's 2 GiB limit
        return one_line(exc)
    try:
        onnxruntime.InferenceSession(data, sess_options=options, providers=[_CPU])
    except Exception as exc:  # onnxruntime raises its own exception types
        return one_line(exc, 300)
    return None


def _cuda_node(node: ir.Node, types: dict[str, str], cpu: dict[int, tuple[bool | None, str]]) -> NodeCompatibility:
    reason = _cuda_reason(node, types)
    if reason is None:
        return NodeCompatibility(_node_name(node), _qualified(node), NATIVE, _CUDA)
    return _fallback_to_cpu(node, reason, cpu)


def _cuda_reason(node: ir.Node, types: dict[str, str]) -> str | None:
    """Why the CUDA table does not cover ``node``, or None when it does."""
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    if node.op_type not in _tables.CUDA_OPS.get(domain, frozenset()):
        return "not in the CUDA kernel table"
    bad = sorted(set(_io_types(node, types)) & _tables.CUDA_UNSUPPORTED_TYPES)
    if bad:
        return f"CUDA kernels take no {', '.join(bad)} tensors"
    return None


def _tensorrt_node(node: ir.Node, types: dict[str, str], cpu: dict[int, tuple[bool | None, str]]) -> NodeCompatibility:
    reason = _tensorrt_reason(node, types)
    if reason is None:
        return NodeCompatibility(_node_name(node), _qualified(node), NATIVE, _TRT)
    cuda_reason = _cuda_reason(node, types)
    if cuda_reason is None:
        return NodeCompatibility(_node_name(node), _qualified(node), FALLBACK, _CUDA, f"TensorRT: {reason}")
    return _fallback_to_cpu(node, f"TensorRT: {reason}; CUDA: {cuda_reason}", cpu)


def _tensorrt_reason(node: ir.Node, types: dict[str, str]) -> str | None:
    """Why TensorRT's support matrix rejects ``node``, or None when it accepts it."""
    if node.domain not in ("", "ai.onnx"):
        return f"custom-domain op ({node.domain}) that TensorRT does not parse"
    supported = _tables.TENSORRT_OPS.get(node.op_type)
    if supported is None:
        return "not in TensorRT's ONNX support matrix"
    first = node.inputs[0] if node.inputs else None
    elem = types.get(first.name or "") if first is not None else None
    if elem is not None and elem not in supported:
        return f"input type {elem} is not among {', '.join(sorted(supported))}"
    if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        zero_point = node.inputs[2] if len(node.inputs) > 2 else None
        if zero_point is not None:
            if zero_point.const_value is None:
                return "the zero point is not a constant (TensorRT needs it to be zero)"
            if np.any(zero_point.const_value.numpy().astype(np.int64) != 0):
                return "non-zero zero point: TensorRT supports symmetric quantization only"
    if node.op_type in _NEEDS_CONSTANT_AXES and len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = node.inputs[1]
        producer = axes.producer()
        if axes.const_value is None and (producer is None or producer.op_type != "Constant"):
            return "the axes input is not a build-time constant"
    return None


def _tensorrt_issues(model: ir.Model) -> Iterable[str]:
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    if opset is not None and not _tables.TENSORRT_MIN_OPSET <= opset <= _tables.TENSORRT_MAX_OPSET:
        yield (f"the model imports opset {opset}; TensorRT parses opsets {_tables.TENSORRT_MIN_OPSET}"
               f"-{_tables.TENSORRT_MAX_OPSET}")


def _fallback_to_cpu(node: ir.Node, reason: str, cpu: dict[int, tuple[bool | None, str]]) -> NodeCompatibility:
    ok, cpu_reason = cpu[id(node)]
    if ok:
        return NodeCompatibility(_node_name(node), _qualified(node), FALLBACK, _CPU, reason)
    status = UNKNOWN if ok is None else UNSUPPORTED
    return NodeCompatibility(_node_name(node), _qualified(node), status, None, f"{reason}; CPU: {cpu_reason}")


def _io_types(node: ir.Node, types: dict[str, str]) -> list[str]:
    return [types[v.name] for v in [*node.inputs, *node.outputs] if v is not None and v.name in types]


def _value_types(model: ir.Model) -> dict[str, str]:
    """Element type name (``FLOAT``, ``INT64``...) of every value whose type is known, after
    ONNX shape inference where the model fits in a protobuf."""
    types: dict[str, str] = {}
    for value in _all_values(model):
        if value.name and value.dtype is not None:
            types[value.name] = value.dtype.name
    try:
        inferred = onnx.shape_inference.infer_shapes(ir.to_proto(model), strict_mode=False)
    except Exception as exc:  # inference is best effort (custom ops, huge models)
        logger.debug("compatibility: shape inference failed: %s", one_line(exc))
        return types
    graph = inferred.graph
    for info in [*graph.input, *graph.output, *graph.value_info]:
        elem = info.type.tensor_type.elem_type
        if elem and info.name not in types:
            types[info.name] = ir.DataType(elem).name
    return types


def _all_values(model: ir.Model) -> Iterable[ir.Value]:
    yield from model.graph.inputs
    yield from model.graph.initializers.values()
    for node in model.graph:
        yield from node.outputs


def _qualified(node: ir.Node) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


def _node_name(node: ir.Node) -> str:
    return node.name or f"{node.op_type}:{node.outputs[0].name if node.outputs else '?'}"
