"""Features of the computation a graph really does: its live nodes and its input -> output paths.

A node is *live* when its output depends on a graph input and reaches a graph output. Dependence
is cut by a multiplication with an all-zero constant (``x * 0``, how search spaces write a
``none`` edge), so that everything computed only from it, and every branch whose result is never
used, is dead. Over the live nodes, :func:`live_features` counts operators and parameters and
summarises the input -> output paths (BANANAS' path encoding, made graph-generic): how many
paths there are (log), and the most, fewest, mean and standard deviation (over paths) of the
convolutions, spatial convolutions (a kernel larger than 1), pooling operators, operators and
receptive-field growth (``(k - 1)`` times the input's stride) on a path. Keys are
:data:`LIVE_FEATURE_NAMES`, in order; any ONNX graph has them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

__all__ = ["LIVE_FEATURE_NAMES", "live_features"]

_POOLS = frozenset({"MaxPool", "AveragePool", "LpPool"})
_LINEAR = frozenset({"Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "MatMulNBits", "FusedMatMul"})
_CONVS = frozenset({"Conv", "ConvTranspose", "ConvInteger", "QLinearConv"})
_NORMS = frozenset({"BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization"})
_METRICS = ("convs", "spatial", "pools", "ops", "field")

LIVE_FEATURE_NAMES: tuple[str, ...] = (
    "live_nodes", "live_fraction", "live_conv", "live_conv_spatial", "live_pool", "live_linear", "live_norm",
    "live_add", "live_parameters", "path_log_count",
    *(f"path_{m}_{s}" for m in _METRICS for s in ("max", "min", "mean", "std")),
)  # fmt: skip


def live_features(model: ir.Model) -> dict[str, float]:
    """The live-computation features of ``model``'s main graph (see the module docstring)."""
    graph = model.graph
    nodes = list(graph)  # onnx_ir keeps graphs topologically sorted
    constants = _constants(graph, nodes)
    dynamic: set[ir.Value] = set(graph.inputs) - constants
    for node in nodes:
        if _kills(node, constants):
            continue
        if any(v in dynamic for v in node.inputs if v is not None):
            dynamic.update(node.outputs)
    needed: set[ir.Value] = set(graph.outputs)
    live: list[ir.Node] = []
    for node in reversed(nodes):
        if any(v in needed for v in node.outputs) and any(v in dynamic for v in node.inputs if v is not None):
            live.append(node)
            needed.update(v for v in node.inputs if v is not None and v in dynamic)
    live.reverse()
    features = _counts(live, len(nodes), constants)
    features.update(_paths(graph, live, dynamic))
    assert tuple(features) == LIVE_FEATURE_NAMES
    return features


def _constants(graph: ir.Graph, nodes: Sequence[ir.Node]) -> set[ir.Value]:
    values: set[ir.Value] = {v for v in graph.initializers.values() if v not in graph.inputs}
    for node in nodes:
        data = [v for v in node.inputs if v is not None]
        if node.op_type == "Constant" or (data and all(v in values for v in data)):
            values.update(node.outputs)
    return values


def _is_zero(value: ir.Value, constants: set[ir.Value]) -> bool:
    if value not in constants:
        return False
    tensor = value.const_value
    producer = value.producer()
    if tensor is None and producer is not None and producer.op_type == "Constant":
        attr = producer.attributes.get("value")
        tensor = attr.value if attr is not None else None
    if tensor is None:
        return False
    try:
        array = tensor.numpy()
    except Exception:  # external or unreadable data: not provably zero
        return False
    return bool(array.size) and not np.any(array)


def _kills(node: ir.Node, constants: set[ir.Value]) -> bool:
    """``node`` is ``x * 0``: its output does not depend on ``x``."""
    return node.op_type == "Mul" and node.domain in ("", "ai.onnx") and any(
        v is not None and _is_zero(v, constants) for v in node.inputs)


def _kernel(node: ir.Node) -> tuple[int, int]:
    """(largest kernel side, largest stride) of a Conv or pooling node, else (1, 1)."""
    attrs = node.attributes
    kernel = attrs.get("kernel_shape")
    sides = list(kernel.value) if kernel is not None else []
    if not sides and node.op_type == "Conv" and len(node.inputs) > 1 and node.inputs[1] is not None:
        dims = node.inputs[1].shape
        sides = [d for d in (list(dims)[2:] if dims is not None else []) if isinstance(d, int)]
    strides = attrs.get("strides")
    return max(sides, default=1), max(list(strides.value) if strides is not None else [], default=1)


