"""Low-precision floating point: fp16 / bf16 compute with fp32 fallback ops, and fp8 (E4M3) weights.

``quantize-float`` (``dtype=float16|bfloat16``):

* ``compute=true``: every node whose op is in a list of precision-agnostic ops (MatMul, Gemm,
  Add, Mul, Gelu, Transpose, Reshape, ...) and not in ``keep_fp32`` computes in ``dtype``: its
  float32 inputs are cast, ``Cast(x, to=dtype)`` (float32 initializers read only by such nodes are
  converted in place instead), its float outputs become ``dtype``; every other node reading a
  converted value gets ``Cast(v, to=FLOAT)`` in front, and graph inputs and outputs stay float32.
  ``keep_fp32`` defaults to the numerically sensitive ops: LayerNormalization, Softmax,
  reductions, Exp, Log, Pow, Sqrt and Clip (whose bounds, such as 1e-9, underflow in fp16).
* ``compute=false``: weight storage only, ``W -> Cast(W_low, to=FLOAT)`` for float32
  initializers of at least ``min_elements`` elements; the arithmetic stays float32 (onnxruntime's
  CPU provider has no bfloat16 MatMul, so this is the bf16 form that runs there).

``quantize-fp8``: ``MatMul(x, W) -> MatMul(x, DequantizeLinear(W8, s, axis=1))`` with ``W8``
FLOAT8E4M3FN codes and ``s = max_k |W[k, n]| / 448`` per output column (per row for Gather
tables with ``embeddings``); FLOAT8 needs opset 19, the pass raises the import to 21 like
``quantize-weights``.
"""

from __future__ import annotations

import dataclasses
import logging

import ml_dtypes
import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common

from graphopt.errors import UsageError
from graphopt.passes import GraphoptPass, PassSettings, register_pass, setting
from graphopt.rewrites.quantize_weights import (
    QuantizedWeight,
    emit_weight,
    find_weights,
    opset_ready,
    raise_opset,
    record_quantization,
    replace_weight,
    weight_skip_reason,
)

__all__ = ["QuantizeFloatPass", "QuantizeFloatSettings", "QuantizeFp8Pass", "QuantizeFp8Settings", "fp8_weight"]

logger = logging.getLogger(__name__)

_INSERTED_BY = "graphopt.inserted_by"
_LOW_OPS = frozenset({
    "Abs", "Add", "AveragePool", "Clip", "Concat", "Conv", "Div", "Erf", "Exp", "Expand", "Flatten", "Gather",
    "Gelu", "Gemm", "GlobalAveragePool", "LayerNormalization", "Log", "MatMul", "Max", "MaxPool", "Min", "Mul",
    "Neg", "Pow", "ReduceMean", "ReduceSum", "Relu", "Reshape", "Sigmoid", "Slice", "Softmax", "Split", "Sqrt",
    "Squeeze", "Sub", "Tanh", "Transpose", "Unsqueeze", "Where",
})
"""Ops that may compute in fp16 / bf16 (all their float inputs and outputs switch together)."""
_ANY_FLOAT_OPS = frozenset({"Cast", "IsInf", "IsNaN", "Shape", "Size"})
"""Ops that read any float type as it is: neither cast for nor cast after."""
_SENSITIVE = ("Clip", "Exp", "LayerNormalization", "Log", "Pow", "ReduceL2", "ReduceMean", "ReduceSum", "Softmax",
              "Sqrt")
_DTYPES = {"float16": ir.DataType.FLOAT16, "bfloat16": ir.DataType.BFLOAT16}
_NUMPY = {ir.DataType.FLOAT16: np.float16, ir.DataType.BFLOAT16: ml_dtypes.bfloat16}
_FP8_MAX = 448.0


@dataclasses.dataclass(frozen=True)
class QuantizeFloatSettings(PassSettings):
    dtype: str = setting("float16", "float16 or bfloat16", search=("float16", "bfloat16"))
    compute: bool = setting(True, "compute in dtype (else store weights in dtype and compute in float32)")
    keep_fp32: tuple[str, ...] = setting(_SENSITIVE, "op types that keep computing in float32")
    min_elements: int = setting(0, "compute=false: leave initializers with fewer elements in float32")

    def validate(self) -> None:
        if self.dtype not in _DTYPES:
            raise UsageError(f"quantize-float: dtype must be float16 or bfloat16, not {self.dtype!r}")
        if isinstance(self.keep_fp32, str) or not all(isinstance(s, str) for s in self.keep_fp32):
            raise UsageError("quantize-float: keep_fp32 must be a list of op types")
        if self.min_elements < 0:
            raise UsageError("quantize-float: min_elements must not be negative")


