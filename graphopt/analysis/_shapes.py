"""Concrete shapes for analysis: a private copy of the model, its inputs fixed, shapes inferred.

``concrete_copy(model, shapes)`` clones the model (tensors are shared, never copied), gives every
graph input a concrete shape (the user's, else dynamic dims become 1 on axis 0 and 128 elsewhere),
forgets the shapes the exporter declared on intermediate values and infers them again:

1. ``onnx.shape_inference`` with data propagation on the whole graph (large initializers are
   turned into typed inputs first so that models above 2 GB work); strict first, lenient if that
   fails (the failure is reported).
2. A topological walk over the values still unknown: onnxruntime contrib ops (``com.microsoft``
   attention, normalisation, activation and ``MatMulNBits`` kernels, which ONNX does not know) by
   the rules of ``_contrib_shapes``, standard ops node by node with ``infer_node_outputs``, fed
   with small integer tensors evaluated on the way (``Shape -> Gather -> Concat -> Reshape``), so
   that inference goes on after a contrib op.
3. Whatever is still unknown keeps its declared shape with the input dims substituted.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from graphopt.errors import UsageError

__all__ = ["DEFAULT_BATCH", "DEFAULT_SEQUENCE", "ConcreteModel", "concrete_copy", "static_shape"]

logger = logging.getLogger(__name__)

DEFAULT_BATCH = 1
DEFAULT_SEQUENCE = 128
_BIG_TENSOR_BYTES = 1024
_MS = "com.microsoft"

_SAME_AS_INPUT = frozenset({
    "BiasAdd", "BiasGelu", "FastGelu", "Gelu", "QuickGelu", "RotaryEmbedding", "LayerNormalization",
    "SimplifiedLayerNormalization", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
})


@dataclasses.dataclass
class ConcreteModel:
    """A private copy of the model with concrete shapes on as many values as inference reached."""

    model: ir.Model
    input_shapes: dict[str, tuple[int, ...]]
    problems: list[str]


def static_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    """The value's shape if every dim is a known integer, else ``None``."""
    if value is None:
        return None
    shape: Any = value.shape
    if shape is None and value.const_value is not None:
        shape = value.const_value.shape
    if shape is None:
        return None
    dims = tuple(shape)
    if all(isinstance(d, int) and d >= 0 for d in dims):
        return dims  # type: ignore[return-value]
    return None


def concrete_copy(model: ir.Model, shapes: Mapping[str, tuple[int, ...]] | None = None) -> ConcreteModel:
    """Clone ``model`` and infer concrete shapes on the clone; ``model`` itself is not touched."""
    from onnx_ir.passes.common import InlinePass, NameFixPass

    work = model.clone()
    if work.functions:
        InlinePass()(work)
    if any(not n.name for n in work.graph.all_nodes()) or any(
        not v.name for g in work.graphs() for v in _graph_values(g)
    ):
        NameFixPass()(work)  # reports name nodes; serialising for inference needs value names
    problems: list[str] = []
    input_shapes, dim_values = _fix_inputs(work, dict(shapes or {}), problems)
    declared = {}
    for graph in work.graphs():
        for node in graph:
            for out in node.outputs:
                declared[out] = out.shape
                out.shape = None
    _infer_whole_graph(work, problems)
    unknown = _walk_unknown(work)
    for value, shape in declared.items():
        if value.shape is None and shape is not None:
            dims = [dim_values.get(d.value or "", d) if isinstance(d, ir.SymbolicDim) else d for d in shape]
            value.shape = ir.Shape(dims)
    if unknown:
        logger.debug("shapes still unknown after inference: %d values", unknown)
    return ConcreteModel(work, input_shapes, problems)


def _graph_values(graph: ir.Graph) -> list[ir.Value]:
    values = list(graph.inputs)
    for node in graph:
        values.extend(node.outputs)
    return values


