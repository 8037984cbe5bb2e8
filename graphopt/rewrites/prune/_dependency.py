"""Dependency analysis for structured pruning: which tensors shrink together, or why they cannot.

Built on :func:`graphopt.analysis.summarize` (attention and MLP blocks) and a networkx graph of the
data flow. One group per block, in the spirit of DepGraph (Torch-Pruning):

* heads of attention block ``i``: columns ``[h*D, (h+1)*D)`` of ``W_q`` (``W_k``, ``W_v`` for the
  matching KV head; a fused ``W_qkv`` in its three sections) and of their biases, rows of ``W_o``,
  and every ``Reshape``/``Expand``/``Split`` constant between the projections and ``W_o`` that holds
  ``H``, ``H_kv``, ``H*D`` or ``H_kv*D``. With grouped-query attention a unit is one KV head with its
  ``H/H_kv`` query heads.
* neurons of MLP block ``i``: columns of ``W_up`` (and ``W_gate``), their biases, rows of ``W_down``,
  and the shape constants between them.
* layer ``i``: the residual block from ``x_in`` (the skip input of the attention's residual ``Add``)
  to ``x_out`` (the next layer's ``x_in``, or the stream after the last MLP); dropping it reads
  ``x_in`` wherever ``x_out`` was read.

A group that cannot be pruned safely carries ``reason`` and is skipped by the passes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import networkx as nx
import numpy as np
import onnx_ir as ir

from graphopt.analysis import summarize
from graphopt.analysis._attention import AttentionBlock
from graphopt.analysis._blocks import MlpBlock
from graphopt.analysis._graph import Projection
from graphopt.feeds import input_specs
from graphopt.rewrites.prune._edit import const_array

__all__ = ["HeadGroup", "LayerGroup", "Linear", "MlpGroup", "PruneAnalysis", "analyze"]

_SHAPE_READERS = frozenset({"Shape", "Size"})
_MAX_REGION = 400
_NORMS = frozenset({"LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization"})


@dataclasses.dataclass
class Linear:
    """``y = x W (+ b)`` with a constant ``W``; ``out_axis`` is the axis of ``W`` that indexes outputs."""

    node: ir.Node
    weight: np.ndarray
    out_axis: int
    bias: tuple[ir.Node, int, np.ndarray] | None
    output: ir.Value  # after the bias

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1 - self.out_axis])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[self.out_axis])


@dataclasses.dataclass
class HeadGroup:
    index: int
    block: AttentionBlock
    units: int  # prunable units: heads, or KV groups with grouped-query attention
    q: Linear | None = None
    k: Linear | None = None
    v: Linear | None = None
    o: Linear | None = None
    region: list[ir.Node] = dataclasses.field(default_factory=list)
    reason: str | None = None

    @property
    def heads(self) -> int:
        return int(self.block.num_heads or 0)

    @property
    def kv_heads(self) -> int:
        return int(self.block.kv_heads or self.heads)

    @property
    def head_size(self) -> int:
        return int(self.block.head_size or 0)


@dataclasses.dataclass
class MlpGroup:
    index: int
    block: MlpBlock
    units: int
    up: Linear | None = None
    gate: Linear | None = None
    down: Linear | None = None
    region: list[ir.Node] = dataclasses.field(default_factory=list)
    reason: str | None = None


@dataclasses.dataclass
class LayerGroup:
    index: int
    x_in: ir.Value | None = None
    x_out: ir.Value | None = None
    reason: str | None = None


@dataclasses.dataclass
class PruneAnalysis:
    heads: list[HeadGroup]
    mlps: list[MlpGroup]
    layers: list[LayerGroup]

    def reasons(self) -> list[str]:
        """One line per group that cannot be pruned."""
        lines = [f"attention block {g.index}: {g.reason}" for g in self.heads if g.reason]
        lines += [f"MLP block {g.index}: {g.reason}" for g in self.mlps if g.reason]
        lines += [f"layer {g.index}: {g.reason}" for g in self.layers if g.reason]
        return lines


class _Unprunable(Exception):
    pass


def analyze(model: ir.Model) -> PruneAnalysis:
    """Group the tensors of ``model`` that structured pruning must change together."""
    summary = summarize(model, shapes=small_input_shapes(model))
    nodes = {n.name: n for n in model.graph if n.name}
    flow = _flow_graph(model.graph)
    heads = [_head_group(i, b, nodes, flow, model.graph) for i, b in enumerate(summary.attention_blocks)]
    mlps = [_mlp_group(i, b, nodes, flow, model.graph) for i, b in enumerate(summary.mlp_blocks)]
    layers = _layer_groups(heads, mlps)
    return PruneAnalysis(heads, mlps, layers)


def small_input_shapes(model: ir.Model, other: int = 16) -> dict[str, tuple[int, ...]]:
    """Concrete input shapes: batch 1 and ``other`` for other dynamic dims (16 is small enough for any
    position-embedding table)."""
    shapes = {}
    for spec in input_specs(model):
        if spec.shape is not None:
            shapes[spec.name] = tuple(d if isinstance(d, int) and d > 0 else (1 if i == 0 else other)
                                      for i, d in enumerate(spec.shape))
    return shapes


def _flow_graph(graph: ir.Graph) -> nx.DiGraph:
    """Nodes and values of the data flow; shape readers end a path (their outputs carry no channels)."""
    flow = nx.DiGraph()
    for node in graph:
        for value in node.inputs:
            if value is not None:
                flow.add_edge(value, node)
        if node.op_type in _SHAPE_READERS:
            continue
        for out in node.outputs:
            flow.add_edge(node, out)
    return flow


def _linear(proj: Projection | None, nodes: dict[str, ir.Node], role: str) -> Linear:
    if proj is None:
        raise _Unprunable(f"no {role} projection was found")
    node = nodes.get(proj.node)
    if node is None:
        raise _Unprunable(f"{role} projection node {proj.node!r} has no unique name")
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm"):
        raise _Unprunable(f"{role} projection is {node.op_type}, only MatMul/Gemm weights are sliced")
    weight = const_array(node.inputs[1])
    if weight is None or weight.ndim != 2 or weight.dtype.kind != "f":
        raise _Unprunable(f"{role} weight of {node.name!r} is not a 2-D float constant (quantized or computed)")
    out_axis = 1
    if node.op_type == "Gemm":
        attrs = {k: a.value for k, a in node.attributes.items()}
        if attrs.get("transA", 0):
            raise _Unprunable(f"{role} Gemm {node.name!r} has transA")
        out_axis = 0 if attrs.get("transB", 0) else 1
    out = weight.shape[out_axis]
    bias: tuple[ir.Node, int, np.ndarray] | None = None
    output = node.outputs[0]
    if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
        array = const_array(node.inputs[2])
        if array is None:
            raise _Unprunable(f"{role} Gemm {node.name!r} has a computed bias")
        bias = (node, 2, array)
    else:
        uses = list(output.uses())
        if len(uses) == 1 and uses[0][0].op_type == "Add":
            add, index = uses[0]
            array = const_array(add.inputs[1 - index])
            if array is not None and array.ndim >= 1 and array.shape[-1] == out and array.size == out:
                bias = (add, 1 - index, array)
                output = add.outputs[0]
    return Linear(node, weight, out_axis, bias, output)


def _region(flow: nx.DiGraph, graph: ir.Graph, starts: Iterable[ir.Value], stops: set[ir.Node]) -> list[ir.Node]:
    """Nodes reached from ``starts`` before any of ``stops``; raises if a graph output is reached."""
    outputs = set(graph.outputs)
    seen: set[object] = set()
    frontier: list[object] = [v for v in starts]
    region: list[ir.Node] = []
    while frontier:
        item = frontier.pop()
        if item in seen:
            continue
        seen.add(item)
        if isinstance(item, ir.Value):
            if item in outputs:
                raise _Unprunable(f"pruned tensor {item.name!r} is a graph output (a KV cache?)")
        elif isinstance(item, ir.Node):
            if item in stops:
                continue
            region.append(item)
            if len(region) > _MAX_REGION:
                raise _Unprunable("pruned tensors reach past the block's last projection")
        if item in flow:
            frontier.extend(flow.successors(item))
    order = {node: i for i, node in enumerate(graph)}
    return sorted(region, key=lambda n: order.get(n, -1))


def _head_group(index: int, block: AttentionBlock, nodes: dict[str, ir.Node], flow: nx.DiGraph,
                graph: ir.Graph) -> HeadGroup:
    group = HeadGroup(index, block, units=int(block.kv_heads or block.num_heads or 0))
    try:
        if block.kind != "unfused":
            raise _Unprunable(f"fused {block.kind} kernel; prune before fusing attention")
        if not block.num_heads or not block.head_size:
            raise _Unprunable("number of heads or head size unknown")
        if group.heads % group.kv_heads:
            raise _Unprunable(f"{group.heads} heads do not split into {group.kv_heads} KV groups")
        group.q = _linear(block.q_proj, nodes, "Q")
        group.o = _linear(block.o_proj, nodes, "output")
        width, kv_width = group.heads * group.head_size, group.kv_heads * group.head_size
        if block.qkv_fused:
            if group.q.out_features != width + 2 * kv_width:
                raise _Unprunable(f"fused QKV width {group.q.out_features} is not {width}+2x{kv_width}")
            group.k = group.v = group.q
        else:
            group.k, group.v = _linear(block.k_proj, nodes, "K"), _linear(block.v_proj, nodes, "V")
            if group.q.out_features != width or {group.k.out_features, group.v.out_features} != {kv_width}:
                raise _Unprunable("projection widths do not match heads x head size")
        if group.o.in_features != width:
            raise _Unprunable(f"output projection reads {group.o.in_features} channels, not {width}")
        starts = {group.q.output, group.k.output, group.v.output}
        group.region = _region(flow, graph, starts, {group.o.node})
        if group.o.node.inputs[0] not in {out for n in group.region for out in n.outputs}:
            raise _Unprunable("the output projection is not fed by the attention region")
    except _Unprunable as exc:
        group.reason = str(exc)
    return group


def _mlp_group(index: int, block: MlpBlock, nodes: dict[str, ir.Node], flow: nx.DiGraph,
               graph: ir.Graph) -> MlpGroup:
    group = MlpGroup(index, block, units=int(block.hidden_size or 0))
    try:
        group.up = _linear(block.up, nodes, "up")
        group.down = _linear(block.down, nodes, "down")
        group.gate = _linear(block.gate, nodes, "gate") if block.gate is not None else None
        width = group.up.out_features
        if group.down.in_features != width or (group.gate is not None and group.gate.out_features != width):
            raise _Unprunable("MLP widths disagree between projections")
        group.units = width
        starts = {group.up.output} | ({group.gate.output} if group.gate is not None else set())
        group.region = _region(flow, graph, starts, {group.down.node})
    except _Unprunable as exc:
        group.reason = str(exc)
    return group


def _residual_after(linear: Linear) -> tuple[ir.Node, ir.Value] | None:
    """The first ``Add`` after ``linear`` whose other operand is computed: ``(add, skip_input)``."""
    value = linear.output
    for _ in range(4):
        uses = list(value.uses())
        if len(uses) != 1:
            return None
        node, index = uses[0]
        if node.op_type == "Add":
            other = node.inputs[1 - index]
            if other is not None and const_array(other) is None:
                return node, other
        if node.op_type not in ("Reshape", "Add", "Identity", "Cast", "Dropout"):
            return None
        value = node.outputs[0]
    return None


def _layer_groups(heads: list[HeadGroup], mlps: list[MlpGroup]) -> list[LayerGroup]:
    layers = [LayerGroup(i) for i in range(len(heads))]
    if len(heads) != len(mlps):
        for layer in layers:
            layer.reason = f"{len(heads)} attention blocks but {len(mlps)} MLP blocks; layers not paired"
        return layers
    ends: list[ir.Value | None] = []
    for layer, head, mlp in zip(layers, heads, mlps):
        attn_res = _residual_after(head.o) if head.o is not None else None
        mlp_res = _residual_after(mlp.down) if mlp.down is not None else None
        if attn_res is None or mlp_res is None:
            layer.reason = "residual connections around attention and MLP not found"
            ends.append(None)
            continue
        layer.x_in = attn_res[1]
        ends.append(mlp_res[0].outputs[0])
    post_norm = False
    if len(layers) > 1 and ends[0] is not None and layers[1].x_in is not None and ends[0] is not layers[1].x_in:
        producer = layers[1].x_in.producer()
        post_norm = producer is not None and producer.op_type in _NORMS and producer.inputs[0] is ends[0]
    for i, layer in enumerate(layers):
        if layer.reason:
            continue
        if i + 1 < len(layers):
            layer.x_out = layers[i + 1].x_in
        else:
            end = ends[i]
            if post_norm and end is not None:
                uses = list(end.uses())
                end = uses[0][0].outputs[0] if len(uses) == 1 and uses[0][0].op_type in _NORMS else None
            layer.x_out = end
        if layer.x_out is None:
            layer.reason = "the layer's output on the residual stream was not found"
    return layers