def _parameters(live: Sequence[ir.Node], constants: set[ir.Value]) -> int:
    """Elements of the constant tensors live nodes read, through constant subgraphs (``DequantizeLinear``)."""
    seen: set[ir.Value] = set()
    stack = [v for node in live for v in node.inputs if v is not None and v in constants]
    total = 0
    while stack:
        value = stack.pop()
        if value in seen:
            continue
        seen.add(value)
        producer = value.producer()
        if value.const_value is not None and (producer is None or producer.op_type == "Constant"):
            total += int(np.prod(value.const_value.shape.numpy()))
        elif producer is not None:
            stack.extend(v for v in producer.inputs if v is not None and v in constants)
    return total


def _counts(live: Sequence[ir.Node], total: int, constants: set[ir.Value]) -> dict[str, float]:
    convs = [n for n in live if n.op_type in _CONVS]
    return {
        "live_nodes": float(len(live)),
        "live_fraction": len(live) / total if total else 0.0,
        "live_conv": float(len(convs)),
        "live_conv_spatial": float(sum(_kernel(n)[0] > 1 for n in convs)),
        "live_pool": float(sum(n.op_type in _POOLS for n in live)),
        "live_linear": float(sum(n.op_type in _LINEAR for n in live)),
        "live_norm": float(sum(n.op_type in _NORMS for n in live)),
        "live_add": float(sum(n.op_type in ("Add", "Sum") for n in live)),
        "live_parameters": float(_parameters(live, constants)),
    }


def _paths(graph: ir.Graph, live: Sequence[ir.Node], dynamic: set[ir.Value]) -> dict[str, float]:
    """Max, min, mean and standard deviation (over paths) of each metric on live input -> output paths."""
    # per value: (log path count, jump, {metric: (max, min, mean, mean of squares)})
    Stats = dict[str, tuple[float, float, float, float]]
    start: Stats = {m: (0.0, 0.0, 0.0, 0.0) for m in _METRICS}
    state: dict[ir.Value, tuple[float, float, Stats]] = {v: (0.0, 1.0, start) for v in graph.inputs if v in dynamic}
    for node in live:
        incoming = [state[v] for v in node.inputs if v is not None and v in state]
        if not incoming:
            continue
        kernel, stride = _kernel(node)
        jump = max(s[1] for s in incoming)
        is_conv = node.op_type in _CONVS
        step = {"convs": float(is_conv), "spatial": float(is_conv and kernel > 1),
                "pools": float(node.op_type in _POOLS), "ops": 1.0, "field": (kernel - 1) * jump}
        log_total, stats = _merge(incoming)
        for out in node.outputs:
            state[out] = (log_total, jump * stride, {m: _shift(stats[m], step[m]) for m in _METRICS})
    ends = [state[v] for v in graph.outputs if v in state]
    log_total, stats = _merge(ends) if ends else (0.0, start)
    features = {"path_log_count": log_total}
    for m in _METRICS:
        high, low, mean, square = stats[m]
        features.update({f"path_{m}_max": high, f"path_{m}_min": low, f"path_{m}_mean": mean,
                         f"path_{m}_std": math.sqrt(max(square - mean * mean, 0.0))})
    return features


def _merge(incoming: Sequence[tuple[float, float, dict[str, tuple[float, float, float, float]]]]
           ) -> tuple[float, dict[str, tuple[float, float, float, float]]]:
    """The paths into several values taken together: log count, and per metric max, min and moments."""
    log_total = float(np.logaddexp.reduce([s[0] for s in incoming]))
    weights = [math.exp(s[0] - log_total) for s in incoming]
    return log_total, {m: (max(s[2][m][0] for s in incoming), min(s[2][m][1] for s in incoming),
                           sum(w * s[2][m][2] for w, s in zip(weights, incoming)),
                           sum(w * s[2][m][3] for w, s in zip(weights, incoming))) for m in _METRICS}


def _shift(stats: tuple[float, float, float, float], step: float) -> tuple[float, float, float, float]:
    """Every path extended by one node worth ``step``."""
    high, low, mean, square = stats
    return high + step, low + step, mean + step, square + 2 * step * mean + step * step