def _fix_inputs(
    work: ir.Model, shapes: dict[str, tuple[int, ...]], problems: list[str]
) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    graph = work.graph
    real_inputs = [v for v in graph.inputs if v.name not in graph.initializers]
    names = {v.name or "" for v in real_inputs}
    unknown = sorted(set(shapes) - names)
    if unknown:
        raise UsageError(
            f"shapes given for unknown inputs: {', '.join(unknown)} (inputs: {', '.join(sorted(names))})"
        )
    dim_values: dict[str, int] = {}
    # Named dims given by the user fix the same names everywhere (``batch`` on every input).
    for value in real_inputs:
        if value.name in shapes and value.shape is not None:
            given = shapes[value.name]
            if len(given) != value.shape.rank():
                raise UsageError(
                    f"shape {list(given)} for input {value.name!r} has rank {len(given)}, "
                    f"the model's input has rank {value.shape.rank()}"
                )
            for axis, (dim, size) in enumerate(zip(value.shape, given)):
                if isinstance(dim, int) and dim != size:
                    raise UsageError(
                        f"shape {list(given)} for input {value.name!r}: axis {axis} is fixed to {dim} "
                        "in the model"
                    )
                if isinstance(dim, ir.SymbolicDim) and dim.value:
                    dim_values.setdefault(dim.value, size)
    used: dict[str, tuple[int, ...]] = {}
    for value in real_inputs:
        assert value.name is not None
        if value.name in shapes:
            concrete = tuple(shapes[value.name])
        elif value.shape is None:
            problems.append(f"input {value.name!r} has unknown rank; give its shape")
            continue
        else:
            dims = []
            for axis, dim in enumerate(value.shape):
                if isinstance(dim, int):
                    dims.append(dim)
                    continue
                default = DEFAULT_BATCH if axis == 0 else DEFAULT_SEQUENCE
                if dim.value:
                    default = dim_values.setdefault(dim.value, default)
                dims.append(default)
            concrete = tuple(dims)
        value.shape = ir.Shape(concrete)
        used[value.name] = concrete
    return used, dim_values


def _infer_whole_graph(work: ir.Model, problems: list[str]) -> None:
    probe = work.clone()
    graph = probe.graph
    for init in list(graph.initializers.values()):
        tensor = init.const_value
        if tensor is not None:
            init.shape = init.shape or tensor.shape  # type: ignore[assignment]
            init.dtype = init.dtype or tensor.dtype
        if init not in graph.inputs:
            graph.inputs.append(init)
        if tensor is None or tensor.nbytes > _BIG_TENSOR_BYTES:
            init.const_value = None
            assert init.name is not None
            graph.initializers.pop(init.name)
    proto = ir.serde.serialize_model(probe)
    try:
        inferred = _infer(proto, strict=True)
    except Exception as exc:  # onnx raises InferenceError, ValidationError or RuntimeError
        problems.append(f"shape inference stopped early: {_first_line(exc)}")
        try:
            inferred = _infer(proto, strict=False)
        except Exception as exc2:
            problems.append(f"shape inference failed: {_first_line(exc2)}")
            return
    inferred_model = ir.serde.deserialize_model(inferred)
    for work_graph, inferred_graph in zip(work.graphs(), inferred_model.graphs()):
        found = ir.convenience.create_value_mapping(inferred_graph)
        for node in work_graph:
            for out in node.outputs:
                match = found.get(out.name or "")
                if match is None or match.shape is None:
                    continue
                out.shape = match.shape
                if out.dtype is None and match.dtype is not None:
                    out.dtype = match.dtype


def _infer(proto: onnx.ModelProto, *, strict: bool) -> onnx.ModelProto:
    return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=strict, data_prop=True)


def _walk_unknown(work: ir.Model) -> int:
    """Infer, node by node in order, the outputs that whole-graph inference left unknown.

    Small integer tensors (``Shape`` results and what is computed from them) are evaluated on the
    way, so that a ``Reshape`` after a contrib op still gets its target shape.
    """
    opsets = [onnx.helper.make_opsetid(d, v) for d, v in work.opset_imports.items()]
    version = work.opset_imports.get("", work.opset_imports.get("ai.onnx", 1))
    known: dict[ir.Value, np.ndarray] = {}
    unknown = 0
    try:
        work.graph.sort()
    except Exception:  # a cycle; validate_model rejects those, keep the stored order
        logger.debug("graph could not be sorted; walking it in stored order")
    for node in work.graph:
        _propagate_data(node, known)
        outputs = [o for o in node.outputs if o.name]
        if not outputs or all(static_shape(o) is not None for o in outputs):
            continue
        if node.domain == _MS:
            _contrib_shapes(node)
        elif node.domain in ("", "ai.onnx") and not _has_subgraph(node):
            _standard_shapes(node, version, opsets, known)
        unknown += sum(1 for o in outputs if static_shape(o) is None)
    return unknown