@register_pass
class QuantizeFloatPass(GraphoptPass[QuantizeFloatSettings]):
    """fp16 / bf16 compute with float32 fallback ops, or fp16 / bf16 weight storage (see the module)."""

    name = "quantize-float"
    Settings = QuantizeFloatSettings
    output_preserving = False

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        low = _DTYPES[self.settings.dtype]
        if self.settings.compute:
            modified, details = _convert_compute(model, low, set(self.settings.keep_fp32), self.name)
        else:
            modified, details = _convert_storage(model, low, self.settings.min_elements, self.name)
        if modified:
            record_quantization(model, self.name, self.settings.to_dict(), details)
        return ir.passes.PassResult(model, modified)


def _low_tensor(tensor: ir.TensorProtocol, low: ir.DataType, name: str) -> ir.Tensor:
    return ir.Tensor(tensor.numpy().astype(_NUMPY[low]), dtype=low, name=name)


def _cast(value: ir.Value, to: ir.DataType, name: str, pass_name: str) -> ir.Node:
    node = ir.Node("", "Cast", [value], attributes=[ir.AttrInt64("to", to)], name=name,
                   metadata_props={_INSERTED_BY: pass_name})
    node.outputs[0].name = name
    node.outputs[0].dtype = to
    node.outputs[0].shape = value.shape
    return node


def _convert_storage(model: ir.Model, low: ir.DataType, min_elements: int, pass_name: str) -> tuple[bool, dict]:
    graph = model.graph
    inputs = {v.name for v in graph.inputs}
    converted = []
    first = graph.node(0) if len(graph) else None
    for name, value in list(graph.initializers.items()):
        tensor = value.const_value
        if first is None or tensor is None or tensor.dtype != ir.DataType.FLOAT or name in inputs or not value.uses():
            continue
        if tensor.size < max(min_elements, 1):
            continue
        stored = ir.Value(name=f"{name}_{low.name.lower()}", type=ir.TensorType(low), shape=value.shape,
                          const_value=_low_tensor(tensor, low, f"{name}_{low.name.lower()}"))
        graph.register_initializer(stored)
        cast = _cast(stored, ir.DataType.FLOAT, f"{name}_to_fp32", pass_name)
        graph.insert_before(first, cast)
        value.replace_all_uses_with(cast.outputs[0])
        if not value.is_graph_output():
            graph.initializers.pop(name)
        converted.append(name)
    return bool(converted), {"stored": len(converted)}


