"""ONNX-Net style text encodings of ONNX graphs, and a compact structural feature vector.

``encode_graph(model, variant=...)`` writes a graph as lines of operator chains, after the
ONNX-Net encoding (Qin et al., 2025: "ONNX-Net: towards universal representations and instant
performance prediction for neural architectures"), with two things the public implementation
loses kept: scalar attributes (``alpha=0.2``, ``axis=1``, ``epsilon=1e-05``) and, when a chain
restarts, the tensor it restarts from.

Grammar (``variant="full"``; ``[...]`` below is optional, ``*`` repeats)::

    encoding := line ("\\n" line)*
    line     := head (" --> " step)* " --> " sink
    head     := ref " --> " step                  a chain restarting from a named tensor
              | call                              a node with no or several data inputs
    call     := Op "(" [operand (", " operand)*] ")" [attrs]
    step     := Op ["(" operand (", " operand)* ")"] [attrs]
                                                  the chained tensor is written "_"; the operand
                                                  list is left out when it is only "_"
    operand  := "_" | ref | param | "-"           "-": an omitted optional input
    param    := "Param[" [dim ("," dim)*] "]"     an initializer or Constant (scalars: "Param[]")
    attrs    := "[" name "=" value (", " name "=" value)* "]"    sorted by name
    value    := int | float (4 significant digits) | string (quoted unless a plain word)
              | "(" value ("," value)* ")"        a list (ints, floats, strings)
              | dtype "[" dims "]" ["{" v "}"]    a tensor: dtype and shape (its value if scalar)
              | "graph(" n " nodes)"              a subgraph, summarised
    sink     := ref ["," " " ref]*                one per output; "-" for an unused output
    ref      := ("In" k | "Out" k | "T" k) [":" shape]
    shape    := dim ("x" dim)* | "scalar"

``In1..`` are the graph inputs and ``Out1..`` the graph outputs, numbered in signature order;
``T1..`` are the other tensors that need a name, numbered in the order they are written. Names
given by exporters never appear, so renaming nodes or tensors does not change the text. A tensor
gets a name when its chain ends: where it is used more than once, by a node with several data
inputs, or is a graph output. A chain follows a tensor to its only consumer whatever the node
order in the file; lines start in topological order (ties by position in the file). Shapes come
from ONNX shape inference at concrete input shapes (``shapes``, else dynamic dims become 1 on
axis 0 and 128 elsewhere) and are written where a tensor is named (graph inputs on first use).
``Constant`` nodes, and ``Identity`` nodes on constants, are folded into their consumers as
``Param``; a dim that shape inference left symbolic is written ``?``.

Example: ``c = Conv<kernel_shape=[3,3], pads=[1,1,1,1]>(x, w, b)``, ``r = Relu(c)``,
``s = Add(r, c)``, ``y = Gemm<transB=1>(Flatten<axis=1>(GlobalAveragePool(s)), w2)``::

    In1:1x3x8x8 --> Conv(_, Param[4,3,3,3], Param[4])[kernel_shape=(3,3), pads=(1,1,1,1)] --> T1:1x4x8x8
    T1 --> Relu --> T2:1x4x8x8
    Add(T2, T1) --> GlobalAveragePool --> Flatten[axis=1] --> Gemm(_, Param[10,4])[transB=1] --> Out1:1x10

Variants, for ablation: ``"ops"`` keeps operators and topology only (no params, attributes or
shapes); ``"params"`` adds ``Param[dims]`` operands; ``"shapes"`` adds shapes to ``"ops"``;
``"full"`` has all of it and the attributes. In ``"ops"`` the example's first line reads
``In1 --> Conv --> T1``.

``structural_features(model)`` is a fixed-length vector (``FEATURE_NAMES`` order): node counts
over a fixed op vocabulary plus ``other``, node count, depth (nodes on the longest path),
parameters, MACs, attention / MLP blocks and convolution stage widths, from
:func:`graphopt.analysis.summarize`.
"""

from __future__ import annotations

import collections
import heapq
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import onnx_ir as ir

from graphopt.errors import UsageError

__all__ = ["FEATURE_NAMES", "OP_VOCABULARY", "VARIANTS", "encode_graph", "structural_features"]

VARIANTS = ("ops", "params", "shapes", "full")

