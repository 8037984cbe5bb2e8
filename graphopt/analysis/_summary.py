"""``summarize(model)``: what a model is made of and what it costs, as frozen dataclasses."""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import onnx_ir as ir

from graphopt.analysis._attention import AttentionBlock, find_attention
from graphopt.analysis._blocks import ConvStage, MlpBlock, find_conv_stages, find_mlps
from graphopt.analysis._cost import counts_macs, node_cost
from graphopt.analysis._graph import op_key
from graphopt.analysis._shapes import concrete_copy

__all__ = ["CostSummary", "ModelSummary", "TensorInfo", "summarize"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: ONNX element type name (``"float"``, ``"int64"``) and shape, with
    symbolic dims by name (``None`` for an anonymous dynamic dim; ``shape=None`` for unknown rank)."""

    name: str
    dtype: str | None
    shape: tuple[int | str | None, ...] | None


@dataclasses.dataclass(frozen=True)
class CostSummary:
    """MACs and FLOPs at ``input_shapes`` (see :mod:`graphopt.analysis._cost` for the rules).

    ``partial`` is true when some matrix-multiply-like node could not be counted; ``reasons`` says
    why (shape inference problems, nodes without shapes, ops without a rule).
    """

    input_shapes: dict[str, tuple[int, ...]]
    macs: int
    flops: int
    macs_by_op: dict[str, int]
    flops_by_op: dict[str, int]
    partial: bool
    reasons: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """Everything :func:`summarize` found; ``to_dict()`` is JSON-serialisable.

    ``opsets`` maps domains to versions (the default domain as ``"ai.onnx"``); ``op_histogram``
    counts nodes by ``op_type``, domain-qualified outside the default domain
    (``"com.microsoft.Attention"``), subgraph nodes included, most frequent first; parameters are
    the elements and bytes of all initializers and ``Constant`` tensors; ``notes`` say what block
    recognition could not identify.
    """

    ir_version: int
    producer: str
    opsets: dict[str, int]
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    node_count: int
    op_histogram: dict[str, int]
    parameter_count: int
    parameter_bytes: int
    cost: CostSummary
    attention_blocks: tuple[AttentionBlock, ...]
    mlp_blocks: tuple[MlpBlock, ...]
    conv_stages: tuple[ConvStage, ...]
    notes: tuple[str, ...]

    @property
    def macs(self) -> int:
        return self.cost.macs

    @property
    def flops(self) -> int:
        return self.cost.flops

    def to_dict(self) -> dict[str, Any]:
        result = _jsonable(self)
        assert isinstance(result, dict)
        return result


def summarize(model: ir.Model, *, shapes: Mapping[str, tuple[int, ...]] | None = None) -> ModelSummary:
    """Summarise ``model`` without modifying it.

    Structure (histogram, parameters, signature) is read from ``model`` as stored. Costs and blocks
    are computed on a private copy with concrete input shapes: ``shapes`` (input name -> dims),
    else every dynamic dim becomes 1 on axis 0 and 128 elsewhere (a named dim takes one value
    everywhere); the shapes used are in ``summary.cost.input_shapes``. Model-local functions are
    inlined in the copy.

    Raises :class:`graphopt.errors.UsageError` for ``shapes`` naming unknown inputs or with the
    wrong rank.
    """
    histogram: collections.Counter[str] = collections.Counter(op_key(n) for n in model.graph.all_nodes())
    count, nbytes = _parameters(model)
    work = concrete_copy(model, shapes)
    notes: list[str] = []
    if model.functions:
        notes.append(f"inlined {len(model.functions)} model-local function(s) for costs and blocks")
    cost = _cost(work.model, work.input_shapes, work.problems)
    attention = find_attention(work.model.graph, notes)
    mlps = find_mlps(work.model.graph)
    stages = find_conv_stages(work.model.graph)
    return ModelSummary(
        ir_version=model.ir_version,
        producer=f"{model.producer_name or ''} {model.producer_version or ''}".strip(),
        opsets={(d or "ai.onnx"): v for d, v in sorted(model.opset_imports.items())},
        inputs=tuple(_info(v) for v in model.graph.inputs if v.name not in model.graph.initializers),
        outputs=tuple(_info(v) for v in model.graph.outputs),
        node_count=sum(histogram.values()),
        op_histogram=dict(sorted(histogram.items(), key=lambda kv: (-kv[1], kv[0]))),
        parameter_count=count,
        parameter_bytes=nbytes,
        cost=cost,
        attention_blocks=tuple(attention),
        mlp_blocks=tuple(mlps),
        conv_stages=tuple(stages),
        notes=tuple(notes),
    )


def _info(value: ir.Value) -> TensorInfo:
    shape: tuple[int | str | None, ...] | None = None
    if value.shape is not None:
        shape = tuple(d if isinstance(d, int) else (d.value or None) for d in value.shape)
    dtype = value.dtype.name.lower() if value.dtype is not None else None
    return TensorInfo(value.name or "", dtype, shape)


def _parameters(model: ir.Model) -> tuple[int, int]:
    """Elements and bytes of all initializers (subgraphs included) and ``Constant`` tensors."""
    count = nbytes = 0
    seen: set[int] = set()
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if tensor is None or id(value) in seen:
                continue
            seen.add(id(value))
            count += tensor.size
            nbytes += tensor.nbytes
    for node in model.graph.all_nodes():
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.TENSOR:
                count += attr.value.size
                nbytes += attr.value.nbytes
            elif attr.type in (ir.AttributeType.FLOATS, ir.AttributeType.INTS):
                count += len(attr.value)
                nbytes += len(attr.value) * (4 if attr.type == ir.AttributeType.FLOATS else 8)
            elif attr.type in (ir.AttributeType.FLOAT, ir.AttributeType.INT):
                count += 1
                nbytes += 4 if attr.type == ir.AttributeType.FLOAT else 8
    return count, nbytes


def _cost(work: ir.Model, input_shapes: dict[str, tuple[int, ...]], problems: list[str]) -> CostSummary:
    macs: collections.Counter[str] = collections.Counter()
    flops: collections.Counter[str] = collections.Counter()
    uncounted: collections.Counter[str] = collections.Counter()
    for node in work.graph.all_nodes():
        key = op_key(node)
        cost = node_cost(node)
        if cost is None:
            uncounted[key] += 1
            continue
        if cost.macs:
            macs[key] += cost.macs
        if cost.flops:
            flops[key] += cost.flops
    heavy = {k: n for k, n in uncounted.items() if counts_macs(k)}
    light = {k: n for k, n in uncounted.items() if k not in heavy}
    reasons = list(problems)
    if heavy:
        reasons.append("MACs not counted for " + _list_counts(heavy) + " (shapes unknown or no cost rule)")
    if light:
        reasons.append("FLOPs not counted for " + _list_counts(light) + " (shapes unknown)")
    if reasons:
        logger.info("cost estimate: %s", "; ".join(reasons))
    return CostSummary(
        input_shapes=dict(input_shapes),
        macs=sum(macs.values()),
        flops=sum(flops.values()),
        macs_by_op=dict(macs.most_common()),
        flops_by_op=dict(flops.most_common()),
        partial=bool(heavy),
        reasons=tuple(reasons),
    )


def _list_counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        data = {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, AttentionBlock):
            data["hidden_size"] = obj.hidden_size
        return data
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
