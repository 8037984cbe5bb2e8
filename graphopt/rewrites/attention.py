"""Attention rewrites against outliers (Bondarenko et al., "Quantizable Transformers", 2023).

``clipped-softmax`` lets a head assign exact zeros (and ones) without pushing its logits to extremes;
``gated-attention`` lets a head scale its own output down instead. Both find attention blocks with
:func:`graphopt.analysis._attention.find_attention`; inserted nodes carry
``metadata_props[INSERTED_BY_KEY] = pass name``; gate parameters are initializers named
``graphopt.gate.<layer>.weight`` / ``.bias`` and trainable clipping parameters
``graphopt.clip.<layer>.gamma`` / ``.zeta`` (:mod:`graphopt.rewrites._markers`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter._basics import MatchResult

from graphopt.analysis._attention import AttentionBlock, find_attention
from graphopt.errors import UsageError
from graphopt.passes import GraphoptPass, PassSettings, register_pass, setting
from graphopt.rewrites._markers import CLIP_PREFIX, GATE_PREFIX, INSERTED_BY_KEY, MarkedNodes

__all__ = [
    "ClipSoftmaxPass",
    "ClipSoftmaxSettings",
    "GateAttentionPass",
    "GateAttentionSettings",
    "clipped_softmax_rule",
    "value_dtypes",
]

logger = logging.getLogger(__name__)

_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)


def value_dtypes(model: ir.Model) -> dict[str, ir.DataType]:
    """Element types of all named values, inferred on a copy (TorchScript exports declare none)."""
    from graphopt.analysis import concrete_copy

    work = concrete_copy(model).model
    return {v.name: v.dtype for n in work.graph for v in n.outputs if v.name and v.dtype is not None}


def _value_shapes(model: ir.Model) -> dict[str, ir.Shape]:
    """Shapes of all named values from ONNX shape inference on a copy, symbolic dims kept symbolic
    (intermediate values often declare none)."""
    from onnx_ir.passes.common import ShapeInferencePass

    try:
        work = ShapeInferencePass()(model.clone()).model
    except Exception as error:  # inference is a best effort: without it, shapes stay unknown
        logger.info("clipped-softmax: shape inference failed: %s", error)
        return {}
    return {v.name: v.shape for n in work.graph for v in n.outputs if v.name and v.shape is not None}


def _dtype(value: ir.Value, dtypes: dict[str, ir.DataType] | None) -> ir.DataType | None:
    return value.dtype if value.dtype is not None else (dtypes or {}).get(value.name or "")


def _mark(value: ir.Value, pass_name: str) -> ir.Value:
    producer = value.producer()
    if producer is not None:
        producer.metadata_props[INSERTED_BY_KEY] = pass_name
    return value


def _scalar(value: float, dtype: ir.DataType) -> ir.TensorProtocol:
    return ir.tensor(np.array(value, dtype=dtype.numpy()))


class _ClippedSoftmax(pattern.RewriteRuleClassBase):
    """``Softmax(x) -> Clip((zeta - gamma) * Softmax(x) + gamma, 0, 1)``, ``gamma`` fixed or ``-alpha / T``
    with ``T = Shape(x)[axis]`` computed at run time.

    With ``layers`` (Softmax node -> ``(layer, heads)``) and ``per_head``, ``gamma`` and ``zeta`` are
    trainable initializers ``graphopt.clip.<layer>.gamma`` / ``.zeta`` registered in ``graph``: scalars, or
    ``[heads, 1, 1]`` (one per head of a ``[..., heads, T, T]`` probability tensor)."""

    def __init__(self, gamma: float | None = None, zeta: float = 1.0, alpha: float = 4.0,
                 softmaxes: frozenset[ir.Node] | None = None, dtypes: dict[str, ir.DataType] | None = None,
                 layers: dict[ir.Node, tuple[int, int | None]] | None = None, per_head: bool = False,
                 graph: ir.Graph | None = None, shapes: dict[str, ir.Shape] | None = None) -> None:
        super().__init__("ClippedSoftmax")
        self.gamma, self.zeta, self.alpha, self.softmaxes = gamma, zeta, alpha, softmaxes
        self.dtypes, self.layers, self.per_head, self.graph = dtypes, layers, per_head, graph
        self.shapes = shapes or {}

    def pattern(self, op: Any, x: ir.Value) -> Any:
        return op.Softmax(x, _allow_other_attributes=True, _outputs=["probs"])

    def check(self, context: Any, x: ir.Value, probs: ir.Value, **_: Any) -> MatchResult:  # type: ignore[override]
        result = MatchResult()
        node = probs.producer()
        assert node is not None
        if node.metadata_props.get(INSERTED_BY_KEY) == ClipSoftmaxPass.name:
            return result.fail("Softmax already clipped (inserted by clipped-softmax)", node)
        if self.softmaxes is not None and node not in self.softmaxes:
            return result.fail("Softmax is not part of a recognised attention block", node)
        if _dtype(x, self.dtypes) not in _FLOATS:
            return result.fail(f"Softmax input type {_dtype(x, self.dtypes)} is not a float type", x)
        opset = context.model.opset_imports.get("", context.model.opset_imports.get("ai.onnx", 0))
        if self.layers is not None:
            return self._check_trainable(result, node, x)
        if self.gamma is None and opset < 15 and _static_dim(x.shape, _axis(node)) is None:
            return result.fail("dynamic softmax length needs opset >= 15 (Shape start/end); give gamma", x)
        return result

    def _check_trainable(self, result: MatchResult, node: ir.Node, x: ir.Value) -> MatchResult:
        if node not in self.layers:  # type: ignore[operator]
            return result.fail("Softmax has no layer index for trainable clipping parameters", node)
        shape = x.shape if x.shape is not None else self.shapes.get(x.name or "")
        if self.gamma is None and _static_dim(shape, _axis(node)) is None:
            return result.fail("trainable gamma needs a static softmax length to start at -alpha / T; give gamma", x)
        if self.per_head:
            heads = self.layers[node][1]  # type: ignore[index]
            if heads is None:
                return result.fail("number of heads unknown: use parameters=layer", node)
            rank = len(shape) if shape is not None else None
            dim = shape[-3] if shape is not None and rank is not None and rank >= 3 else None
            if rank is None or rank < 3 or (isinstance(dim, int) and dim != heads):
                return result.fail(f"Softmax input is not [..., {heads} heads, T, T]: use parameters=layer", x)
        return result

    def rewrite(self, op: Any, x: ir.Value, probs: ir.Value, **_: Any) -> ir.Value:
        node = probs.producer()
        dtype = _dtype(x, self.dtypes)
        assert node is not None and dtype is not None
        name = ClipSoftmaxPass.name
        attributes = {k: a.value for k, a in node.attributes.items()}
        softmax = _mark(op.Softmax(x, **attributes), name)
        axis = _axis(node)
        length = _static_dim(x.shape if x.shape is not None else self.shapes.get(x.name or ""), axis)
        if self.layers is not None:  # trainable initializers
            gamma = self.gamma if self.gamma is not None else -self.alpha / float(length)  # type: ignore[arg-type]
            layer, heads = self.layers[node]
            shape = (heads, 1, 1) if self.per_head and heads is not None else ()
            prefix = f"{CLIP_PREFIX}{layer}."
            assert self.graph is not None
            gamma_value = _initializer(self.graph, prefix + "gamma", np.full(shape, gamma, dtype.numpy()))
            zeta_value = _initializer(self.graph, prefix + "zeta", np.full(shape, self.zeta, dtype.numpy()))
            scale = _mark(op.Sub(zeta_value, gamma_value), name)
            shifted = _mark(op.Add(_mark(op.Mul(softmax, scale), name), gamma_value), name)
        elif self.gamma is not None or length is not None:
            gamma = self.gamma if self.gamma is not None else -self.alpha / float(length)  # type: ignore[arg-type]
            scaled = _mark(op.Mul(softmax, op.Constant(value=_scalar(self.zeta - gamma, dtype))), name)
            shifted = _mark(op.Add(scaled, op.Constant(value=_scalar(gamma, dtype))), name)
        else:  # gamma = -alpha / T with T the softmax axis length, at run time
            shape = op.Shape(x, start=axis, end=axis + 1) if axis != -1 else op.Shape(x, start=-1)
            length_value = _mark(op.Cast(shape, to=dtype), name)
            gamma_value = _mark(op.Div(op.Constant(value=_scalar(-self.alpha, dtype)), length_value), name)
            scale = _mark(op.Sub(op.Constant(value=_scalar(self.zeta, dtype)), gamma_value), name)
            shifted = _mark(op.Add(_mark(op.Mul(softmax, scale), name), gamma_value), name)
        low, high = op.Constant(value=_scalar(0.0, dtype)), op.Constant(value=_scalar(1.0, dtype))
        return _mark(op.Clip(shifted, low, high), name)


def _axis(node: ir.Node) -> int:
    attr = node.attributes.get("axis")
    return int(attr.value) if attr is not None else -1


def _static_dim(shape: ir.Shape | None, axis: int) -> int | None:
    if shape is None:
        return None
    try:
        dim = shape[axis]
    except IndexError:
        return None
    return dim if isinstance(dim, int) and dim > 0 else None


def clipped_softmax_rule(gamma: float | None = None, zeta: float = 1.0, alpha: float = 4.0,
                         softmaxes: frozenset[ir.Node] | None = None,
                         dtypes: dict[str, ir.DataType] | None = None,
                         layers: dict[ir.Node, tuple[int, int | None]] | None = None, per_head: bool = False,
                         graph: ir.Graph | None = None,
                         shapes: dict[str, ir.Shape] | None = None) -> pattern.RewriteRule:
    """The clipped-softmax rule; ``softmaxes`` limits it to those Softmax nodes; ``dtypes``
    gives element types of values that declare none; ``layers`` (Softmax node -> ``(layer, heads)``)
    makes ``gamma``/``zeta`` trainable initializers of ``graph`` (per head with ``per_head``); ``shapes``
    gives shapes of values that declare none (the Softmax input's rank and length matter)."""
    if layers is not None and graph is None:
        raise UsageError("clipped_softmax_rule: trainable parameters (layers) need the graph")
    return _ClippedSoftmax.rule(gamma=gamma, zeta=zeta, alpha=alpha, softmaxes=softmaxes, dtypes=dtypes,
                                layers=layers, per_head=per_head, graph=graph, shapes=shapes)


@dataclasses.dataclass(frozen=True)
class ClipSoftmaxSettings(PassSettings):
    gamma: float | None = setting(None, "lower stretch gamma (<= 0); None: -alpha / T, T the softmax length")
    zeta: float = setting(1.0, "upper stretch zeta (>= 1)")
    alpha: float = setting(4.0, "gamma = -alpha / T when gamma is not given", search=(2.0, 3.0, 4.0))
    scope: str = setting("attention", "'attention': only Softmax nodes of recognised attention blocks; 'all'")
    parameters: str = setting("constant", "'constant': gamma and zeta are Constant nodes; 'layer': trainable "
                              "initializers graphopt.clip.<layer>.gamma/.zeta (finetune --trainable clip); "
                              "'head': the same with one value per head, shape [H, 1, 1]",
                              search=("constant", "layer", "head"))

    def validate(self) -> None:
        if self.gamma is not None and not (math.isfinite(self.gamma) and self.gamma <= 0):
            raise UsageError(f"clipped-softmax: gamma must be <= 0, got {self.gamma}")
        if not (math.isfinite(self.zeta) and self.zeta >= 1):
            raise UsageError(f"clipped-softmax: zeta must be >= 1, got {self.zeta}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise UsageError(f"clipped-softmax: alpha must be positive, got {self.alpha}")
        if self.scope not in ("attention", "all"):
            raise UsageError(f"clipped-softmax: scope must be 'attention' or 'all', got {self.scope!r}")
        if self.parameters not in ("constant", "layer", "head"):
            raise UsageError(f"clipped-softmax: parameters must be 'constant', 'layer' or 'head', "
                             f"got {self.parameters!r}")


@register_pass
class ClipSoftmaxPass(GraphoptPass[ClipSoftmaxSettings]):
    """``Softmax(x) -> Clip(Add(Mul(Softmax(x), zeta - gamma), gamma), 0, 1)``.

    ``gamma = -alpha / T`` by default, ``T`` the length of the softmax axis (a constant when the shape
    is static, computed from ``Shape(x)`` otherwise). ``gamma = 0, zeta = 1`` reproduces the original
    outputs exactly. Changes outputs otherwise (it is meant to be followed by fine-tuning).

    ``parameters='layer'`` / ``'head'``: ``gamma`` and ``zeta`` become initializers
    ``graphopt.clip.<layer>.gamma`` / ``.zeta`` (scalars, or ``[H, 1, 1]`` per head), ``layer`` counting
    the clipped Softmax nodes in graph order, so that ``graphopt finetune --trainable clip`` trains them:
    ``Clip(Add(Mul(Softmax(x), Sub(zeta, gamma)), gamma), 0, 1)``. Their start is ``gamma`` or
    ``-alpha / T`` (``T`` must then be static).
    """

    name = "clipped-softmax"
    Settings = ClipSoftmaxSettings
    output_preserving = False

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        s = self.settings
        softmaxes = None
        heads: dict[ir.Node, int | None] = {}
        if s.scope == "attention":
            located: list[dict[str, ir.Node | None]] = []
            blocks = find_attention(model.graph, [], located=located)
            if s.parameters == "head" and any(b.num_heads is None for b in blocks):
                from graphopt.analysis import summarize

                concrete = summarize(model).attention_blocks  # heads from concrete shapes, same graph order
                blocks = list(concrete) if len(concrete) == len(blocks) else blocks
            heads = {w["node"]: b.num_heads for b, w in zip(blocks, located)
                     if w["node"] is not None and w["node"].op_type == "Softmax"}
            softmaxes = frozenset(heads)
            if not softmaxes:
                logger.info("clipped-softmax: no attention Softmax found")
                return ir.passes.PassResult(model, False)
        layers = None
        if s.parameters != "constant":
            order = [n for n in model.graph if n.op_type == "Softmax" and (softmaxes is None or n in softmaxes)
                     and n.metadata_props.get(INSERTED_BY_KEY) != self.name]
            layers = {n: (i, heads.get(n)) for i, n in enumerate(order)}
        untyped = any(n.op_type == "Softmax" and n.inputs[0] is not None and n.inputs[0].dtype is None
                      for n in model.graph)
        dtypes = value_dtypes(model) if untyped else None
        unshaped = any(n.inputs[0] is not None and n.inputs[0].shape is None for n in (layers or {}))
        rule = clipped_softmax_rule(s.gamma, s.zeta, s.alpha, softmaxes, dtypes, layers=layers,
                                    per_head=s.parameters == "head", graph=model.graph,
                                    shapes=_value_shapes(model) if unshaped else None)
        count = rule.apply_to_model(model)
        logger.info("clipped-softmax: %d Softmax node(s) clipped", count)
        if not count and layers:
            logger.warning("clipped-softmax: no Softmax clipped; trainable parameters need a static softmax length "
                           "or an explicit gamma (and known heads for parameters=head)")
        return ir.passes.PassResult(model, count > 0)


@dataclasses.dataclass(frozen=True)
class GateAttentionSettings(PassSettings):
    mode: str = setting("finetune", "'finetune': gate scaled by 1/init_gate (starts at 1); 'scratch': unscaled")
    init_gate: float = setting(0.5, "initial gate value pi_init: bias = logit(pi_init)", search=(0.25, 0.5, 0.75))
    weight_std: float = setting(0.0, "std of the gate weights' normal initialisation (0: zeros)")
    inputs: str = setting("full", "'full': each head's gate reads all of x (Wg: [D, H]); 'chunk': head i's gate "
                          "reads only the i-th D/H slice of x (Wg: [H, D/H])", search=("full", "chunk"))
    seed: int = setting(0, "seed of the gate weights")

    def validate(self) -> None:
        if self.mode not in ("finetune", "scratch"):
            raise UsageError(f"gated-attention: mode must be 'finetune' or 'scratch', got {self.mode!r}")
        if not 0 < self.init_gate < 1:
            raise UsageError(f"gated-attention: init_gate must be in (0, 1), got {self.init_gate}")
        if not (math.isfinite(self.weight_std) and self.weight_std >= 0):
            raise UsageError(f"gated-attention: weight_std must be >= 0, got {self.weight_std}")
        if self.inputs not in ("full", "chunk"):
            raise UsageError(f"gated-attention: inputs must be 'full' or 'chunk', got {self.inputs!r}")


@register_pass
class GateAttentionPass(GraphoptPass[GateAttentionSettings]):
    """Multiply each head's output by a gate computed from the layer input, before the output projection:

    ``O(C) -> O(C ⊙ scale · Sigmoid(x·Wg + bg))``, with ``C`` the concatenated heads ``[..., H·Dh]``
    viewed as ``[-1, H, Dh]``, ``x`` the input of the Q projection, ``Wg: [D, H]`` (one linear map per
    head, one gate per token and head; with ``inputs='chunk'`` head ``i`` maps only the ``i``-th
    ``D/H`` slice of ``x``: ``gᵢ = xᵢ·wᵢ + bᵢ``, ``Wg: [H, D/H]``), ``bg = logit(init_gate)`` and
    ``scale = 1/init_gate`` in the fine-tuning mode (1 otherwise). With ``weight_std = 0`` and
    ``init_gate = 0.5`` the fine-tuning mode reproduces the original outputs exactly
    (``Sigmoid(0) · 2 = 1``). Blocks whose output projection, layer input, heads or head size are
    unknown are skipped (logged).
    """

    name = "gated-attention"
    Settings = GateAttentionSettings
    output_preserving = False
    _dtypes: dict[str, ir.DataType]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        located: list[dict[str, ir.Node | None]] = []
        blocks = find_attention(graph, [], located=located)
        if not blocks:
            logger.warning("gated-attention: no attention blocks found")
            return ir.passes.PassResult(model, False)
        if any(b.num_heads is None or b.head_size is None for b in blocks):
            from graphopt.analysis import summarize

            concrete = summarize(model).attention_blocks  # heads from concrete shapes, same graph order
            if len(concrete) == len(blocks):
                blocks = list(concrete)
        untyped = any(v.dtype is None for n in graph for v in n.outputs)
        self._dtypes = value_dtypes(model) if untyped else {}
        rng = np.random.default_rng(self.settings.seed)
        gated = 0
        for index, (block, where) in enumerate(zip(blocks, located)):
            reason = self._gate(graph, index, block, where, rng)
            if reason:
                logger.warning("gated-attention: block %d (%s) skipped: %s", index, block.node, reason)
            else:
                gated += 1
        return ir.passes.PassResult(model, gated > 0)

    def _gate(self, graph: ir.Graph, index: int, block: AttentionBlock, where: dict[str, ir.Node | None],
              rng: np.random.Generator) -> str | None:
        s = self.settings
        o_node, q_node, node = where.get("o"), where.get("q"), where["node"]
        if o_node is None:
            return "no output projection"
        source = q_node if q_node is not None else node if block.kind != "unfused" else None
        x = source.inputs[0] if source is not None and source.inputs else None
        if x is None:
            return "layer input unknown"
        if block.num_heads is None or block.head_size is None:
            return "heads or head size unknown"
        o_in = o_node.inputs[0]
        if o_in is not None and o_in.producer() is not None and \
                o_in.producer().metadata_props.get(INSERTED_BY_KEY) == self.name:  # type: ignore[union-attr]
            return "already gated"
        width = x.shape[-1] if x.shape is not None and len(x.shape) else None
        width = width if isinstance(width, int) else (block.q_proj.in_features if block.q_proj else None)
        if o_in is None or width is None:
            return "layer width unknown"
        if _dtype(x, self._dtypes) != ir.DataType.FLOAT or _dtype(o_in, self._dtypes) != ir.DataType.FLOAT:
            return "only float32 blocks are gated"
        if o_in.shape is not None and isinstance(o_in.shape[-1], int) and \
                o_in.shape[-1] != block.num_heads * block.head_size:
            return f"output projection input width {o_in.shape[-1]} != heads x head size"
        heads, head = block.num_heads, block.head_size
        if s.inputs == "chunk" and width % heads:
            return f"layer width {width} is not divisible by {heads} heads"
        shape = (width, heads) if s.inputs == "full" else (heads, width // heads)
        weight = rng.normal(0.0, s.weight_std, shape) if s.weight_std > 0 else np.zeros(shape)
        bias = np.full((heads,), math.log(s.init_gate / (1 - s.init_gate)))
        prefix = f"{GATE_PREFIX}{index}."
        w = _initializer(graph, prefix + "weight", weight.astype(np.float32))
        b = _initializer(graph, prefix + "bias", bias.astype(np.float32))
        tape = MarkedNodes(self.name, prefix)
        if s.inputs == "full":
            logits = tape.op("Add", [tape.op("MatMul", [x, w]), b])
        else:  # per head: the head's slice of x times its own weight row
            chunks = tape.op("Reshape", [x, tape.const(np.array([-1, heads, width // heads], np.int64))])
            axes = tape.const(np.array([-1], np.int64))
            logits = tape.op("Add", [tape.op("ReduceSum", [tape.op("Mul", [chunks, w]), axes], keepdims=0), b])
        gate = tape.op("Sigmoid", [logits])
        if s.mode == "finetune":
            gate = tape.op("Mul", [gate, tape.const(np.array(1.0 / s.init_gate, np.float32))])
        gate = tape.op("Reshape", [gate, tape.const(np.array([-1, heads, 1], np.int64))])
        split = tape.op("Reshape", [o_in, tape.const(np.array([-1, heads, head], np.int64))])
        product = tape.op("Mul", [split, gate])
        out = tape.op("Reshape", [product, tape.op("Shape", [o_in])])
        out.shape, out.dtype = o_in.shape, ir.DataType.FLOAT
        graph.insert_before(o_node, tape.nodes)
        o_node.replace_input_with(0, out)
        return None


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    if name in graph.initializers:
        raise UsageError(f"initializer {name!r} already exists: the rewrite was applied before")
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                     const_value=ir.tensor(array, name=name))
    graph.register_initializer(value)
    return value