OP_VOCABULARY = (
    "Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "Pow", "Sqrt",
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Gelu", "Erf", "Clip", "HardSwish", "Softmax",
    "BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean",
    "Concat", "Split", "Slice", "Gather", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze",
    "Expand", "Pad", "Resize", "Cast", "Where", "Identity", "Dropout", "Constant",
)  # fmt: skip

FEATURE_NAMES: tuple[str, ...] = (
    *(f"op_{op}" for op in OP_VOCABULARY),
    "op_other",
    "node_count",
    "depth",
    "multi_input_nodes",
    "parameter_count",
    "macs",
    "attention_blocks",
    "mlp_blocks",
    "conv_stages",
    "conv_width_first",
    "conv_width_last",
    "conv_width_max",
    "conv_width_mean",
)

_PLAIN = re.compile(r"^[A-Za-z0-9_.+-]+$")
_DEFAULT_DOMAINS = ("", "ai.onnx")


def encode_graph(model: ir.Model, *, variant: str = "full", shapes: Mapping[str, tuple[int, ...]] | None = None) -> str:
    """The ONNX-Net text of ``model``'s main graph (grammar in the module docstring).

    ``model`` is not modified: the encoding is written from a copy with concrete input shapes
    (``shapes``: input name -> dims) and model-local functions inlined. Raises
    :class:`graphopt.errors.UsageError` for an unknown ``variant`` or ``shapes`` that name unknown
    inputs or have the wrong rank.
    """
    if variant not in VARIANTS:
        raise UsageError(f"unknown encoding variant {variant!r} (choose from {', '.join(VARIANTS)})")
    from graphopt.analysis import concrete_copy

    work = concrete_copy(model, shapes).model
    return _Encoder(
        work.graph,
        params=variant in ("params", "full"),
        shapes=variant in ("shapes", "full"),
        attributes=variant == "full",
    ).encode()


def structural_features(model: ir.Model, *, shapes: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, float]:
    """A fixed-length feature vector, keys in :data:`FEATURE_NAMES` order (see the module docstring).

    Op counts cover the main graph and subgraphs (as :func:`graphopt.analysis.summarize` counts);
    ops outside the default domain count as ``other``. Depth and ``multi_input_nodes`` are over the
    main graph, constants (as the encoding folds them) left out. Conv widths are each stage's widest
    output channel count (0 without convolutions).
    """
    from graphopt.analysis import summarize

    summary = summarize(model, shapes=shapes)
    counts = dict.fromkeys(OP_VOCABULARY, 0)
    other = 0
    for key, n in summary.op_histogram.items():
        if key in counts:
            counts[key] += n
        else:
            other += n
    widths = [max(s.channels) for s in summary.conv_stages if s.channels]
    graph = model.graph
    constants = _constant_values(graph)
    nodes = [n for n in graph if not _is_constant_node(n, constants)]
    features: dict[str, float] = {f"op_{op}": float(n) for op, n in counts.items()}
    features["op_other"] = float(other)
    features["node_count"] = float(summary.node_count)
    features["depth"] = float(_depth(nodes, constants))
    features["multi_input_nodes"] = float(sum(len(_data_inputs(n, constants)) > 1 for n in nodes))
    features["parameter_count"] = float(summary.parameter_count)
    features["macs"] = float(summary.macs)
    features["attention_blocks"] = float(len(summary.attention_blocks))
    features["mlp_blocks"] = float(len(summary.mlp_blocks))
    features["conv_stages"] = float(len(summary.conv_stages))
    features["conv_width_first"] = float(widths[0]) if widths else 0.0
    features["conv_width_last"] = float(widths[-1]) if widths else 0.0
    features["conv_width_max"] = float(max(widths)) if widths else 0.0
    features["conv_width_mean"] = float(sum(widths) / len(widths)) if widths else 0.0
    assert tuple(features) == FEATURE_NAMES
    return features


# -- graph helpers ------------------------------------------------------------------------------


def _is_constant_node(node: ir.Node, constants: set[ir.Value] | None = None) -> bool:
    """A ``Constant``, or (given the constants so far) an ``Identity`` of a constant."""
    if node.domain not in _DEFAULT_DOMAINS:
        return False
    if node.op_type == "Constant":
        return not node.inputs
    return node.op_type == "Identity" and constants is not None and bool(node.inputs) and node.inputs[0] in constants