def _small_value(value: ir.Value | None, known: dict[ir.Value, np.ndarray]) -> np.ndarray | None:
    if value is None:
        return None
    if value in known:
        return known[value]
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is None or tensor.size > _SMALL_VALUE:
        return None
    if not (tensor.dtype.is_integer() or tensor.dtype == ir.DataType.BOOL):
        return None
    array = tensor.numpy()
    known[value] = array
    return array


def _propagate_data(node: ir.Node, known: dict[ir.Value, np.ndarray]) -> None:
    """Evaluate shape arithmetic on small integer tensors (a tiny subset of ONNX, numpy-based)."""
    if node.domain not in ("", "ai.onnx") or not node.outputs:
        return
    op = node.op_type
    if op == "Shape":
        shape = static_shape(node.inputs[0])
        if shape is not None:
            start, end = _int_attr(node, "start", 0), node.attributes.get("end")
            dims = shape[start:end.value if end is not None else None]
            known[node.outputs[0]] = np.array(dims, dtype=np.int64)
        return
    if op == "Size":
        shape = static_shape(node.inputs[0])
        if shape is not None:
            known[node.outputs[0]] = np.array(int(np.prod(shape)), dtype=np.int64)
        return
    if op not in _EVALUATORS:
        return
    args = [_small_value(v, known) if v is not None else None for v in node.inputs]
    if any(a is None for a, v in zip(args, node.inputs) if v is not None):
        return
    try:
        result = _EVALUATORS[op](node, *args)
    except Exception:  # malformed shape arithmetic: leave it to shape inference
        return
    if result is not None and result.size <= _SMALL_VALUE:
        known[node.outputs[0]] = result
        if static_shape(node.outputs[0]) is None:
            node.outputs[0].shape = ir.Shape(result.shape)


def _axes(node: ir.Node, given: np.ndarray | None) -> list[int]:
    if given is not None:
        return [int(a) for a in given.reshape(-1)]
    return list(_ints_attr(node, "axes"))


def _slice(node: ir.Node, data, starts, ends, axes=None, steps=None):
    index = [slice(None)] * data.ndim
    axes_list = [int(a) for a in axes] if axes is not None else list(range(len(starts)))
    for i, axis in enumerate(axes_list):
        step = int(steps[i]) if steps is not None else 1
        index[axis] = slice(int(starts[i]), int(ends[i]), step)
    return data[tuple(index)]


def _unsqueeze(node: ir.Node, data, axes=None):
    out = data
    rank = data.ndim + len(_axes(node, axes))
    for axis in sorted(a % rank for a in _axes(node, axes)):
        out = np.expand_dims(out, axis)
    return out


def _squeeze(node: ir.Node, data, axes=None):
    given = _axes(node, axes)
    return np.squeeze(data, axis=tuple(given)) if given else np.squeeze(data)


def _reshape(node: ir.Node, data, shape):
    target = [int(d) for d in shape]
    if not _int_attr(node, "allowzero", 0):
        target = [data.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return data.reshape(target)


_SMALL_VALUE = 64
_EVALUATORS: dict[str, Callable[..., Any]] = {
    "Identity": lambda n, x: x,
    "Cast": lambda n, x: x.astype(ir.DataType(_int_attr(n, "to")).numpy()),
    "Gather": lambda n, x, i: np.take(x, i, axis=_int_attr(n, "axis", 0)),
    "Concat": lambda n, *xs: np.concatenate([np.atleast_1d(x) for x in xs], axis=_int_attr(n, "axis", 0)),
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Slice": _slice,
    "Reshape": _reshape,
    "Add": lambda n, a, b: a + b,
    "Sub": lambda n, a, b: a - b,
    "Mul": lambda n, a, b: a * b,
    "Div": lambda n, a, b: a // b if a.dtype.kind in "iu" else a / b,
    "Equal": lambda n, a, b: np.equal(a, b),
    "Where": lambda n, c, a, b: np.where(c, a, b),
    "Max": lambda n, *xs: np.maximum.reduce(xs),
    "Min": lambda n, *xs: np.minimum.reduce(xs),
    "ConstantOfShape": lambda n, s: np.full([int(d) for d in s], _fill_value(n)),
    "Range": lambda n, a, b, d: np.arange(a, b, d),
    "ReduceProd": lambda n, x, *axes: np.prod(x, keepdims=bool(_int_attr(n, "keepdims", 1))),
}


def _fill_value(node: ir.Node) -> Any:
    attr = node.attributes.get("value")
    return attr.value.numpy().reshape(-1)[0] if attr is not None else np.float32(0)


def _standard_shapes(
    node: ir.Node, version: int, opsets: list[onnx.OperatorSetIdProto], known: dict[ir.Value, np.ndarray]
) -> None:
    try:
        schema = onnx.defs.get_schema(node.op_type, version, "")
    except onnx.defs.SchemaError:
        return
    input_types: dict[str, onnx.TypeProto] = {}
    input_data: dict[str, onnx.TensorProto] = {}
    for value in node.inputs:
        if value is None or not value.name:
            continue
        if value.dtype is None or value.shape is None:
            return
        dims = [d if isinstance(d, int) else (d.value or None) for d in value.shape]
        input_types[value.name] = onnx.helper.make_tensor_type_proto(value.dtype.value, dims)
        data = _small_value(value, known)
        if data is not None:
            input_data[value.name] = onnx.numpy_helper.from_array(np.asarray(data), value.name)
    try:
        result = onnx.shape_inference.infer_node_outputs(
            schema, ir.serde.serialize_node(node), input_types, input_data, opset_imports=opsets
        )
    except Exception:  # inference errors surface later as uncounted nodes
        return
    for out in node.outputs:
        type_proto = result.get(out.name or "")
        if type_proto is None or not type_proto.tensor_type.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in type_proto.tensor_type.shape.dim]
        known_dims = sum(isinstance(d, int) for d in dims)
        if out.shape is None or known_dims >= sum(isinstance(d, int) for d in out.shape):
            out.shape = ir.Shape(dims)
        if out.dtype is None and type_proto.tensor_type.elem_type:
            out.dtype = ir.DataType(type_proto.tensor_type.elem_type)


