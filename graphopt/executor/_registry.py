"""The operator table: torch implementations of ONNX operators keyed by ``(domain, op_type)``.

An implementation is ``fn(ctx, inputs) -> Tensor | tuple[Tensor, ...]`` where ``inputs`` holds one
tensor (or ``None`` for an omitted optional input) per node input and ``ctx`` carries the node's
attributes, resolved once when the executor plans the graph, and the opset of the node's domain.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
import torch

from graphopt.errors import UnsupportedError

__all__ = ["OPS", "OpContext", "OpFn", "lookup", "register", "supported_ops", "tensor_from_ir", "to_torch_dtype"]

OpFn = Callable[["OpContext", Sequence[Any]], Any]
OPS: dict[tuple[str, str], OpFn] = {}

_ONNX_DOMAINS = ("", "ai.onnx")


@dataclasses.dataclass(frozen=True)
class OpContext:
    """One node's attributes (python values, tensors as torch tensors), its opset and output count."""

    op_type: str
    name: str
    opset: int
    attrs: dict[str, Any]
    num_outputs: int

    def get(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def fail(self, why: str) -> UnsupportedError:
        """An :class:`UnsupportedError` naming this node (raise it)."""
        return UnsupportedError(f"executor: {self.op_type} node {self.name!r}: {why}")


def register(*op_types: str, domain: str = "") -> Callable[[OpFn], OpFn]:
    """Decorator: register ``fn`` for each of ``op_types`` in ``domain`` ("" is the ONNX domain)."""

    def wrap(fn: OpFn) -> OpFn:
        for op_type in op_types:
            OPS[(domain, op_type)] = fn
        return fn

    return wrap


def lookup(domain: str, op_type: str) -> OpFn:
    """The implementation of ``domain::op_type``; :class:`UnsupportedError` names the op when missing."""
    key = ("" if domain in _ONNX_DOMAINS else domain, op_type)
    fn = OPS.get(key)
    if fn is None:
        shown = f"{domain}::{op_type}" if key[0] else op_type
        raise UnsupportedError(f"executor: operator {shown} is not supported by the differentiable executor")
    return fn


def supported_ops() -> list[str]:
    """Every supported operator as ``op_type`` or ``domain::op_type``, sorted."""
    return sorted(f"{d}::{t}" if d else t for d, t in OPS)


_DTYPES: dict[ir.DataType, torch.dtype] = {
    ir.DataType.FLOAT: torch.float32,
    ir.DataType.DOUBLE: torch.float64,
    ir.DataType.FLOAT16: torch.float16,
    ir.DataType.BFLOAT16: torch.bfloat16,
    ir.DataType.INT8: torch.int8,
    ir.DataType.UINT8: torch.uint8,
    ir.DataType.INT16: torch.int16,
    ir.DataType.INT32: torch.int32,
    ir.DataType.INT64: torch.int64,
    ir.DataType.BOOL: torch.bool,
    ir.DataType.UINT16: torch.uint16,
    ir.DataType.UINT32: torch.uint32,
    ir.DataType.UINT64: torch.uint64,
}


_WIDENED = {ir.DataType.INT4: np.int8, ir.DataType.UINT4: np.uint8}


def to_torch_dtype(dtype: int | ir.DataType) -> torch.dtype:
    """The torch dtype of an ONNX element type (``Cast``'s ``to``); unsupported types raise."""
    data_type = ir.DataType(dtype)
    if data_type not in _DTYPES:
        raise UnsupportedError(f"executor: element type {data_type.name} is not supported")
    return _DTYPES[data_type]


def tensor_from_ir(tensor: ir.TensorProtocol) -> torch.Tensor:
    """A torch copy of an ONNX tensor; 4-bit integers (quantized weights) widen to 8 bits."""
    if tensor.dtype in _WIDENED:
        return torch.from_numpy(np.asarray(tensor.numpy()).astype(_WIDENED[tensor.dtype]))
    torch_dtype = to_torch_dtype(tensor.dtype)
    array = tensor.numpy()
    if torch_dtype == torch.bfloat16:
        return torch.from_numpy(np.asarray(array, dtype=np.float32).copy()).to(torch.bfloat16)
    return torch.from_numpy(np.array(array, copy=True))