def _constant_values(graph: ir.Graph) -> set[ir.Value]:
    """Initializers and outputs of ``Constant`` nodes and of ``Identity`` nodes on constants (as
    exporters write shared weights): written as ``Param``, not as tensors."""
    values = set(graph.initializers.values())
    for node in graph:
        if _is_constant_node(node, values):
            values.update(node.outputs)
    return values


def _data_inputs(node: ir.Node, constants: set[ir.Value]) -> list[ir.Value]:
    """Distinct non-constant inputs, in input order."""
    seen: list[ir.Value] = []
    for value in node.inputs:
        if value is not None and value not in constants and value not in seen:
            seen.append(value)
    return seen


def _topological(nodes: Sequence[ir.Node], constants: set[ir.Value]) -> list[ir.Node]:
    """Kahn's order, ties broken by position in the file (never by name)."""
    index = {node: i for i, node in enumerate(nodes)}
    waiting = {node: 0 for node in nodes}
    users: dict[ir.Node, list[ir.Node]] = collections.defaultdict(list)
    for node in nodes:
        for value in _data_inputs(node, constants):
            producer = value.producer()
            if producer in index:
                waiting[node] += 1
                users[producer].append(node)  # type: ignore[index]
    ready = [index[n] for n in nodes if waiting[n] == 0]
    heapq.heapify(ready)
    order: list[ir.Node] = []
    while ready:
        node = nodes[heapq.heappop(ready)]
        order.append(node)
        for user in users[node]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, index[user])
    order.extend(n for n in nodes if n not in set(order))  # cycles: keep the file's order
    return order


def _depth(nodes: Sequence[ir.Node], constants: set[ir.Value]) -> int:
    """Nodes on the longest input-to-output path."""
    longest: dict[ir.Node, int] = {}
    for node in _topological(nodes, constants):
        before = [longest.get(v.producer(), 0) for v in _data_inputs(node, constants)]  # type: ignore[arg-type]
        longest[node] = 1 + max(before, default=0)
    return max(longest.values(), default=0)


def _consumers(value: ir.Value, graph: ir.Graph) -> list[ir.Node]:
    """Distinct nodes reading ``value`` (subgraph nodes included)."""
    found: list[ir.Node] = []
    for use in value.uses():
        if use.node not in found:
            found.append(use.node)
    return found


# -- formatting ---------------------------------------------------------------------------------


def _op_name(node: ir.Node) -> str:
    return node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"


def _float(value: float) -> str:
    return f"{value:.4g}"


def _string(value: str | bytes) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text if _PLAIN.match(text) else '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dims(shape: Iterable[Any]) -> list[str]:
    """Dims as text; a dim that inference left symbolic is ``?`` (its name is the exporter's)."""
    return [str(d) if isinstance(d, int) else "?" for d in shape]


def _tensor(tensor: Any) -> str:
    dtype = tensor.dtype.name.lower() if tensor.dtype is not None else "?"
    text = f"{dtype}[{','.join(_dims(tensor.shape))}]"
    if tensor.size == 1:
        try:
            scalar = tensor.numpy().reshape(-1)[0].item()
        except Exception:  # external data that cannot be read: the summary is enough
            return text
        text += "{" + (_float(scalar) if isinstance(scalar, float) else str(scalar)) + "}"
    return text


def _attribute(attr: ir.Attr) -> str:
    kind, value = attr.type, attr.value
    T = ir.AttributeType
    if kind == T.INT:
        return str(int(value))
    if kind == T.FLOAT:
        return _float(float(value))
    if kind == T.STRING:
        return _string(value)
    if kind == T.INTS:
        return "(" + ",".join(str(int(v)) for v in value) + ")"
    if kind == T.FLOATS:
        return "(" + ",".join(_float(float(v)) for v in value) + ")"
    if kind == T.STRINGS:
        return "(" + ",".join(_string(v) for v in value) + ")"
    if kind in (T.TENSOR, T.SPARSE_TENSOR):
        return _tensor(value)
    if kind in (T.TENSORS, T.SPARSE_TENSORS):
        return "(" + ",".join(_tensor(v) for v in value) + ")"
    if kind == T.GRAPH:
        return f"graph({len(value)} nodes)"
    if kind == T.GRAPHS:
        return "(" + ",".join(f"graph({len(g)} nodes)" for g in value) + ")"
    return _string(str(value))  # type protos and anything newer


