"""``prune-channels``: remove output channels of convolutions, physically.

For a ``Conv`` with weight ``W [C_out, C_in, kh, kw]`` and kept channels ``K``::

    W -> W[K]   b -> b[K]   per-channel constants on the way (BatchNormalization scale/bias/mean/var,
    Mul/Add by [C,1,1]) -> c[K]   next Conv: W' -> W'[:, K]   next Gemm/MatMul after global pooling:
    rows K   Reshape targets after pooling: C -> |K|

The channels flow from the convolution through channel-wise ops (activations, pooling, batch norm,
elementwise ops with a constant) to the convolutions or linear layers that read them. A group stops
being prunable (with a reason) when its channels reach anything else: a residual ``Add`` of two
computed tensors, a ``Concat``, a grouped/depthwise convolution, a graph output.

``activation`` importance is fluctuation-based (FLAP, An et al. 2024): with ``y_c`` the channel as a reader
``R`` reads it (after activation/pooling) and ``R_c`` the reader weights it meets,
``score_c = sum_R Var(y_c) * ||R_c||^2``, the expected squared error its removal leaves in the readers'
outputs once its mean is compensated: ``bias_R += sum_{c removed} E[y_c] * sum_k R_c`` (the kernel sum; exact
away from zero padding). A mean ``|y_c|`` alone (Minitron's neuron score) is not invariant to the ReLU
rescaling ``y_c -> a y_c, R_c -> R_c / a`` and kept channels that carry a large constant.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from graphopt.passes import register_pass
from graphopt.rewrites.prune._base import PruneSettings, StructuredPrunePass, finish, kept_units, top_units
from graphopt.rewrites.prune._edit import const_array, remap_shape_input, replace_const_input
from graphopt.rewrites.prune._importance import _collect, _need_feeds

__all__ = ["ChannelGroup", "PruneChannelsPass", "channel_groups", "channel_scores", "channel_statistics",
           "prune_channel_group"]

logger = logging.getLogger(__name__)

_CHANNELWISE = frozenset({"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "HardSwish", "HardSigmoid", "Elu",
                          "Selu", "Softplus", "Gelu", "MaxPool", "AveragePool", "Dropout", "Identity", "Cast",
                          "GlobalAveragePool", "GlobalMaxPool", "LpPool", "Neg", "Abs"})
_BINARY = frozenset({"Add", "Sub", "Mul", "Div", "PRelu"})
_REDUCE = frozenset({"ReduceMean", "ReduceMax", "ReduceSum"})


@dataclasses.dataclass
class ChannelGroup:
    """One convolution's output channels and every tensor slice that depends on them."""

    conv: ir.Node
    channels: int
    consts: list[tuple[ir.Node, int, int]] = dataclasses.field(default_factory=list)  # node, input, axis
    readers: list[tuple[ir.Node, int]] = dataclasses.field(default_factory=list)  # node, weight axis of inputs
    shapes: list[ir.Node] = dataclasses.field(default_factory=list)
    activation: ir.Value | None = None  # what the readers read: the channels after activation/pooling
    reason: str | None = None
    means: list[np.ndarray] | None = None  # per reader, its input's channel means (set by activation scoring)


class _Stop(Exception):
    pass


def channel_groups(model: ir.Model) -> list[ChannelGroup]:
    """One group per ``Conv`` (group 1, constant weight) in graph order."""
    groups = []
    for node in model.graph:
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
            continue
        weight = const_array(node.inputs[1])
        group = ChannelGroup(node, int(weight.shape[0]) if weight is not None else 0, activation=node.outputs[0])
        try:
            if weight is None or weight.ndim < 3:
                raise _Stop("weight is not a constant")
            if _attr(node, "group", 1) != 1:
                raise _Stop("grouped or depthwise convolution")
            if len(node.inputs) > 2 and node.inputs[2] is not None and const_array(node.inputs[2]) is None:
                raise _Stop("computed bias")  # a constant bias is sliced with W (it may gain one later)
            _follow(model.graph, group)
        except _Stop as exc:
            group.reason = str(exc)
        groups.append(group)
    return groups


def _attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return int(attr.value) if attr is not None else default


