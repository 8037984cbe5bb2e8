"""Graph edits shared by the pruning passes: reading constant weights, slicing them per node, and
rewriting the shape constants (``Reshape``/``Expand``/``Split``) that carry a pruned width.

A constant read by other nodes is never modified in place: the pruned node gets its own new
initializer (``W -> W[..., keep]``), so that shared tensors (tied embeddings, one ``Reshape`` target
used by every layer) stay valid for their other readers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx_ir as ir

__all__ = ["clear_intermediate_shapes", "const_array", "remap_shape_input", "replace_const_input", "shape_parts"]

_PASSTHROUGH = frozenset({"Transpose", "Cast", "Identity"})


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The numpy value of a constant (initializer, ``Constant``, or a Transpose/Cast of one), else None."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is None or producer.domain not in ("", "ai.onnx"):
        return None
    if producer.op_type == "Constant":
        attr = producer.attributes.get("value")
        return attr.value.numpy() if attr is not None else None
    if producer.op_type in _PASSTHROUGH and producer.inputs:
        inner = const_array(producer.inputs[0])
        if inner is None:
            return None
        if producer.op_type == "Transpose":
            perm = producer.attributes.get("perm")
            return np.transpose(inner, tuple(perm.value) if perm is not None else None)
        if producer.op_type == "Cast":
            return None  # a dtype change we would have to reproduce; not worth it here
        return inner
    return None


def _unique_name(graph: ir.Graph, hint: str) -> str:
    taken = set(graph.initializers)
    base = f"{hint}.pruned"
    name, index = base, 1
    while name in taken:
        index += 1
        name = f"{base}{index}"
    return name


def _shared_shape(graph: ir.Graph, array: np.ndarray) -> ir.Value | None:
    """An earlier pruned shape constant equal to ``array`` (the blocks pruned alike share one)."""
    if array.dtype != np.int64 or array.ndim != 1:
        return None
    for name, value in graph.initializers.items():
        tensor = value.const_value
        if ".pruned" not in name or tensor is None or tensor.dtype != ir.DataType.INT64:
            continue
        if tensor.shape == array.shape and np.array_equal(tensor.numpy(), array):
            return value
    return None


def replace_const_input(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray, hint: str) -> ir.Value:
    """Give ``node`` a new initializer holding ``array`` at input ``index``; the old one is untouched.

    Shape constants (1-D int64) equal to one made earlier by pruning are shared instead."""
    shared = _shared_shape(graph, array)
    if shared is not None:
        node.replace_input_with(index, shared)
        return shared
    value = ir.Value(name=_unique_name(graph, hint or "w"), const_value=ir.tensor(np.ascontiguousarray(array)))
    value.shape = ir.Shape(array.shape)
    value.dtype = ir.DataType.from_numpy(array.dtype)
    graph.register_initializer(value)
    node.replace_input_with(index, value)
    return value


def shape_parts(value: ir.Value | None) -> list[tuple[ir.Value, list[int] | None]] | None:
    """A shape operand as parts: one constant, or the inputs of a ``Concat`` (constant parts as lists)."""
    if value is None:
        return None
    array = const_array(value)
    if array is not None:
        return [(value, [int(v) for v in array.reshape(-1)])]
    producer = value.producer()
    if producer is None or producer.op_type != "Concat":
        return None
    parts: list[tuple[ir.Value, list[int] | None]] = []
    for part in producer.inputs:
        if part is None:
            return None
        part_array = const_array(part)
        parts.append((part, None if part_array is None else [int(v) for v in part_array.reshape(-1)]))
    return parts


def remap_shape_input(graph: ir.Graph, node: ir.Node, index: int,
                      remap: Callable[[int, int, int], int]) -> bool:
    """Rewrite the constant entries of shape operand ``index`` of ``node`` with ``remap(position, rank, dim)``.

    Dynamic entries (from ``Shape``) are kept. When anything changes, ``node`` gets its own new
    constant (or a new ``Concat`` of new constant parts); returns whether it changed.
    """
    parts = shape_parts(node.inputs[index] if len(node.inputs) > index else None)
    if parts is None:
        return False
    rank = 0
    for _part, dims in parts:
        rank += len(dims) if dims is not None else 1
    position, changed = 0, False
    new_parts: list[tuple[ir.Value, list[int] | None, bool]] = []
    for part, dims in parts:
        if dims is None:
            new_parts.append((part, None, False))
            position += 1
            continue
        new = [remap(position + i, rank, d) for i, d in enumerate(dims)]
        position += len(dims)
        differs = new != dims
        changed = changed or differs
        new_parts.append((part, new, differs))
    if not changed:
        return False
    source = node.inputs[index]
    assert source is not None
    if len(new_parts) == 1 and new_parts[0][1] is not None:
        replace_const_input(graph, node, index, np.array(new_parts[0][1], dtype=np.int64), source.name or "shape")
        return True
    inputs: list[ir.Value] = []
    for part, dims, differs in new_parts:
        if differs and dims is not None:
            array = np.array(dims, dtype=np.int64)
            new_value = _shared_shape(graph, array)
            if new_value is None:
                new_value = ir.Value(name=_unique_name(graph, part.name or "shape"), const_value=ir.tensor(array))
                new_value.shape, new_value.dtype = ir.Shape([len(dims)]), ir.DataType.INT64
                graph.register_initializer(new_value)
            inputs.append(new_value)
        else:
            inputs.append(part)
    concat = ir.node("Concat", inputs, attributes={"axis": 0}, name=f"{node.name or 'node'}.pruned_shape")
    concat.outputs[0].name = f"{node.name or 'node'}.pruned_shape_out"
    graph.insert_before(node, concat)
    node.replace_input_with(index, concat.outputs[0])
    return True


def clear_intermediate_shapes(graph: ir.Graph, keep: Sequence[ir.Value] = ()) -> None:
    """Forget the recorded shapes of computed values (stale after pruning); graph inputs/outputs keep theirs."""
    protected = {*graph.inputs, *graph.outputs, *keep}
    for node in graph:
        for out in node.outputs:
            if out not in protected:
                out.shape = None