def _shape_text(value: ir.Value) -> str | None:
    if value.shape is None:
        return None
    dims = _dims(value.shape)
    return "x".join(dims) if dims else "scalar"


class _Encoder:
    """One pass over the graph, in topological order, following each chain to its end."""

    def __init__(self, graph: ir.Graph, *, params: bool, shapes: bool, attributes: bool) -> None:
        self.graph = graph
        self.params = params
        self.shapes = shapes
        self.attributes = attributes
        self.constants = _constant_values(graph)
        self.outputs = set(graph.outputs)
        self.names: dict[ir.Value, str] = {}
        self.mentioned: set[ir.Value] = set()
        inputs = [v for v in graph.inputs if v not in self.constants]
        for k, value in enumerate(inputs, 1):
            self.names[value] = f"In{k}"
        for k, value in enumerate(graph.outputs, 1):
            self.names.setdefault(value, f"Out{k}")
        self.next_tensor = 1

    def encode(self) -> str:
        nodes = [n for n in self.graph if not _is_constant_node(n, self.constants)]
        done: set[ir.Node] = set()
        lines = []
        for node in _topological(nodes, self.constants):
            if node not in done:
                lines.append(self._line(node, done))
        return "\n".join(lines)

    def _line(self, node: ir.Node, done: set[ir.Node]) -> str:
        data = _data_inputs(node, self.constants)
        parts = [self._ref(data[0]), self._step(node, data[0])] if len(data) == 1 else [self._call(node)]
        done.add(node)
        while len(node.outputs) == 1:
            nxt = self._follower(node.outputs[0], done)
            if nxt is None:
                break
            parts.append(self._step(nxt, node.outputs[0]))
            done.add(nxt)
            node = nxt
        parts.append(", ".join(self._define(v) for v in node.outputs))
        return " --> ".join(parts)

    def _follower(self, value: ir.Value, done: set[ir.Node]) -> ir.Node | None:
        """The node that continues the chain through ``value``, if there is one."""
        if value in self.outputs:
            return None
        users = _consumers(value, self.graph)
        if len(users) != 1:
            return None
        user = users[0]
        if user.graph is not self.graph or user in done or _data_inputs(user, self.constants) != [value]:
            return None
        return user

    def _define(self, value: ir.Value) -> str:
        if value not in self.names:
            if not value.uses() and value not in self.outputs:
                return "-"
            self.names[value] = f"T{self.next_tensor}"
            self.next_tensor += 1
        self.mentioned.add(value)
        return self._with_shape(self.names[value], value)

    def _ref(self, value: ir.Value) -> str:
        name = self.names.get(value)
        if name is None:  # an outer-scope or otherwise undefined value: name it on first use
            name = self.names[value] = f"T{self.next_tensor}"
            self.next_tensor += 1
        if value in self.mentioned:
            return name
        self.mentioned.add(value)
        return self._with_shape(name, value)

    def _with_shape(self, name: str, value: ir.Value) -> str:
        shape = _shape_text(value) if self.shapes else None
        return f"{name}:{shape}" if shape is not None else name

    def _operands(self, node: ir.Node, chained: ir.Value | None) -> list[str]:
        operands = []
        for value in node.inputs:
            if value is None:
                if self.params:
                    operands.append("-")
            elif value is chained:
                operands.append("_")
            elif value in self.constants:
                if self.params:
                    shape = value.const_value.shape if value.const_value is not None else value.shape
                    dims = _dims(shape) if shape is not None else ["?"]
                    operands.append(f"Param[{','.join(dims)}]")
            else:
                operands.append(self._ref(value))
        while operands and operands[-1] == "-":
            operands.pop()
        return operands

    def _attrs(self, node: ir.Node) -> str:
        if not self.attributes or not node.attributes:
            return ""
        items = [f"{name}={_attribute(node.attributes[name])}" for name in sorted(node.attributes)]
        return "[" + ", ".join(items) + "]"

    def _step(self, node: ir.Node, chained: ir.Value) -> str:
        operands = self._operands(node, chained)
        args = "" if operands in ([], ["_"]) else "(" + ", ".join(operands) + ")"
        return _op_name(node) + args + self._attrs(node)

    def _call(self, node: ir.Node) -> str:
        return _op_name(node) + "(" + ", ".join(self._operands(node, None)) + ")" + self._attrs(node)
