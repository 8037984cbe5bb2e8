"""Graph helpers shared by the cost model and the block finders: constants, projections, op keys."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import onnx_ir as ir

from graphopt.analysis._shapes import static_shape

__all__ = [
    "MATMUL_WEIGHT_INPUT",
    "ConstantTracker",
    "Projection",
    "Walker",
    "consumers",
    "op_key",
]

_MS = "com.microsoft"

# Matrix-multiply-like ops and the index of their right-hand (weight) operand.
MATMUL_WEIGHT_INPUT: dict[str, int] = {
    "MatMul": 1,
    "Gemm": 1,
    "MatMulInteger": 1,
    "QLinearMatMul": 3,
    f"{_MS}.FusedMatMul": 1,
    f"{_MS}.MatMulNBits": 1,
    f"{_MS}.MatMulIntegerToFloat": 1,
    f"{_MS}.DynamicQuantizeMatMul": 1,
}

# Ops that only move, cast or dequantize a constant: their outputs are still "the weight".
_WEIGHT_PASSTHROUGH = frozenset({"Transpose", "Cast", "DequantizeLinear", "Reshape", "Identity", "Squeeze",
                                 "Unsqueeze", "Flatten", "Expand"})
# Ops whose first input carries the data and the others only say how to move it.
_DATA_ONLY = frozenset({"Reshape", "Split", "Slice", "Squeeze", "Unsqueeze", "Gather", "Expand", "Flatten",
                        "SimplifiedLayerNormalization", "RMSNormalization", "LayerNormalization",
                        f"{_MS}.RotaryEmbedding", f"{_MS}.SimplifiedLayerNormalization"})
# Passed by every walk without counting as a step: they change the encoding, not the tensor.
_FREE = frozenset({"Cast", "Identity", "QuantizeLinear", "DequantizeLinear"})
_DATA_ONLY = _DATA_ONLY | {"QuantizeLinear", "DequantizeLinear"}
_NON_DETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                                "Multinomial", "Bernoulli", "Dropout"})


def op_key(node: ir.Node) -> str:
    """``op_type`` for the default ONNX domain, ``domain.op_type`` otherwise."""
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def consumers(value: ir.Value | None) -> Iterator[tuple[ir.Node, int]]:
    """The nodes that read ``value`` and at which input index (graph outputs are not nodes)."""
    if value is None:
        return
    yield from value.uses()


@dataclasses.dataclass(frozen=True)
class Projection:
    """A matrix multiply by a constant weight (a linear layer).

    ``in_features``/``out_features`` follow the math (``y = x W``), whatever the storage layout.
    """

    node: str
    op: str
    weight: str
    in_features: int | None
    out_features: int | None


class ConstantTracker:
    """Answers "is this value a constant?" and "which initializer is this weight?" with memoisation.

    A value is constant if it has a tensor (initializer or ``Constant``), or if a deterministic node
    with at least one input computes it from constants only.
    """

    def __init__(self, graph: ir.Graph) -> None:
        self._graph = graph
        self._memo: dict[ir.Value, bool] = {}

    def is_constant(self, value: ir.Value | None) -> bool:
        if value is None:
            return False
        if value in self._memo:
            return self._memo[value]
        stack = [value]
        while stack:
            current = stack[-1]
            if current in self._memo:
                stack.pop()
                continue
            direct = self._direct(current)
            if direct is not None:
                self._memo[current] = direct
                stack.pop()
                continue
            producer = current.producer()
            assert producer is not None
            pending = [v for v in producer.inputs if v is not None and v not in self._memo]
            if pending:
                stack.extend(pending)
                continue
            self._memo[current] = all(self._memo[v] for v in producer.inputs if v is not None)
            stack.pop()
        return self._memo[value]

    def _direct(self, value: ir.Value) -> bool | None:
        if value.const_value is not None:
            return True
        producer = value.producer()
        if producer is None:
            return False  # a graph input, or a value from an outer scope
        if producer.op_type == "Constant" and producer.domain in ("", "ai.onnx"):
            return True
        if producer.op_type in _NON_DETERMINISTIC or not any(v is not None for v in producer.inputs):
            return False
        graph_types = (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
        if any(a.type in graph_types for a in producer.attributes.values()):
            return False
        return None

    def weight_name(self, value: ir.Value) -> str:
        """The initializer (or ``Constant``) behind a constant weight, through casts and transposes."""
        current = value
        for _ in range(8):
            if current.const_value is not None or current.producer() is None:
                break
            producer = current.producer()
            assert producer is not None
            if producer.op_type not in _WEIGHT_PASSTHROUGH or not producer.inputs:
                break
            if producer.inputs[0] is None:
                break
            current = producer.inputs[0]
        return current.name or value.name or "?"

    def projection(self, node: ir.Node) -> Projection | None:
        """The node as a linear layer, if it multiplies by a constant weight."""
        key = op_key(node)
        index = MATMUL_WEIGHT_INPUT.get(key)
        if index is None or len(node.inputs) <= index:
            return None
        weight = node.inputs[index]
        if weight is None or not self.is_constant(weight) or self.is_constant(node.inputs[0]):
            return None
        in_features, out_features = _features(node, key, weight)
        return Projection(node.name or "", key, self.weight_name(weight), in_features, out_features)


def _features(node: ir.Node, key: str, weight: ir.Value) -> tuple[int | None, int | None]:
    if key == f"{_MS}.MatMulNBits":
        k, n = node.attributes.get("K"), node.attributes.get("N")
        return (int(k.value) if k else None), (int(n.value) if n else None)
    shape = static_shape(weight)
    if shape is None or len(shape) < 2:
        return None, (shape[-1] if shape else None)
    rows, cols = shape[-2], shape[-1]
    transposed = False
    if key == "Gemm" or key == f"{_MS}.FusedMatMul":
        attr = node.attributes.get("transB")
        transposed = bool(attr.value) if attr is not None else False
    return (cols, rows) if transposed else (rows, cols)


class Walker:
    """Short breadth-first walks along the data (not the constants) of a graph."""

    def __init__(self, graph: ir.Graph) -> None:
        self.graph = graph
        self.consts = ConstantTracker(graph)

    def data_inputs(self, node: ir.Node) -> list[ir.Value]:
        """The non-constant inputs that carry data (not the shape of a Reshape, not Where's condition)."""
        key = op_key(node)
        inputs = list(node.inputs)
        if key in _DATA_ONLY:
            inputs = inputs[:1]
        elif key == "Where":
            inputs = inputs[1:]
        return [v for v in inputs if v is not None and not self.consts.is_constant(v)]

    def backward(
        self, start: ir.Value, through: frozenset[str], depth: int, accept: Callable[[ir.Node], bool]
    ) -> ir.Node | None:
        """The nearest producer upstream of ``start`` that ``accept`` takes, passing only ``through`` ops
        (and, without counting them against ``depth``, casts and quantize/dequantize pairs)."""
        frontier, seen = [start], {start}
        for _ in range(depth):
            nxt: list[ir.Value] = []
            for value in frontier:  # grows while free ops are passed
                producer = value.producer()
                if producer is None:
                    continue
                if accept(producer):
                    return producer
                key = op_key(producer)
                if key in through or key in _FREE:
                    target = frontier if key in _FREE else nxt
                    for v in self.data_inputs(producer):
                        if v not in seen:
                            seen.add(v)
                            target.append(v)
            frontier = nxt
        return None

    def forward(
        self, start: ir.Value, through: frozenset[str], depth: int, accept: Callable[[ir.Node, int], bool]
    ) -> ir.Node | None:
        """The nearest consumer downstream of ``start`` that ``accept(node, input_index)`` takes."""
        frontier, seen = [start], {start}
        for _ in range(depth):
            nxt: list[ir.Value] = []
            for value in frontier:  # grows while free ops are passed
                for node, index in consumers(value):
                    if accept(node, index):
                        return node
                    key = op_key(node)
                    if (key in through or key in _FREE) and not (key in _DATA_ONLY and index > 0):
                        target = frontier if key in _FREE else nxt
                        for out in node.outputs:
                            if out not in seen:
                                seen.add(out)
                                target.append(out)
            frontier = nxt
        return None
