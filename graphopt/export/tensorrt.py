"""Lowering a reference QDQ graph for TensorRT's explicit-quantization mode (``lower-tensorrt``).

TensorRT quantizes symmetrically (zero point 0, signed INT8 / INT4 codes), runs INT8 kernels for the
inputs of its weighted and quantizable layers, and expects pre-quantized weights behind a
``DequantizeLinear`` in front of the linear op that uses them (NVIDIA, "Working with Quantized Types",
"Explicit Quantization", Q/DQ placement recommendations: quantize all inputs of weighted ops, keep
Q/DQ off the outputs, quantize a residual input only where the Add fuses into a convolution). The pass
rewrites, with ``s`` a scale, ``z`` a zero point, ``[qmin, qmax]`` the code range of the old type:

* activation pairs: ``DQ(Q(x, s, z), s, z) -> DQ(Q(x, s', 0), s', 0)`` in INT8 with
  ``s' = max(|s (qmin - z)|, |s (qmax - z)|) / 127``: the range the pair recorded, made symmetric;
* placement: ``op(DQ(Q(x)))  -> op(x)`` for every consumer that TensorRT does not run in INT8
  (:data:`INT8_INPUTS`); a pair left without consumers is removed;
* 8-bit weights: ``DQ(W_u8, s, 128) -> DQ(W_u8 - 128, s)`` exactly; any other zero point, or a
  per-channel axis other than the consumer's output-channel axis, is re-quantized per channel,
  ``DQ(Wq, s, z) -> DQ(round(W / s_c), s_c)`` with ``W = s (Wq - z)``, ``s_c = max|W_c| / 127``;
* 4-bit blocked weights: symmetric INT4 blocks in front of a MatMul stay; UINT4 with every zero
  point 8 becomes INT4 exactly (``q - 8``); other 4-bit weights are dequantized to
  ``dequantize_dtype`` (``W -> Cast(W16, FLOAT)``) or, with ``int4="symmetric"``, re-quantized to
  symmetric INT4 blocks;
* weights whose DQ feeds no weighted op, and int8 embedding tables ``DQ(Gather(Tq, ids), s)``
  (TensorRT gathers float and integer tensors only): ``-> Cast(Gather(T16, ids), FLOAT)`` with
  ``T16 = float16(s (Tq - z))`` (or float32 storage, then without the Cast).

Every change is counted in :attr:`LowerTensorrtPass.report`; the numerics of the lowered graph are
checked against the input graph by the exporter (onnxruntime on CPU).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx_ir as ir

from graphopt.errors import UsageError
from graphopt.passes import GraphoptPass, PassSettings, register_pass, setting

__all__ = ["INT8_INPUTS", "LowerTensorrtPass", "LowerTensorrtSettings", "int8_input"]

logger = logging.getLogger(__name__)

INSERTED_BY = "graphopt.inserted_by"
INT8_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (0, 1), "ConvTranspose": (0, 1), "MatMul": (0, 1), "Gemm": (0, 1),
    "AveragePool": (0,), "GlobalAveragePool": (0,), "MaxPool": (0,),
}
"""Op -> inputs TensorRT runs in INT8 behind a DequantizeLinear (weighted and pooling layers, per
TensorRT's explicit-quantization guide); ``Add`` counts too when its other input comes from a
convolution (the residual fusion), see :func:`int8_input`."""
_WEIGHTED = ("Conv", "ConvTranspose", "MatMul", "Gemm")
_CODE_RANGES = {ir.DataType.UINT8: (0, 255), ir.DataType.INT8: (-128, 127)}
_DTYPES = {"float16": ir.DataType.FLOAT16, "float32": ir.DataType.FLOAT}


@dataclasses.dataclass(frozen=True)
class LowerTensorrtSettings(PassSettings):
    placement: bool = setting(True, "remove activation Q/DQ pairs in front of ops TensorRT does not run in INT8")
    int4: str = setting("dequantize", "4-bit weights TensorRT cannot take as they are: 'dequantize' or "
                        "'symmetric' (re-quantize to symmetric INT4 blocks)", search=("dequantize", "symmetric"))
    dequantize_dtype: str = setting("float16", "storage of weights and embedding tables dequantized for TensorRT",
                                    search=tuple(_DTYPES))

    def validate(self) -> None:
        if self.int4 not in ("dequantize", "symmetric"):
            raise UsageError(f"lower-tensorrt: int4 must be 'dequantize' or 'symmetric', not {self.int4!r}")
        if self.dequantize_dtype not in _DTYPES:
            raise UsageError(
                f"lower-tensorrt: dequantize_dtype must be float16 or float32, not {self.dequantize_dtype!r}"
            )


def int8_input(node: ir.Node, index: int) -> bool:
    """Whether TensorRT runs input ``index`` of ``node`` in INT8 when it is dequantized."""
    if node.domain not in ("", "ai.onnx"):
        return False
    if index in INT8_INPUTS.get(node.op_type, ()):
        return True
    if node.op_type == "Add" and len(node.inputs) == 2:
        other = node.inputs[1 - index]
        producer = other.producer() if other is not None else None
        return producer is not None and producer.op_type in ("Conv", "ConvTranspose")
    return False


@register_pass
class LowerTensorrtPass(GraphoptPass[LowerTensorrtSettings]):
    """QDQ placement and types that TensorRT's explicit quantization accepts (see the module docstring)."""

    name = "lower-tensorrt"
    Settings = LowerTensorrtSettings
    output_preserving = False

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.report: Counter[str] = Counter()
        """Changes of the last call, by kind (``activations symmetrised``, ``activation Q/DQ pairs removed``...)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.report = Counter()
        graph = model.graph
        low = _DTYPES[self.settings.dequantize_dtype]
        for q in [n for n in graph if _is(n, "QuantizeLinear")]:
            if self.settings.placement:
                self._place(graph, q)
            if q.graph is not None:
                self._symmetrise(graph, q)
        for dq in [n for n in graph if _is(n, "DequantizeLinear") and n.graph is not None]:
            source = dq.inputs[0]
            if source is None:
                continue
            if source.const_value is not None:
                self._weight(graph, dq, low)
            elif (producer := source.producer()) is not None and producer.op_type == "Gather":
                self._embedding(graph, dq, producer, low)
        modified = sum(self.report.values()) > 0
        if modified:
            _drop_unused_initializers(graph)
            graph.sort()
        logger.info("lower-tensorrt: %s", dict(self.report) or "nothing to lower")
        return ir.passes.PassResult(model, modified)

    # activations ---------------------------------------------------------------------------------

    def _place(self, graph: ir.Graph, q: ir.Node) -> None:
        x = q.inputs[0]
        if x is None or x.const_value is not None:
            return
        for dq in list(q.outputs[0].consumers()):
            if not _is(dq, "DequantizeLinear"):
                continue
            out = dq.outputs[0]
            for user, index in list(out.uses()):
                if not int8_input(user, index):
                    user.replace_input_with(index, x)
                    self.report["activation inputs taken off Q/DQ"] += 1
            if not out.uses() and not out.is_graph_output():
                graph.remove(dq, safe=True)
        if not q.outputs[0].uses() and not q.outputs[0].is_graph_output():
            graph.remove(q, safe=True)
            self.report["activation Q/DQ pairs removed"] += 1

    def _symmetrise(self, graph: ir.Graph, q: ir.Node) -> None:
        """Re-quantize a Q and its DQs to INT8 with zero point 0 over the range the pair recorded."""
        scale, zero = _const(q, 1), _const(q, 2)
        code = q.outputs[0]
        if scale is None or (len(q.inputs) > 2 and q.inputs[2] is not None and zero is None):
            return
        dtype = q.inputs[2].dtype if zero is not None and q.inputs[2] is not None else ir.DataType.UINT8
        if dtype not in _CODE_RANGES or (dtype == ir.DataType.INT8 and (zero is None or not np.any(zero))):
            return
        dqs = list(code.consumers())
        if code.is_graph_output() or not all(_is(d, "DequantizeLinear") and _same_params(d, q) for d in dqs):
            logger.warning("lower-tensorrt: %s has consumers other than its DequantizeLinear; left as is", q.name)
            return
        qmin, qmax = _CODE_RANGES[dtype]
        z = zero.astype(np.float64) if zero is not None else 0.0
        s = scale.astype(np.float64)
        amax = np.maximum(np.abs(s * (qmin - z)), np.abs(s * (qmax - z)))
        new_scale = np.where(amax > 0, amax / 127.0, 1.0).astype(scale.dtype)
        base = f"{q.name or code.name}_trt"
        s_value = _initializer(graph, f"{base}_scale", new_scale)
        z_value = _initializer(graph, f"{base}_zp", np.zeros(new_scale.shape, dtype=np.int8))
        for node in (q, *dqs):
            _set_params(node, s_value, z_value)
            node.metadata_props[INSERTED_BY] = self.name
        code.type = ir.TensorType(ir.DataType.INT8)  # a new type: clones share type objects
        self.report["activations symmetrised"] += 1

    # weights -------------------------------------------------------------------------------------

    def _weight(self, graph: ir.Graph, dq: ir.Node, low: ir.DataType) -> None:
        codes = dq.inputs[0]
        assert codes is not None and codes.const_value is not None
        dtype = codes.const_value.dtype
        scale, zero = _const(dq, 1), _const(dq, 2)
        if scale is None or (len(dq.inputs) > 2 and dq.inputs[2] is not None and zero is None):
            return
        uses = list(dq.outputs[0].uses())
        if not uses:
            return
        axes = {_output_axis(user, index, codes) for user, index in uses}
        block = dq.attributes.get_int("block_size", 0)
        axis = dq.attributes.get_int("axis", 1)
        q = codes.const_value.numpy()
        rank = q.ndim
        axis = axis + rank if axis < 0 else axis
        if None in axes or len(axes) != 1 or dq.outputs[0].is_graph_output():
            if dtype in (ir.DataType.INT8, ir.DataType.UINT8, ir.DataType.INT4, ir.DataType.UINT4):
                self._replace_by_float(graph, dq, _dequantize(q, scale, zero, axis, block), low,
                                       "weights dequantized (their DequantizeLinear feeds no weighted op)")
            return
        want = axes.pop()
        assert want is not None
        if dtype in (ir.DataType.INT4, ir.DataType.UINT4):
            self._weight4(graph, dq, q, scale, zero, axis, block, low)
        elif dtype in _CODE_RANGES and not block:
            per_tensor = scale.size == 1
            zero_ok = zero is None or not np.any(zero.astype(np.int64))
            if dtype == ir.DataType.INT8 and zero_ok and (per_tensor or axis == want):
                return
            if (dtype == ir.DataType.UINT8 and zero is not None and np.all(zero.astype(np.int64) == 128)
                    and (per_tensor or axis == want)):
                shifted = (q.astype(np.int16) - 128).astype(np.int8)
                self._set_weight(graph, dq, shifted, scale, axis if not per_tensor else None, None)
                self.report["uint8 weights shifted to int8 (exact)"] += 1
                return
            w = _dequantize(q, scale, zero, axis, 0)
            new_q, new_scale = _symmetric(w, want, 127)
            self._set_weight(graph, dq, new_q.astype(np.int8), new_scale.astype(scale.dtype), want, None)
            self.report["8-bit weights re-quantized symmetric per channel"] += 1
        elif dtype in _CODE_RANGES:
            self._replace_by_float(graph, dq, _dequantize(q, scale, zero, axis, block), low,
                                   "blocked 8-bit weights dequantized (TensorRT blocks 4-bit weights only)")

    def _weight4(self, graph: ir.Graph, dq: ir.Node, q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None,
                 axis: int, block: int, low: ir.DataType) -> None:
        dtype = dq.inputs[0].dtype if dq.inputs[0] is not None else None
        users = list(dq.outputs[0].uses())
        matmul = q.ndim == 2 and all(u.op_type in ("MatMul", "Gemm") and i == 1 for u, i in users)
        zero_ok = zero is None or not np.any(zero.astype(np.int64))
        if dtype == ir.DataType.INT4 and zero_ok and matmul:
            return
        if dtype == ir.DataType.UINT4 and zero is not None and np.all(zero.astype(np.int64) == 8) and matmul:
            self._set_weight(graph, dq, (q.astype(np.int8) - 8), scale, axis, block, ir.DataType.INT4)
            self.report["uint4 weights shifted to int4 (exact)"] += 1
            return
        w = _dequantize(q, scale, zero, axis, block)
        if self.settings.int4 == "symmetric" and matmul and block:
            new_q, new_scale = _symmetric_blocks(w, axis, block, 7)
            self._set_weight(graph, dq, new_q, new_scale.astype(scale.dtype), axis, block, ir.DataType.INT4)
            self.report["4-bit weights re-quantized to symmetric int4 blocks"] += 1
            return
        self._replace_by_float(graph, dq, w, low, "4-bit weights dequantized (TensorRT takes symmetric INT4 "
                               "blocks only, in front of a MatMul)")

    def _set_weight(self, graph: ir.Graph, dq: ir.Node, q: np.ndarray, scale: np.ndarray, axis: int | None,
                    block: int | None, dtype: ir.DataType | None = None) -> None:
        codes = dq.inputs[0]
        assert codes is not None
        base = f"{codes.name or dq.name}_trt"
        new_codes = _initializer(graph, base, q, dtype)
        dq.replace_input_with(0, new_codes)
        dq.replace_input_with(1, _initializer(graph, f"{base}_scale", scale))
        if len(dq.inputs) > 2:
            dq.resize_inputs(2)
        if axis is not None:
            dq.attributes["axis"] = ir.AttrInt64("axis", axis)
        else:
            dq.attributes.pop("axis", None)
        if block:
            dq.attributes["block_size"] = ir.AttrInt64("block_size", block)
        dq.metadata_props[INSERTED_BY] = self.name

    # float replacements --------------------------------------------------------------------------

    def _replace_by_float(self, graph: ir.Graph, dq: ir.Node, w: np.ndarray, low: ir.DataType, reason: str) -> None:
        base = f"{dq.inputs[0].name if dq.inputs[0] is not None else dq.name}_f"
        out = dq.outputs[0]
        stored = _initializer(graph, base, w.astype(low.numpy()))
        replacement = stored if low == ir.DataType.FLOAT else self._cast(graph, dq, stored, out)
        _reroute(out, replacement)
        if not out.uses() and not out.is_graph_output():
            graph.remove(dq, safe=True)
        self.report[reason] += 1

    def _embedding(self, graph: ir.Graph, dq: ir.Node, gather: ir.Node, low: ir.DataType) -> None:
        """``DQ(Gather(Tq, ids), s, z) -> Cast(Gather(T, ids))`` with ``T = s (Tq - z)`` stored in ``low``."""
        table, ids = gather.inputs[0], gather.inputs[1] if len(gather.inputs) > 1 else None
        scale, zero = _const(dq, 1), _const(dq, 2)
        if table is None or ids is None or table.const_value is None or scale is None:
            return
        if table.const_value.dtype not in _CODE_RANGES or gather.attributes.get_int("axis", 0) != 0:
            return
        q = table.const_value.numpy()
        axis = dq.attributes.get_int("axis", 1)
        out = dq.outputs[0]
        last = out.shape.rank() - 1 if out.shape is not None else -1
        if scale.size != 1 and (q.ndim != 2 or scale.shape != (q.shape[1],) or axis not in (-1, last)):
            return
        w = _dequantize(q, scale, zero, q.ndim - 1, 0)
        stored = _initializer(graph, f"{table.name or gather.name}_f", w.astype(low.numpy()))
        node = ir.Node("", "Gather", [stored, ids], attributes=[ir.AttrInt64("axis", 0)],
                       name=f"{gather.name or 'gather'}_trt", metadata_props={INSERTED_BY: self.name})
        gathered = node.outputs[0]
        gathered.name, gathered.dtype, gathered.shape = f"{out.name}_trt_gather", low, out.shape
        graph.insert_before(dq, node)
        replacement = gathered if low == ir.DataType.FLOAT else self._cast(graph, dq, gathered, out)
        _reroute(out, replacement)
        if not out.uses() and not out.is_graph_output():
            graph.remove(dq, safe=True)
            if not gather.outputs[0].uses():
                graph.remove(gather, safe=True)
        self.report["int8 embedding tables dequantized (TensorRT gathers float tables)"] += 1

    def _cast(self, graph: ir.Graph, anchor: ir.Node, value: ir.Value, like: ir.Value) -> ir.Value:
        cast = ir.Node("", "Cast", [value], attributes=[ir.AttrInt64("to", ir.DataType.FLOAT)],
                       name=f"{like.name}_trt_cast", metadata_props={INSERTED_BY: self.name})
        result = cast.outputs[0]
        result.name, result.dtype, result.shape = f"{like.name}_trt_f32", ir.DataType.FLOAT, like.shape
        graph.insert_before(anchor, cast)
        return result


def _is(node: ir.Node, op: str) -> bool:
    return node.op_type == op and node.domain in ("", "ai.onnx")


def _const(node: ir.Node, index: int) -> np.ndarray | None:
    value = node.inputs[index] if len(node.inputs) > index else None
    if value is None or value.const_value is None:
        return None
    return np.asarray(value.const_value.numpy())


def _same_params(dq: ir.Node, q: ir.Node) -> bool:
    pairs = [(_const(dq, i), _const(q, i)) for i in (1, 2)]
    same = all(a is b or (a is not None and b is not None and np.array_equal(a, b)) for a, b in pairs)
    return same and dq.attributes.get_int("axis", 1) == q.attributes.get_int("axis", 1)


def _set_params(node: ir.Node, scale: ir.Value, zero: ir.Value) -> None:
    node.replace_input_with(1, scale)
    if len(node.inputs) > 2:
        node.replace_input_with(2, zero)
    else:
        node.resize_inputs(3)
        node.replace_input_with(2, zero)


def _output_axis(user: ir.Node, index: int, codes: ir.Value) -> int | None:
    """The output-channel axis of a weight fed to input ``index`` of ``user``, None if not a weighted op."""
    if user.domain not in ("", "ai.onnx") or user.op_type not in _WEIGHTED or index != 1:
        return None
    rank = len(codes.shape) if codes.shape is not None else 2
    if user.op_type == "MatMul":
        return rank - 1
    if user.op_type == "Gemm":
        return 0 if user.attributes.get_int("transB", 0) else 1
    return 0 if user.op_type == "Conv" else 1


def _expand(params: np.ndarray, shape: tuple[int, ...], axis: int, block: int) -> np.ndarray:
    """Scale or zero point broadcast to the weight's shape (per tensor, per ``axis`` or in blocks along it)."""
    params = np.asarray(params)
    if params.size == 1:
        return params.reshape(())
    if block:
        return np.repeat(params, block, axis=axis)[tuple(slice(0, n) for n in shape)]
    view = [1] * len(shape)
    view[axis] = -1
    return params.reshape(view)


def _dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int, block: int) -> np.ndarray:
    codes = q.astype(np.float64)
    if zero is not None:
        codes = codes - _expand(zero.astype(np.float64), q.shape, axis, block)
    return codes * _expand(scale.astype(np.float64), q.shape, axis, block)