def _convert_compute(model: ir.Model, low: ir.DataType, keep: set[str], pass_name: str) -> tuple[bool, dict]:
    graph = model.graph
    taken = {v.name for v in graph.inputs} | set(graph.initializers) | {o.name for n in graph for o in n.outputs}

    def fresh(name: str) -> str:
        unique, i = name, 1
        while unique in taken:
            unique, i = f"{name}_{i}", i + 1
        taken.add(unique)
        return unique

    try:
        ir.passes.common.ShapeInferencePass()(model)
    except Exception as exc:  # onnx's inference rejects some valid graphs; the exported types may suffice
        logger.info("%s: shape inference failed (%s); using the types in the model", pass_name, exc)
    float_ = ir.DataType.FLOAT

    def is_low(node: ir.Node) -> bool:
        if node.domain not in ("", "ai.onnx") or node.op_type not in _LOW_OPS or node.op_type in keep:
            return False
        if any(o.dtype is None for o in node.outputs):
            return False
        return any(v is not None and v.dtype == float_ for v in (*node.inputs, *node.outputs))

    nodes = list(graph)
    low_nodes = {id(n) for n in nodes if is_low(n)}
    if not low_nodes:
        return False, {}
    graph_inputs = {id(v) for v in graph.inputs}
    to_low: dict[int, ir.Value] = {}
    casts = 0
    for node in nodes:
        if id(node) not in low_nodes:
            continue
        for index, value in enumerate(node.inputs):
            if value is None or value.dtype != float_:
                continue
            readers_low = all(id(user) in low_nodes for user, _ in value.uses())
            if (value.is_initializer() and id(value) not in graph_inputs and value.const_value is not None
                    and readers_low and not value.is_graph_output()):
                value.const_value = _low_tensor(value.const_value, low, value.name or "")
                value.type = ir.TensorType(low)  # a new type: clones share type objects
                continue
            if id(value) not in to_low:
                cast = _cast(value, low, fresh(f"{value.name}_to_{low.name.lower()}"), pass_name)
                producer = value.producer()
                if producer is not None:
                    graph.insert_after(producer, cast)
                else:
                    graph.insert_before(nodes[0], cast)
                to_low[id(value)] = cast.outputs[0]
                casts += 1
            node.replace_input_with(index, to_low[id(value)])
        for out in node.outputs:
            if out.dtype == float_:
                out.type = ir.TensorType(low)  # a new type: clones share type objects
    back: dict[int, ir.Value] = {}
    for node in list(graph):
        if id(node) in low_nodes or node.op_type in _ANY_FLOAT_OPS:
            continue
        if node.metadata_props.get(_INSERTED_BY) == pass_name:
            continue
        for index, value in enumerate(node.inputs):
            if value is None or value.dtype != low or id(value.producer()) not in low_nodes:
                continue
            if id(value) not in back:
                cast = _cast(value, float_, fresh(f"{value.name}_to_fp32"), pass_name)
                graph.insert_before(node, cast)
                back[id(value)] = cast.outputs[0]
                casts += 1
            node.replace_input_with(index, back[id(value)])
    for i, out in enumerate(list(graph.outputs)):
        if out.dtype == low:
            name = out.name
            out.name = fresh(f"{name}_{low.name.lower()}")
            cast = _cast(out, float_, name or "output", pass_name)
            graph.append(cast)
            graph.outputs[i] = cast.outputs[0]
            casts += 1
    return True, {"low_nodes": len(low_nodes), "casts": casts}


@dataclasses.dataclass(frozen=True)
class QuantizeFp8Settings(PassSettings):
    min_elements: int = setting(4096, "leave weights with fewer elements in float")
    exclude: tuple[str, ...] = setting((), "leave weights whose initializer name contains any of these strings")
    embeddings: bool = setting(False, "also quantize Gather tables (one scale per row)")

    def validate(self) -> None:
        if self.min_elements < 0:
            raise UsageError("quantize-fp8: min_elements must not be negative")
        if isinstance(self.exclude, str) or not all(isinstance(s, str) for s in self.exclude):
            raise UsageError("quantize-fp8: exclude must be a list of strings")


def fp8_weight(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """E4M3FN codes of ``w / s`` and ``s = max|w| / 448`` per slice along ``axis`` (1: per column)."""
    amax = np.abs(np.asarray(w, dtype=np.float32)).max(axis=1 - axis)
    scale = (amax / _FP8_MAX).astype(np.float32)
    scale[scale == 0] = 1.0
    shaped = scale[None, :] if axis == 1 else scale[:, None]
    codes = (np.asarray(w, dtype=np.float32) / shaped).astype(ml_dtypes.float8_e4m3fn)
    return codes, scale


@register_pass
class QuantizeFp8Pass(GraphoptPass[QuantizeFp8Settings]):
    """``MatMul(x, W) -> MatMul(x, DequantizeLinear(W8, s, axis=1))`` with E4M3 codes (see the module)."""

    name = "quantize-fp8"
    Settings = QuantizeFp8Settings
    output_preserving = False

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        s = self.settings
        candidates = find_weights(model, lambda w: weight_skip_reason(w, s.min_elements, s.exclude),
                                  embeddings=s.embeddings, pass_name=self.name)
        if not candidates or not opset_ready(model, self.name):
            return ir.passes.PassResult(model, False)
        raise_opset(model)
        for weight, users in candidates.values():
            assert weight.const_value is not None
            axis = 0 if users[0][0].op_type == "Gather" else 1
            codes, scale = fp8_weight(weight.const_value.numpy(), axis)
            result = QuantizedWeight(codes, scale, None, 8, axis, code_type=ir.DataType.FLOAT8E4M3FN)
            replace_weight(model.graph, weight, users, emit_weight(model.graph, weight, users[0][0], result, 0,
                                                                   self.name))
        record_quantization(model, self.name, s.to_dict(), {key: {"format": "e4m3fn"} for key in candidates})
        return ir.passes.PassResult(model, True)