def _follow(graph: ir.Graph, group: ChannelGroup) -> None:
    c = group.channels
    frontier: list[tuple[ir.Value, bool]] = [(group.conv.outputs[0], False)]  # (value, flattened?)
    seen: set[ir.Value] = set()
    while frontier:
        value, flat = frontier.pop()
        if value in seen:
            continue
        seen.add(value)
        if value.is_graph_output():
            raise _Stop(f"channels reach graph output {value.name!r}")
        for node, index in value.uses():
            op = node.op_type
            if op == "Conv" and index == 0 and not flat:
                weight = const_array(node.inputs[1])
                if weight is None or _attr(node, "group", 1) != 1 or weight.shape[1] != c:
                    raise _Stop(f"read by convolution {node.name!r} that is grouped or not constant")
                group.readers.append((node, 1))
                group.activation = value
                continue
            if op in ("Gemm", "MatMul") and index == 0 and flat:
                weight = const_array(node.inputs[1])
                if weight is None or weight.ndim != 2:
                    raise _Stop(f"read by {op} {node.name!r} without a constant weight")
                trans = op == "Gemm" and _attr(node, "transB", 0)
                if op == "Gemm" and _attr(node, "transA", 0):
                    raise _Stop(f"read by Gemm {node.name!r} with transA")
                if weight.shape[1 if trans else 0] != c:
                    raise _Stop(f"read by {op} {node.name!r} whose weight does not have {c} input features "
                                "(spatial positions flattened with the channels)")
                group.readers.append((node, 1 if trans else 0))
                group.activation = value
                continue
            if op in ("Shape", "Size"):
                continue
            if op == "BatchNormalization" and index == 0:
                group.consts.extend((node, i, 0) for i in range(1, 5))
            elif op in _BINARY:
                other = node.inputs[1 - index] if len(node.inputs) == 2 else None
                array = const_array(other)
                if array is None:
                    raise _Stop(f"{op} {node.name!r} mixes these channels with another computed tensor "
                                "(a residual connection couples them)")
                if array.size > 1:
                    axis = -1 if flat else -3
                    if array.ndim < -axis or array.shape[axis] != c:
                        raise _Stop(f"{op} {node.name!r} has a constant that is not per channel")
                    group.consts.append((node, 1 - index, axis))
            elif op in _REDUCE:
                axes = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
                reduced = set() if axes is None else {int(a) % 4 for a in axes.reshape(-1)}
                if flat or axes is None or 1 in reduced or 0 in reduced:
                    raise _Stop(f"{op} {node.name!r} reduces over the channel axis")
                if not _attr(node, "keepdims", 1):
                    if reduced != {2, 3}:
                        raise _Stop(f"{op} {node.name!r} drops axes other than the spatial ones")
                    frontier.append((node.outputs[0], True))
                    continue
            elif op in ("Flatten", "Reshape", "Squeeze") and index == 0:
                if op == "Reshape":
                    group.shapes.append(node)
                frontier.append((node.outputs[0], True))
                continue
            elif op not in _CHANNELWISE or index != 0:
                raise _Stop(f"channels reach {op} {node.name!r}, which pruning does not follow")
            for out in node.outputs[:1]:
                frontier.append((out, flat))
    if not group.readers:
        raise _Stop("no convolution or linear layer reads these channels")