def _symmetric(w: np.ndarray, axis: int, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric codes along ``axis``: ``scale_c = max |w_c| / qmax``."""
    others = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=others) if others else np.abs(w)
    scale = np.where(amax > 0, amax / qmax, 1.0)
    q = np.clip(np.rint(w / _expand(scale, w.shape, axis, 0)), -qmax, qmax)
    return q, scale.astype(np.float32)


def _symmetric_blocks(w: np.ndarray, axis: int, block: int, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric blocks of ``block`` elements along ``axis`` of a 2-D weight."""
    moved = np.moveaxis(w, axis, 0)
    n = moved.shape[0]
    pad = (-n) % block
    padded = np.concatenate([moved, np.zeros((pad, *moved.shape[1:]))]) if pad else moved
    amax = np.abs(padded.reshape(-1, block, *moved.shape[1:])).max(axis=1)
    scale = np.where(amax > 0, amax / qmax, 1.0)
    scale_t = np.moveaxis(scale, 0, axis)
    q = np.clip(np.rint(w / _expand(scale_t, w.shape, axis, block)), -qmax, qmax).astype(np.int8)
    return q, scale_t.astype(np.float32)


def _fresh(graph: ir.Graph, base: str) -> str:
    taken = set(graph.initializers) | {v.name for n in graph for v in n.outputs if v.name}
    index = 1
    while f"{base}_{index}" in taken:
        index += 1
    return f"{base}_{index}"


def _initializer(graph: ir.Graph, base: str, array: np.ndarray, dtype: ir.DataType | None = None) -> ir.Value:
    name = base if base not in graph.initializers else _fresh(graph, base)
    tensor = ir.Tensor(np.ascontiguousarray(array), dtype=dtype, name=name)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value


def _reroute(old: ir.Value, new: ir.Value) -> None:
    """Every use of ``old`` reads ``new``; a graph output keeps its name."""
    name = old.name
    ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
    if old.is_graph_output() or name is None or not any(v is new for v in _graph_outputs(new)):
        return
    old.name, new.name = f"{name}_replaced", name


def _graph_outputs(value: ir.Value) -> list[ir.Value]:
    graph = value.graph
    return list(graph.outputs) if graph is not None else []


def _drop_unused_initializers(graph: ir.Graph) -> None:
    outputs = {v.name for v in graph.outputs}
    inputs = {v.name for v in graph.inputs}
    unused: Iterable[str] = [name for name, v in graph.initializers.items()
                             if not v.uses() and name not in outputs and name not in inputs]
    for name in list(unused):
        graph.initializers.pop(name)
