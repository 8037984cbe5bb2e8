"""MLP blocks and convolution stages.

MLP: ``down(act(up(x)))`` where ``up`` and ``down`` are linear layers (MatMul/Gemm with a constant
weight) and everything between them is elementwise (bias, activation, reshapes) and used nowhere
else; ``act`` is named from the ops (``Gelu``, ``Erf`` → gelu, ``Tanh`` with ``Pow`` → gelu_tanh,
``Sigmoid`` times x → silu, ``Relu``, ...). A second linear layer of the same input multiplied in
makes it gated (SwiGLU/GeGLU: ``down(act(gate(x)) * up(x))``, reported as ``gated_<act>``).

Convolution stages: ``Conv`` nodes in topological order, split wherever the output resolution
changes (or, when shapes are unknown, the output channel count).
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from graphopt.analysis._cost import block_macs, node_cost
from graphopt.analysis._graph import Projection, Walker, consumers, op_key
from graphopt.analysis._shapes import static_shape

__all__ = ["ConvStage", "MlpBlock", "find_conv_stages", "find_mlps"]

_MS = "com.microsoft"
_SHAPE_READERS = frozenset({"Shape", "Size"})
_ACTIVATIONS = frozenset({"Gelu", "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid",
                          "HardSigmoid", "HardSwish", "Swish", "Tanh", "Erf", "Softplus", "Mish", "Clip",
                          "ThresholdedRelu",
                          f"{_MS}.Gelu", f"{_MS}.FastGelu", f"{_MS}.BiasGelu", f"{_MS}.QuickGelu"})
_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Neg", "Cast", "Identity", "Dropout",
                          f"{_MS}.BiasAdd", "Max", "Min", "QuantizeLinear", "DequantizeLinear"})
_MLP_RESHAPES = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
_CONVS = frozenset({"Conv", "ConvInteger", "QLinearConv", f"{_MS}.FusedConv", f"{_MS}.NhwcConv"})
_MAX_REGION = 24


@dataclasses.dataclass(frozen=True)
class MlpBlock:
    """``down(act(up(x)))``, or gated ``down(act(gate(x)) * up(x))``; ``hidden_size`` is the width
    between the projections."""

    up: Projection
    down: Projection
    gate: Projection | None
    activation: str
    hidden_size: int | None
    macs: int | None


@dataclasses.dataclass(frozen=True)
class ConvStage:
    """Consecutive convolutions at one output resolution."""

    resolution: tuple[int, ...] | None
    channels: tuple[int, ...]
    convs: int
    nodes: tuple[str, ...]
    macs: int | None


def find_mlps(graph: ir.Graph) -> list[MlpBlock]:
    """MLP blocks in graph order; a layer that ends one MLP does not start another."""
    walker = Walker(graph)
    blocks: list[MlpBlock] = []
    used: set[ir.Node] = set()
    for node in graph:
        proj = walker.consts.projection(node)
        if proj is None or node in used:
            continue
        found = _mlp_from(walker, node, proj)
        if found is not None:
            block, nodes = found
            blocks.append(block)
            used.update(nodes)
    return blocks


def _mlp_from(
    walker: Walker, first: ir.Node, first_proj: Projection
) -> tuple[MlpBlock, tuple[ir.Node, ...]] | None:
    start = first.outputs[0]
    region: list[ir.Node] = []
    values: set[ir.Value | None] = {start}
    frontier = [start]
    down: ir.Node | None = None
    while frontier:
        value = frontier.pop()
        if value.is_graph_output():
            return None
        for node, index in consumers(value):
            key = op_key(node)
            if node in region or key in _SHAPE_READERS:
                continue
            if index == 0 and walker.consts.projection(node) is not None:
                if down is not None and down is not node:
                    return None
                down = node
                continue
            if key not in _ACTIVATIONS and key not in _ELEMENTWISE and key not in _MLP_RESHAPES:
                return None
            if key in _MLP_RESHAPES and index > 0:
                return None
            region.append(node)
            if len(region) > _MAX_REGION:
                return None
            for out in node.outputs:
                if out not in values:
                    values.add(out)
                    frontier.append(out)
    if down is None or not region:
        return None
    partner: ir.Node | None = None
    for node in region:
        operands = node.inputs[:1] if op_key(node) in _MLP_RESHAPES else node.inputs
        for operand in operands:
            if operand is None or operand in values or walker.consts.is_constant(operand):
                continue
            producer = operand.producer()
            other = walker.consts.projection(producer) if producer is not None else None
            if (other is None or op_key(node) != "Mul" or producer is first or partner not in (None, producer)
                    or producer.inputs[0] is not first.inputs[0]):  # type: ignore[union-attr]
                return None
            partner = producer
    keys = {op_key(n) for n in region}
    activation = _activation_name(region, keys)
    if activation is None:
        return None
    down_proj = walker.consts.projection(down)
    assert down_proj is not None
    if partner is not None:
        up_proj = walker.consts.projection(partner)
        assert up_proj is not None
        gated = MlpBlock(up=up_proj, down=down_proj, gate=first_proj, activation=f"gated_{activation}",
                         hidden_size=first_proj.out_features, macs=block_macs([first, partner, down]))
        return gated, (first, partner, down)
    plain = MlpBlock(up=first_proj, down=down_proj, gate=None, activation=activation,
                     hidden_size=first_proj.out_features, macs=block_macs([first, down]))
    return plain, (first, down)


def _activation_name(region: list[ir.Node], keys: set[str]) -> str | None:
    for node in region:
        if op_key(node) == "Gelu":
            attr = node.attributes.get("approximate")
            return "gelu_tanh" if attr is not None and attr.value == "tanh" else "gelu"
    named = {
        f"{_MS}.FastGelu": "gelu_tanh", f"{_MS}.Gelu": "gelu", f"{_MS}.BiasGelu": "gelu",
        f"{_MS}.QuickGelu": "quick_gelu", "Erf": "gelu", "HardSwish": "hard_swish", "Swish": "silu",
        "Mish": "mish", "Softplus": "softplus", "LeakyRelu": "leaky_relu", "PRelu": "prelu", "Elu": "elu",
        "Selu": "selu", "Celu": "celu", "HardSigmoid": "hard_sigmoid", "ThresholdedRelu": "thresholded_relu",
    }
    for key, name in named.items():
        if key in keys:
            return name
    if "Tanh" in keys:
        return "gelu_tanh" if "Pow" in keys or sum(op_key(n) == "Mul" for n in region) >= 3 else "tanh"
    if "Sigmoid" in keys:
        return "silu" if "Mul" in keys else "sigmoid"
    if "Relu" in keys:
        return "relu"
    if "Clip" in keys:
        return "relu6"
    return None


def find_conv_stages(graph: ir.Graph) -> list[ConvStage]:
    stages: list[ConvStage] = []
    current: list[tuple[ir.Node, tuple[int, ...] | None, int | None]] = []

    def close() -> None:
        if not current:
            return
        channels: list[int] = []
        for _, _, c in current:
            if c is not None and c not in channels:
                channels.append(c)
        macs: int | None = 0
        for node, _, _ in current:
            cost = node_cost(node)
            macs = None if cost is None or macs is None else macs + cost.macs
        stages.append(ConvStage(current[0][1], tuple(channels), len(current),
                                tuple(n.name or "?" for n, _, _ in current), macs))
        current.clear()

    for node in graph:
        key = op_key(node)
        if key not in _CONVS:
            continue
        out = static_shape(node.outputs[0])
        if out is None or len(out) < 3:
            resolution, channels = None, None
        elif key == f"{_MS}.NhwcConv":
            resolution, channels = out[1:-1], out[-1]
        else:
            resolution, channels = out[2:], out[1]
        if current:
            previous_resolution, previous_channels = current[-1][1], current[-1][2]
            if resolution is not None or previous_resolution is not None:
                if resolution != previous_resolution:
                    close()
            elif channels != previous_channels:
                close()
        current.append((node, resolution, channels))
    close()
    return stages