def prune_channel_group(model: ir.Model, group: ChannelGroup, keep: Sequence[int],
                        means: Sequence[np.ndarray] | None = None) -> bool:
    """Keep only output channels ``keep`` of ``group.conv``; returns whether it changed.

    ``means`` (one array of ``C`` channel means per reader, from :func:`channel_statistics`; by default
    ``group.means``, which ``activation`` scoring sets) folds the mean of every removed channel into its readers'
    bias."""
    if group.reason is not None:
        raise ValueError(f"conv {group.conv.name!r} cannot be pruned: {group.reason}")
    kept = np.array(sorted(int(k) for k in keep), dtype=np.int64)
    if len(kept) == group.channels:
        return False
    graph = model.graph
    means = group.means if means is None else means
    if means is not None:
        removed = np.setdiff1d(np.arange(group.channels), kept)
        for (node, axis), mean in zip(group.readers, means):
            _compensate(graph, node, axis, removed, np.asarray(mean, dtype=np.float64))
    weight = const_array(group.conv.inputs[1])
    assert weight is not None
    replace_const_input(graph, group.conv, 1, weight[kept], group.conv.inputs[1].name or "w")  # type: ignore[union-attr]
    bias = const_array(group.conv.inputs[2]) if len(group.conv.inputs) > 2 else None
    if bias is not None:  # read now: compensating an earlier group may have given this conv its bias
        replace_const_input(graph, group.conv, 2, bias[kept], group.conv.inputs[2].name or "b")  # type: ignore[union-attr]
    for node, index, axis in group.consts:
        array = const_array(node.inputs[index])
        assert array is not None
        replace_const_input(graph, node, index, np.take(array, kept, axis=axis), node.inputs[index].name or "c")  # type: ignore[union-attr]
    for node, axis in group.readers:
        array = const_array(node.inputs[1])
        assert array is not None
        replace_const_input(graph, node, 1, np.take(array, kept, axis=axis), node.inputs[1].name or "w")  # type: ignore[union-attr]
    old, new = group.channels, len(kept)
    for node in group.shapes:
        remap_shape_input(graph, node, 1, lambda position, rank, dim: new if dim == old and position > 0 else dim)
    return True


def _compensate(graph: ir.Graph, node: ir.Node, axis: int, removed: np.ndarray, mean: np.ndarray) -> None:
    """Add what the ``removed`` input channels of reader ``node`` contribute on average to its bias."""
    weight = const_array(node.inputs[1])
    assert weight is not None
    per_channel = np.moveaxis(weight.astype(np.float64), axis, 0)[removed]  # [removed, out, (kernel...)]
    delta = (per_channel.reshape(len(removed), per_channel.shape[1], -1).sum(axis=2) * mean[removed, None]).sum(0)
    dtype = weight.dtype
    if node.op_type == "MatMul":
        out = node.outputs[0]
        if out.is_graph_output():
            logger.warning("prune-channels: no mean compensation for %r (its output is a graph output)", node.name)
            return
        uses = list(out.uses())
        add = ir.node("Add", [out, out], name=f"{node.name or 'matmul'}.compensation")
        graph.insert_after(node, add)
        replace_const_input(graph, add, 1, delta.astype(dtype), "compensation")
        for user, index in uses:
            user.replace_input_with(index, add.outputs[0])
        return
    scale = 1.0
    if node.op_type == "Gemm":
        alpha, beta = _float_attr(node, "alpha"), _float_attr(node, "beta")
        if beta == 0.0:
            logger.warning("prune-channels: no mean compensation for Gemm %r (beta = 0)", node.name)
            return
        scale = alpha / beta
    has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
    bias = const_array(node.inputs[2]) if has_bias else np.zeros(len(delta), dtype=dtype)
    if bias is None:
        logger.warning("prune-channels: no mean compensation for %r (its bias is computed)", node.name)
        return
    node.resize_inputs(max(len(node.inputs), 3))
    merged = bias + scale * delta  # a scalar or [1, out] bias broadcasts
    hint = node.inputs[2].name if node.inputs[2] is not None and node.inputs[2].name else "bias"
    replace_const_input(graph, node, 2, merged.astype(bias.dtype), hint)


def _float_attr(node: ir.Node, name: str) -> float:
    attr = node.attributes.get(name)
    return float(attr.value) if attr is not None else 1.0


def _reader_weight_energy(group: ChannelGroup, node: ir.Node, axis: int) -> np.ndarray:
    """``||R_c||^2``: squared norm of the weights reader ``node`` applies to each channel."""
    array = const_array(node.inputs[1])
    assert array is not None
    return np.square(np.moveaxis(array, axis, 0).astype(np.float64)).reshape(group.channels, -1).sum(axis=1)