def _contrib_shapes(node: ir.Node) -> None:
    """Output shapes of the onnxruntime contrib kernels that attention/MLP analysis meets."""
    inputs = list(node.inputs)
    first = static_shape(inputs[0]) if inputs else None
    if first is None:
        return
    op = node.op_type
    shape: tuple[int, ...] | None = None
    if op in _SAME_AS_INPUT:
        shape = first
        for index, out in enumerate(node.outputs[1:], start=1):
            if out.name and out.shape is None:  # mean and inv_std_var, then input + skip (+ bias)
                out.shape = ir.Shape(first if index == 3 else (*first[:-1], 1))
    elif op == "MatMulNBits":
        shape = (*first[:-1], _int_attr(node, "N"))
    elif op == "Attention" and len(inputs) > 1:
        weight = static_shape(inputs[1])
        hidden = _ints_attr(node, "qkv_hidden_sizes")
        if hidden:
            shape = (*first[:2], hidden[2])
        elif weight is not None:
            shape = (*first[:2], weight[-1] // 3)
    elif op == "MultiHeadAttention":
        value = static_shape(inputs[2]) if len(inputs) > 2 else None
        heads = _int_attr(node, "num_heads")
        if len(first) == 5:  # packed QKV [B, S, N, 3, H]
            shape = (first[0], first[1], first[2] * first[4])
        elif value is not None and len(value) == 4:
            shape = (*first[:2], value[1] * value[3])
        elif value is not None and len(value) == 3:
            shape = (*first[:2], value[2])
        elif heads:
            shape = first
    elif op == "GroupQueryAttention":
        heads, kv_heads = _int_attr(node, "num_heads"), _int_attr(node, "kv_num_heads")
        has_key = len(inputs) > 1 and inputs[1] is not None
        if heads:
            head = first[-1] // heads if has_key else first[-1] // (heads + 2 * kv_heads)
            shape = (*first[:2], heads * head)
    elif op == "EmbedLayerNormalization" and len(inputs) > 2:
        table = static_shape(inputs[2])
        if table is not None:
            shape = (*first[:2], table[-1])
    if shape is not None:
        node.outputs[0].shape = ir.Shape(shape)
        dtype = inputs[0].dtype if inputs[0] is not None else None
        if node.outputs[0].dtype is None and op != "EmbedLayerNormalization" and dtype is not None:
            node.outputs[0].dtype = dtype


def _has_subgraph(node: ir.Node) -> bool:
    return any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values())


def _int_attr(node: ir.Node, name: str, default: int = 0) -> int:
    attr = node.attributes.get(name)
    return int(attr.value) if attr is not None else default


def _ints_attr(node: ir.Node, name: str) -> tuple[int, ...]:
    attr = node.attributes.get(name)
    return tuple(int(v) for v in attr.value) if attr is not None else ()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:300]
    return type(exc).__name__
