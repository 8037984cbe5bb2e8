"""Tracing the residual stream of a transformer graph for ``prune-hidden``: :func:`hidden_groups`.

The stream is followed from its seeds (the inputs of ``LayerNormalization``-like nodes and the outputs of
embedding ``Gather`` s) through every op that carries the hidden channels on one axis, in both directions
(a residual ``Add`` pulls its other operand in), collecting every constant to slice, with its channel axis.
A stream that reaches an op the tracer does not follow is returned with the reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from graphopt.rewrites.prune._edit import const_array, shape_parts

__all__ = ["HiddenGroup", "hidden_groups"]

_NORMS = frozenset({"LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization"})
_ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "Equal", "Less", "Greater", "LessOrEqual",
    "GreaterOrEqual", "And", "Or", "Not", "Relu", "LeakyRelu", "Gelu", "Erf", "Tanh", "Sigmoid", "HardSigmoid",
    "HardSwish", "Elu", "Selu", "Celu", "Mish", "Softplus", "Cast", "Identity", "Dropout", "Sqrt", "Neg", "Abs",
    "Reciprocal", "Exp", "Log", "Clip", "IsNaN", "IsInf", "Sin", "Cos", "Floor", "Ceil", "Round", "Sign",
})
_REDUCE = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceL1", "ReduceProd",
                     "ReduceSumSquare", "ReduceLogSumExp"})
_RESHAPES = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
_SHAPE_READERS = frozenset({"Shape", "Size"})


@dataclasses.dataclass
class HiddenGroup:
    """One residual stream: every value carrying its channels (with the channel axis) and every edit."""

    index: int
    width: int
    values: dict[ir.Value, int] = dataclasses.field(default_factory=dict)  # value -> channel axis
    consts: list[tuple[ir.Node, int, int]] = dataclasses.field(default_factory=list)  # reader, input, axis
    shapes: list[tuple[ir.Node, int, int]] = dataclasses.field(default_factory=list)  # node, input, position
    norms: list[ir.Node] = dataclasses.field(default_factory=list)
    readers: list[ir.Node] = dataclasses.field(default_factory=list)  # MatMul/Gemm contracting the channels
    outputs: dict[str, int] = dataclasses.field(default_factory=dict)  # graph output -> channel axis
    reason: str | None = None


class _Stop(Exception):
    pass


def hidden_groups(model: ir.Model) -> list[HiddenGroup]:
    """The residual streams of ``model`` (usually one), each with its edits or the reason it cannot shrink."""
    shapes = _value_shapes(model)
    groups: list[HiddenGroup] = []
    claimed: set[ir.Value] = set()
    for value in _seeds(model.graph):
        if value in claimed:
            continue
        shape = shapes.get(value.name or "")
        group = HiddenGroup(len(groups), int(shape[-1]) if shape else 0)
        try:
            if not shape:
                raise _Stop(f"shape of {value.name!r} is unknown")
            _Tracer(model.graph, shapes, group).run(value, len(shape) - 1)
        except _Stop as exc:
            group.reason = str(exc)
        claimed.update(group.values)
        if group.reason is None or all(g.reason != group.reason for g in groups):
            groups.append(group)
    return groups


def _value_shapes(model: ir.Model) -> dict[str, tuple[int, ...]]:
    """Concrete shapes (batch 1, other dynamic dims 7) by value name, from a private copy of the model."""
    from graphopt.analysis import concrete_copy
    from graphopt.analysis._shapes import static_shape
    from graphopt.rewrites.prune._dependency import small_input_shapes

    work = concrete_copy(model, small_input_shapes(model, other=7)).model
    out: dict[str, tuple[int, ...]] = {}
    for value in [*work.graph.inputs, *work.graph.initializers.values()]:
        shape = static_shape(value)
        if value.name and shape is not None:
            out[value.name] = shape
    for node in work.graph:
        for value in node.outputs:
            shape = static_shape(value)
            if value.name and shape is not None:
                out[value.name] = shape
    return out


def _seeds(graph: ir.Graph) -> list[ir.Value]:
    seeds: list[ir.Value] = []
    for node in graph:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in _NORMS and node.inputs and node.inputs[0] is not None:
            seeds.append(node.inputs[0])
        elif node.op_type == "Gather" and _int_attr(node, "axis", 0) == 0:
            table = const_array(node.inputs[0])
            if table is not None and table.ndim == 2 and table.dtype.kind == "f":
                seeds.append(node.outputs[0])
    return seeds


def _int_attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return int(attr.value) if attr is not None else default


def _ints_attr(node: ir.Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    return [int(v) for v in attr.value] if attr is not None else None


class _Tracer:
    """Breadth-first walk over the values that carry the channels; each node is resolved once."""

    def __init__(self, graph: ir.Graph, shapes: Mapping[str, tuple[int, ...]], group: HiddenGroup) -> None:
        self.graph, self.shapes, self.group = graph, shapes, group
        self.done: set[ir.Node] = set()
        self.todo: list[ir.Value] = []
        self.outputs = set(graph.outputs)

    def shape(self, value: ir.Value | None) -> tuple[int, ...]:
        shape = self.shapes.get(value.name or "") if value is not None else None
        if value is not None and shape is None and value.const_value is not None:
            shape = tuple(int(d) for d in value.const_value.shape.numpy())
        if shape is None:
            raise _Stop(f"shape of {getattr(value, 'name', None)!r} is unknown")
        return tuple(int(d) for d in shape)

    def run(self, seed: ir.Value, axis: int) -> None:
        self.add(seed, axis)
        while self.todo:
            value = self.todo.pop()
            producer = value.producer()
            if producer is not None and producer not in self.done:
                self.resolve(producer)
            for node, _ in list(value.uses()):
                if node not in self.done:
                    self.resolve(node)
        if not self.group.norms and not self.group.readers:
            raise _Stop("no normalisation or linear layer reads the stream")

    def add(self, value: ir.Value | None, axis: int, node: ir.Node | None = None, index: int = -1) -> None:
        """Mark ``value`` as carrying the channels on ``axis``; a constant is sliced for its reader ``node``."""
        if value is None:
            return
        shape = self.shape(value)
        if not 0 <= axis < len(shape) or shape[axis] != self.group.width:
            raise _Stop(f"{value.name!r} has shape {list(shape)}, not {self.group.width} channels on axis {axis}")
        if const_array(value) is not None:
            if node is None:
                raise _Stop(f"constant {value.name!r} on the stream has no reader")
            self.group.consts.append((node, index, axis))
            return
        known = self.group.values.get(value)
        if known is not None:
            if known != axis:
                raise _Stop(f"{value.name!r} carries the channels on two axes ({known} and {axis})")
            return
        if value.is_graph_input():
            raise _Stop(f"the hidden channels reach graph input {value.name!r}")
        self.group.values[value] = axis
        if value in self.outputs:
            self.group.outputs[value.name or ""] = axis
        self.todo.append(value)

    def axis(self, value: ir.Value | None) -> int | None:
        return self.group.values.get(value) if value is not None else None

    def resolve(self, node: ir.Node) -> None:
        self.done.add(node)
        op = node.op_type
        where = f"{op} {node.name!r}"
        if node.domain not in ("", "ai.onnx"):
            raise _Stop(f"the hidden channels reach {node.domain} {where}, which hidden pruning does not follow")
        if op in _SHAPE_READERS:
            return
        handler = getattr(self, f"_{op.lower()}", None)
        if op in _ELEMENTWISE:
            handler = self._elementwise
        elif op in _REDUCE:
            handler = self._reduce
        elif op in _RESHAPES:
            handler = self._reshape
        elif op in _NORMS:
            handler = self._norm
        if handler is None:
            raise _Stop(f"the hidden channels reach {where}, which hidden pruning does not follow")
        handler(node, where)

    def _elementwise(self, node: ir.Node, where: str) -> None:
        out = node.outputs[0]
        rank = len(self.shape(out))
        axis = self.axis(out)
        if axis is None:
            entering = next(i for i, v in enumerate(node.inputs) if self.axis(v) is not None)
            value = node.inputs[entering]
            axis = self.axis(value)
            assert value is not None and axis is not None
            axis += rank - len(self.shape(value))
        self.add(out, axis)
        if node.op_type == "Dropout" and len(node.outputs) > 1 and node.outputs[1].uses():
            raise _Stop(f"{where}: its mask output is used")
        for index, value in enumerate(node.inputs):
            if value is None or (node.op_type in ("Dropout", "Clip") and index > 0):
                continue
            shape = self.shape(value)
            aligned = axis - (rank - len(shape))
            if aligned < 0 or shape[aligned] == 1:
                continue  # broadcast along the channels
            self.add(value, aligned, node, index)

    def _norm(self, node: ir.Node, where: str) -> None:
        x = node.inputs[0]
        axis = self.axis(x)
        axis = self.axis(node.outputs[0]) if axis is None else axis
        rank = len(self.shape(x))
        if axis is None or axis != rank - 1 or _int_attr(node, "axis", -1) % rank != axis:
            raise _Stop(f"{where} does not normalise over the channel axis alone")
        self.add(x, axis)
        self.add(node.outputs[0], axis)
        for out in node.outputs[1:]:
            if out.uses() or out in self.outputs:
                raise _Stop(f"{where}: its statistics outputs are used")
        for index in (1, 2):
            if len(node.inputs) > index and node.inputs[index] is not None:
                param = node.inputs[index]
                if const_array(param) is None:
                    raise _Stop(f"{where} has a computed scale or bias")
                self.add(param, len(self.shape(param)) - 1, node, index)
        self.group.norms.append(node)

    def _linear(self, node: ir.Node, where: str) -> None:
        x, out = node.inputs[0], node.outputs[0]
        weight = const_array(node.inputs[1])
        if weight is None or weight.ndim != 2 or any(self.axis(v) is not None for v in node.inputs[1:]):
            raise _Stop(f"the hidden channels reach {where} without a constant 2-D weight")
        if node.op_type == "Gemm" and _int_attr(node, "transA", 0):
            raise _Stop(f"{where} has transA")
        trans = node.op_type == "Gemm" and _int_attr(node, "transB", 0)
        if self.axis(x) is not None:
            if self.axis(x) != len(self.shape(x)) - 1:
                raise _Stop(f"{where} reads the channels on a non-contracted axis")
            self.add(node.inputs[1], 1 if trans else 0, node, 1)
            self.group.readers.append(node)
        if self.axis(out) is not None:
            if self.axis(out) != len(self.shape(out)) - 1:
                raise _Stop(f"{where} writes the channels on an unexpected axis")
            self.add(node.inputs[1], 0 if trans else 1, node, 1)
            if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
                bias = node.inputs[2]
                if const_array(bias) is None:
                    raise _Stop(f"{where} has a computed bias")
                if self.shape(bias)[-1] != 1:
                    self.add(bias, len(self.shape(bias)) - 1, node, 2)

    _matmul = _linear
    _gemm = _linear

    def _conv(self, node: ir.Node, where: str) -> None:
        weight = const_array(node.inputs[1])
        if weight is None or _int_attr(node, "group", 1) != 1:
            raise _Stop(f"the hidden channels reach {where}, grouped or without a constant weight")
        if self.axis(node.inputs[0]) is not None:
            if self.axis(node.inputs[0]) != 1:
                raise _Stop(f"{where} reads the channels on axis {self.axis(node.inputs[0])}, not 1")
            self.add(node.inputs[1], 1, node, 1)
            self.group.readers.append(node)
        if self.axis(node.outputs[0]) is not None:
            if self.axis(node.outputs[0]) != 1:
                raise _Stop(f"{where} writes the channels on axis {self.axis(node.outputs[0])}, not 1")
            self.add(node.inputs[1], 0, node, 1)
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                self.add(node.inputs[2], 0, node, 2)

    def _gather(self, node: ir.Node, where: str) -> None:
        data, indices, out = node.inputs[0], node.inputs[1], node.outputs[0]
        if self.axis(indices) is not None:
            raise _Stop(f"{where} indexes with the channels")
        rank = len(self.shape(data))
        g = _int_attr(node, "axis", 0) % rank
        extra = len(self.shape(indices)) - 1  # the gathered axis becomes the index axes
        if self.axis(out) is not None:
            a = self.axis(out)
            assert a is not None
            if g <= a <= g + extra:
                raise _Stop(f"{where} gathers along the channels")
            self.add(data, a if a < g else a - extra, node, 0)
        else:
            a = self.axis(data)
            assert a is not None
            if a == g:
                raise _Stop(f"{where} gathers along the channels")
            self.add(out, a if a < g else a + extra)

    def _slice(self, node: ir.Node, where: str) -> None:
        data, out = node.inputs[0], node.outputs[0]
        a = self.axis(out)
        a = self.axis(data) if a is None else a
        assert a is not None
        rank = len(self.shape(data))
        axes = const_array(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
        starts = const_array(node.inputs[1])
        if axes is None and starts is None:
            raise _Stop(f"{where} has computed starts and no axes")
        sliced = ({int(x) % rank for x in axes.reshape(-1)} if axes is not None
                  else set(range(len(starts.reshape(-1)))))  # type: ignore[union-attr]
        if a in sliced:
            raise _Stop(f"{where} slices the channels")
        self.add(data, a, node, 0)
        self.add(out, a)

    def _concat(self, node: ir.Node, where: str) -> None:
        out = node.outputs[0]
        a = self.axis(out)
        if a is None:
            a = next(self.axis(v) for v in node.inputs if self.axis(v) is not None)
        assert a is not None
        if _int_attr(node, "axis", 0) % len(self.shape(out)) == a:
            raise _Stop(f"{where} concatenates along the channels")
        self.add(out, a)
        for index, value in enumerate(node.inputs):
            self.add(value, a, node, index)

    def _transpose(self, node: ir.Node, where: str) -> None:
        x, out = node.inputs[0], node.outputs[0]
        perm = _ints_attr(node, "perm") or list(reversed(range(len(self.shape(x)))))
        if self.axis(out) is not None:
            self.add(x, perm[self.axis(out)], node, 0)  # type: ignore[index]
        else:
            self.add(out, perm.index(self.axis(x)))  # type: ignore[arg-type]

    def _reduce(self, node: ir.Node, where: str) -> None:
        x, out = node.inputs[0], node.outputs[0]
        rank = len(self.shape(x))
        axes = _ints_attr(node, "axes")
        if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
            array = const_array(node.inputs[1])
            if array is None:
                raise _Stop(f"{where} reduces over computed axes")
            axes = [int(v) for v in array.reshape(-1)]
        reduced = set(range(rank)) if not axes else {v % rank for v in axes}
        if not axes and _int_attr(node, "noop_with_empty_axes", 0):
            reduced = set()
        keep = _int_attr(node, "keepdims", 1)
        a = self.axis(x)
        if a is None:  # reached from the output: find the input axis it came from
            b = self.axis(out)
            assert b is not None
            survivors = list(range(rank)) if keep else [i for i in range(rank) if i not in reduced]
            a = survivors[b]
            if a in reduced:
                raise _Stop(f"{where} reduces over the axis that carries the channels")
            self.add(x, a, node, 0)
            return
        if a in reduced:
            return  # statistics over the channels (a decomposed norm, an L2 normalisation): leaves the stream
        self.add(out, a if keep else a - sum(1 for r in reduced if r < a))

    def _reshape(self, node: ir.Node, where: str) -> None:
        x, out = node.inputs[0], node.outputs[0]
        in_shape, out_shape = self.shape(x), self.shape(out)
        width = self.group.width
        if self.axis(x) is not None:
            a = self.axis(x)
            assert a is not None
            b = _matching_axis(in_shape, a, out_shape, width)
        else:
            b = self.axis(out)
            assert b is not None
            a = _matching_axis(out_shape, b, in_shape, width)
        if a is None or b is None:
            raise _Stop(f"{where} merges the hidden channels with another axis")
        if node.op_type == "Reshape":
            entries = self.entries(node, len(out_shape), where)
            entry, position = entries[b] if entries is not None else (None, -1)
            if entry == width:
                self.group.shapes.append((node, 1, position))
            elif entry == 0 and not _int_attr(node, "allowzero", 0) and a != b:
                raise _Stop(f"{where} copies the channel dim from another axis")
        self.add(x, a, node, 0)
        self.add(out, b)

    def _expand(self, node: ir.Node, where: str) -> None:
        x, out = node.inputs[0], node.outputs[0]
        out_shape, in_shape = self.shape(out), self.shape(x)
        b = self.axis(out)
        if b is None:
            a = self.axis(x)
            assert a is not None
            b = a + len(out_shape) - len(in_shape)
            self.add(out, b)
        aligned = b - (len(out_shape) - len(in_shape))
        if aligned >= 0 and in_shape[aligned] != 1:
            self.add(x, aligned, node, 0)
        entries = self.entries(node, None, where)
        if entries is not None:
            position = b - (len(out_shape) - len(entries))
            if 0 <= position < len(entries) and entries[position][0] == self.group.width:
                self.group.shapes.append((node, 1, entries[position][1]))

    def entries(self, node: ir.Node, rank: int | None, where: str) -> list[tuple[int | None, int]] | None:
        """The entries of a shape operand (None where computed) with the position that
        :func:`remap_shape_input` gives each; None for a shape computed at run time as a whole."""
        parts = shape_parts(node.inputs[1])
        if parts is None:
            return None  # e.g. Shape(x) of a stream tensor: follows the pruned width at run time
        entries: list[tuple[int | None, int]] = []
        position = 0
        for part, dims in parts:
            if dims is not None:
                entries.extend((d, position + i) for i, d in enumerate(dims))
                position += len(dims)
                continue
            length = self.shape(part)
            if len(length) != 1:
                raise _Stop(f"{where} has a shape operand that is not understood")
            entries.extend((None, -1) for _ in range(length[0]))
            position += 1
        if rank is not None and len(entries) != rank:
            raise _Stop(f"{where} has a shape operand that is not understood")
        return entries


def _matching_axis(src: tuple[int, ...], a: int, dst: tuple[int, ...], width: int) -> int | None:
    """The axis of ``dst`` that holds axis ``a`` of ``src`` unchanged by a reshape (same size, same
    number of elements before and after it), or None."""
    before, after = int(np.prod(src[:a])), int(np.prod(src[a + 1:]))
    for b, size in enumerate(dst):
        if size == width and int(np.prod(dst[:b])) == before and int(np.prod(dst[b + 1:])) == after:
            return b
    return None