def channel_statistics(model: ir.Model, groups: Sequence[ChannelGroup],
                       feeds: Mapping[str, np.ndarray]) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Per group, per reader: the mean and variance of each channel of the tensor that reader reads,
    over calibration samples and positions."""
    jobs: dict[str, tuple[Sequence[str], Any]] = {}
    for i, g in enumerate(groups):
        for node, _ in g.readers:
            name = node.inputs[0].name or ""  # type: ignore[union-attr]
            jobs[f"{i}:{name}"] = ([name], lambda a: np.concatenate([a[0].sum(axis=0), np.square(a[0]).sum(axis=0),
                                                                      [len(a[0])]]))
    totals = _collect(model, feeds, jobs, channel_axis=1)
    out = []
    for i, g in enumerate(groups):
        stats = []
        for node, _ in g.readers:
            total = totals[f"{i}:{node.inputs[0].name or ''}"]  # type: ignore[union-attr]
            count = max(float(total[-1]), 1.0)
            mean = total[:g.channels] / count
            stats.append((mean, np.maximum(total[g.channels:2 * g.channels] / count - np.square(mean), 0.0)))
        out.append(stats)
    return out


def channel_scores(model: ir.Model, groups: Sequence[ChannelGroup], method: str,
                   feeds: Mapping[str, np.ndarray] | None, seed: int,
                   statistics: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]] | None = None) -> list[np.ndarray]:
    """Per group, a score per output channel: ``activation`` ``sum_R Var(y_c) * ||R_c||^2`` over the readers
    (see the module docstring; ``statistics`` from :func:`channel_statistics` saves a calibration run; it also
    sets ``group.means``, so that :func:`prune_channel_group` compensates the removed channels' means),
    ``magnitude`` the filter norm ``||W_c||``, ``wanda`` ``||y_c|| * sum |W'_{:,c}|`` over the layers
    that read channel ``c``, ``random``; ``y`` is the tensor those layers read (after the activation)."""
    if method == "random":
        rng = np.random.default_rng(seed)
        return [rng.random(g.channels) for g in groups]
    if method == "magnitude":
        out = []
        for g in groups:
            weight = const_array(g.conv.inputs[1])
            assert weight is not None
            out.append(np.linalg.norm(weight.reshape(g.channels, -1).astype(np.float64), axis=1))
        return out
    data = _need_feeds(method, feeds)
    if method == "activation":
        stats = statistics if statistics is not None else channel_statistics(model, groups, data)
        for g, s in zip(groups, stats):
            g.means = [mean for mean, _ in s]
        return [sum((var * _reader_weight_energy(g, node, axis) for (node, axis), (_, var) in zip(g.readers, s)),
                    np.zeros(g.channels)) for g, s in zip(groups, stats)]
    jobs: dict[str, tuple[Sequence[str], Any]] = {}
    for i, g in enumerate(groups):
        source = g.activation or g.conv.outputs[0]
        jobs[str(i)] = ([source.name or ""], lambda a: np.square(a[0]).sum(axis=0))
    totals = _collect(model, data, jobs, channel_axis=1)
    out = []
    for i, g in enumerate(groups):
        readers = np.zeros(g.channels)
        for node, axis in g.readers:
            array = const_array(node.inputs[1])
            assert array is not None
            readers += np.abs(np.moveaxis(array, axis, 0).astype(np.float64)).reshape(g.channels, -1).sum(axis=1)
        out.append(readers * np.sqrt(totals[str(i)]))
    return out


@register_pass
class PruneChannelsPass(StructuredPrunePass):
    """Remove ``round(fraction * C_out)`` of the least important output channels of every prunable Conv
    (the kept count rounded to a multiple of ``multiple_of``);
    with ``activation`` importance the mean of each removed channel is folded into its readers' bias."""

    name = "prune-channels"
    Settings = PruneSettings

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        settings: PruneSettings = self.settings
        if settings.fraction == 0.0:
            return ir.passes.PassResult(model, False)
        groups = channel_groups(model)
        self.note_skipped([f"conv {g.conv.name!r}: {g.reason}" for g in groups if g.reason])
        live = [g for g in groups if g.reason is None and kept_units(g.channels, settings) < g.channels]
        if not live:
            return ir.passes.PassResult(model, False)
        scores = channel_scores(model, live, settings.importance, self.load_feeds(model), settings.seed)
        modified = False
        for group, score in zip(live, scores):
            keep = top_units(score, kept_units(group.channels, settings))
            modified = prune_channel_group(model, group, keep.tolist()) or modified
        if modified:
            finish(model)
        return ir.passes.PassResult(model, modified)
