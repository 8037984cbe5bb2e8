"""Attention blocks, unfused and fused.

Unfused: ``P = Softmax(f(Q·Kᵀ))`` and ``C = P·V``, where ``f`` is any chain of scaling, masking and
casts (``Mul``, ``Div``, ``Add``, ``Where``, ...). Each of ``Q``, ``K``, ``V`` is traced up to a linear
projection (MatMul/Gemm with a constant weight) through reshapes, transposes, splits, scaling and
rotary embeddings; one projection feeding all three is a fused QKV weight. The output projection
follows ``C`` through reshapes and transposes. Heads and head size come from the shape of ``Q`` at
the ``Q·Kᵀ`` MatMul (``[B, H, S, D]``), else from the projection width, else from the constants of a
4-D ``Reshape`` on the Q path; KV heads from the K projection width (grouped-query attention).

Fused: ``com.microsoft`` ``*Attention`` kernels (``num_heads``, ``kv_num_heads``, the QKV weight of
``Attention``) and ONNX ``Attention`` (``q_num_heads`` or 4-D inputs).

A Softmax with a Q·Kᵀ MatMul but no MatMul with V (or the reverse) is reported in ``notes``, as is
every part of a recognised block that could not be identified.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from graphopt.analysis._cost import block_macs
from graphopt.analysis._graph import Projection, Walker, op_key
from graphopt.analysis._shapes import static_shape

__all__ = ["AttentionBlock", "find_attention"]

_MS = "com.microsoft"
# graphopt.rewrites._markers.INSERTED_BY_KEY, spelled out so that analysis does not import the rewrites package
INSERTED_BY_KEY = "graphopt.inserted_by"
_MATMULS = frozenset({"MatMul", f"{_MS}.FusedMatMul", "Einsum"})
_SCORE_PATH = frozenset({"Add", "Sub", "Mul", "Div", "Where", "Cast", "Identity", "Reshape", "Clip", "Max",
                         "Min", "Tanh", "Squeeze", "Unsqueeze"})
_PROB_PATH = frozenset({"Where", "Cast", "Identity", "Dropout", "Reshape", "Squeeze", "Unsqueeze",
                        "Mul", "Add", "Clip"})  # Mul/Add/Clip: a clipped softmax
_PROJ_PATH = frozenset({"Mul", "Div", "Add", "Sub", "Neg", "Transpose", "Reshape", "Split", "Slice",
                        "Squeeze", "Unsqueeze", "Gather", "Cast", "Identity", "Concat", "Expand", "Flatten",
                        "SimplifiedLayerNormalization", "RMSNormalization", "LayerNormalization",
                        f"{_MS}.RotaryEmbedding", f"{_MS}.SimplifiedLayerNormalization"})
_OUT_PATH = frozenset({"Transpose", "Reshape", "Cast", "Identity", "Flatten", "Squeeze", "Unsqueeze"})


@dataclasses.dataclass(frozen=True)
class AttentionBlock:
    """One attention layer. ``kind`` is ``"unfused"`` or the fused op (``com.microsoft.Attention``).

    ``node`` is the Softmax (unfused) or the fused node; ``softmax`` the Softmax node (``None`` when fused);
    ``mask`` the tensor added to (or selected into, by ``Where``) the scores before the Softmax, or the
    mask input of a fused op; ``residual`` the ``Add`` that adds the block's output (after the output
    projection) to its input stream; ``layer_input`` the tensor the Q projection reads (the layer input).
    """

    kind: str
    node: str
    num_heads: int | None
    head_size: int | None
    kv_heads: int | None
    q_proj: Projection | None
    k_proj: Projection | None
    v_proj: Projection | None
    o_proj: Projection | None
    qkv_fused: bool
    macs: int | None
    softmax: str | None = None
    mask: str | None = None
    residual: str | None = None
    layer_input: str | None = None

    @property
    def hidden_size(self) -> int | None:
        if self.num_heads is None or self.head_size is None:
            return None
        return self.num_heads * self.head_size


def _is_activation_matmul(walker: Walker, node: ir.Node) -> bool:
    """A MatMul of two computed tensors (Q·Kᵀ or P·V), not a layer with a weight."""
    if op_key(node) not in _MATMULS:
        return False
    return sum(1 for v in node.inputs if v is not None and not walker.consts.is_constant(v)) >= 2


def _is_layer(walker: Walker, node: ir.Node) -> bool:
    """A linear layer of the model (not one inserted by a graphopt rewrite, such as an adapter)."""
    return INSERTED_BY_KEY not in node.metadata_props and walker.consts.projection(node) is not None


def _projection_before(walker: Walker, value: ir.Value | None) -> tuple[Projection | None, ir.Node | None]:
    if value is None:
        return None, None
    node = walker.backward(value, _PROJ_PATH, 12, lambda n: _is_layer(walker, n))
    return (walker.consts.projection(node), node) if node is not None else (None, None)


def _projection_after(walker: Walker, value: ir.Value) -> tuple[Projection | None, ir.Node | None]:
    def accept(node: ir.Node, index: int) -> bool:
        return index == 0 and _is_layer(walker, node)

    node = walker.forward(value, _OUT_PATH | {"Mul"}, 9, accept)  # Mul: a head gate
    return (walker.consts.projection(node), node) if node is not None else (None, None)


def _reshape_heads(walker: Walker, value: ir.Value) -> tuple[int | None, int] | None:
    """``(heads, head_size)`` from a 4-D ``Reshape`` target on the path up from ``value``; heads is
    ``None`` when the target leaves it to ``-1``."""
    def accept(node: ir.Node) -> bool:
        return node.op_type == "Reshape" and _reshape_target(node) is not None

    node = walker.backward(value, _PROJ_PATH, 12, accept)
    return _reshape_target(node) if node is not None else None


def _reshape_target(node: ir.Node) -> tuple[int | None, int] | None:
    shape_value = node.inputs[1] if len(node.inputs) > 1 else None
    if shape_value is None:
        return None
    tensor = ir.convenience.get_const_tensor(shape_value)
    dims: list[int | None] = []
    if tensor is not None:
        dims = [int(d) for d in tensor.numpy().reshape(-1)]
    elif shape_value.producer() is not None and shape_value.producer().op_type == "Concat":  # type: ignore[union-attr]
        for part in shape_value.producer().inputs:  # type: ignore[union-attr]
            part_tensor = ir.convenience.get_const_tensor(part) if part is not None else None
            if part_tensor is None:
                part_shape = static_shape(part)
                dims.extend([None] * (part_shape[0] if part_shape is not None and len(part_shape) == 1 else 1))
            else:
                dims.extend(int(d) for d in part_tensor.numpy().reshape(-1))
    if len(dims) != 4 or dims[3] is None or dims[3] <= 0:
        return None
    return (dims[2] if dims[2] is not None and dims[2] > 0 else None), dims[3]


def find_attention(
    graph: ir.Graph, notes: list[str], *, located: list[dict[str, ir.Node | None]] | None = None
) -> list[AttentionBlock]:
    """Unfused attention around each Softmax, and fused attention kernels, in graph order.

    With ``located``, one dict per block is appended to it with the nodes themselves (for rewrites
    of graphs whose nodes have no names): ``node`` (the Softmax or fused op), ``q``, ``k``, ``v``
    and ``o`` (the projections, ``None`` where not found)."""
    walker = Walker(graph)
    blocks = []
    for node in graph:
        key = op_key(node)
        where: dict[str, ir.Node | None] = {"node": node}
        if key == "Softmax":
            block = _unfused_attention(walker, node, notes, where)
        elif (node.domain == _MS and node.op_type.endswith("Attention")) or key == "Attention":
            block = _fused_attention(walker, node, notes, where)
        else:
            continue
        if block is not None:
            blocks.append(block)
            if located is not None:
                located.append(where)
    return blocks


def _unfused_attention(
    walker: Walker, softmax: ir.Node, notes: list[str], where: dict[str, ir.Node | None]
) -> AttentionBlock | None:
    name = softmax.name or "?"
    if softmax.inputs[0] is None:
        return None
    scores = walker.backward(softmax.inputs[0], _SCORE_PATH, 6, lambda n: _is_activation_matmul(walker, n))
    context = walker.forward(
        softmax.outputs[0], _PROB_PATH, 7,
        lambda n, i: _is_activation_matmul(walker, n) and (i == 0 or op_key(n) == "Einsum"),
    )
    if scores is None and context is None:
        return None  # a classifier's softmax, not attention
    if scores is None:
        notes.append(f"Softmax {name!r}: its output is multiplied with V in {context.name!r} "  # type: ignore[union-attr]
                     "but no Q·Kᵀ MatMul of two activations feeds it; not counted as attention")
        return None
    if context is None:
        notes.append(f"Softmax {name!r}: Q·Kᵀ comes from {scores.name!r} but the probabilities never reach "
                     "a MatMul with V; not counted as attention")
        return None
    q_value, k_value = scores.inputs[0], scores.inputs[1]
    v_index = 1 if op_key(context) != "Einsum" else next(
        (i for i, v in enumerate(context.inputs) if v is not None and v.producer() is not None
         and v.producer() is not softmax), 1)
    v_value = context.inputs[v_index]
    q_proj, q_node = _projection_before(walker, q_value)
    k_proj, k_node = _projection_before(walker, k_value)
    v_proj, v_node = _projection_before(walker, v_value)
    o_proj, o_node = _projection_after(walker, context.outputs[0])
    for part, proj in (("Q", q_proj), ("K", k_proj), ("V", v_proj)):
        if proj is None:
            notes.append(f"attention at Softmax {name!r}: no {part} projection (MatMul/Gemm with a constant "
                         f"weight) found upstream of {scores.name if part != 'V' else context.name!r}")
    if o_proj is None:
        notes.append(f"attention at Softmax {name!r}: no output projection found after {context.name!r}")
    fused = q_node is not None and q_node is k_node is v_node
    heads, head, kv_heads = _heads_from_shapes(q_value, k_value)
    if heads is None and head is not None and q_proj is not None and q_proj.out_features:
        width = q_proj.out_features // 3 if fused else q_proj.out_features
        heads = width // head if width % head == 0 else None
    if heads is None or head is None:
        found = _reshape_heads(walker, q_value) if q_value is not None else None
        if found is not None:
            heads, head = found[0] or heads, found[1]
        if heads is None and head and q_proj is not None and q_proj.out_features:
            width = q_proj.out_features // 3 if fused else q_proj.out_features
            heads = width // head if width % head == 0 else None
    if heads is None or head is None:
        notes.append(f"attention at Softmax {name!r}: number of heads unknown (no 4-D Q shape, Reshape "
                     "constants or projection width to read it from)")
    if k_proj is not None and not fused and head and k_proj.out_features and k_proj.out_features % head == 0:
        kv_heads = k_proj.out_features // head
    elif kv_heads is None:
        kv_heads = heads
    where.update(q=q_node, k=k_node, v=v_node, o=o_node)
    return AttentionBlock(
        kind="unfused", node=name, num_heads=heads, head_size=head, kv_heads=kv_heads,
        q_proj=q_proj, k_proj=k_proj, v_proj=v_proj, o_proj=o_proj, qkv_fused=fused,
        macs=block_macs([scores, context, q_node, k_node, v_node, o_node]),
        softmax=name, mask=_mask_before(walker, softmax, scores), residual=_residual_after(walker, o_node),
        layer_input=_input_name(q_node),
    )


def _reaches(value: ir.Value | None, target: ir.Node, depth: int = 8) -> bool:
    """Whether ``target`` produces ``value`` or one of its ancestors within ``depth`` steps."""
    frontier = [value] if value is not None else []
    for _ in range(depth):
        producers = [v.producer() for v in frontier]
        if any(p is target for p in producers):
            return True
        frontier = [v for p in producers if p is not None for v in p.inputs if v is not None]
    return False


def _mask_before(walker: Walker, softmax: ir.Node, scores: ir.Node) -> str | None:
    """The tensor added to the scores (``Add``) or chosen where the scores are masked out (``Where``)."""
    value = softmax.inputs[0]
    for _ in range(8):
        node = value.producer() if value is not None else None
        if node is None or node is scores:
            return None
        on_path = [v for v in node.inputs if v is not None and _reaches(v, scores)]
        if not on_path:
            return None
        if op_key(node) in ("Add", "Sub"):
            others = [v for v in node.inputs if v is not None and v is not on_path[0]]
            if others:
                return others[0].name
        if op_key(node) == "Where" and node.inputs[0] is not None and node.inputs[0] not in on_path:
            return node.inputs[0].name
        value = on_path[0]
    return None


def _residual_after(walker: Walker, o_node: ir.Node | None) -> str | None:
    """The first ``Add`` of two computed tensors downstream of the output projection (the skip connection)."""
    if o_node is None:
        return None
    frontier = list(o_node.outputs)
    for _ in range(4):
        nxt: list[ir.Value] = []
        for value in frontier:
            for node, _index in value.uses():
                key = op_key(node)
                if key == "Add" and all(not walker.consts.is_constant(v) for v in node.inputs):
                    return node.name
                if key in _OUT_PATH or key in ("Add", "Dropout", f"{_MS}.BiasDropout"):
                    nxt.extend(node.outputs[:1])
        frontier = nxt
    return None


def _input_name(node: ir.Node | None) -> str | None:
    return node.inputs[0].name if node is not None and node.inputs and node.inputs[0] is not None else None


def _heads_from_shapes(q: ir.Value | None, k: ir.Value | None) -> tuple[int | None, int | None, int | None]:
    q_shape, k_shape = static_shape(q), static_shape(k)
    if q_shape is None:
        return None, None, None
    if len(q_shape) == 4:
        kv = k_shape[1] if k_shape is not None and len(k_shape) == 4 else None
        return q_shape[1], q_shape[3], kv
    return None, q_shape[-1], None


def _fused_attention(
    walker: Walker, node: ir.Node, notes: list[str], where: dict[str, ir.Node | None]
) -> AttentionBlock:
    key, name = op_key(node), node.name or "?"
    attrs = {k: a.value for k, a in node.attributes.items()}
    q_shape = static_shape(node.inputs[0]) if node.inputs else None
    heads = int(attrs.get("num_heads", attrs.get("q_num_heads", 0))) or None
    kv_heads = int(attrs.get("kv_num_heads", 0)) or None
    head = None
    q_proj = k_proj = v_proj = None
    q_node = k_node = v_node = None
    fused = False
    if key == f"{_MS}.Attention":
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        w_shape = static_shape(weight)
        sizes = attrs.get("qkv_hidden_sizes")
        q_width = int(sizes[0]) if sizes else (w_shape[-1] // 3 if w_shape else None)
        if heads and q_width:
            head = q_width // heads
        if weight is not None:
            q_proj = k_proj = v_proj = Projection(
                name, key, walker.consts.weight_name(weight),
                w_shape[0] if w_shape else None, w_shape[-1] if w_shape else None,
            )
            fused = True
    else:
        if key == "Attention" and q_shape is not None and len(q_shape) == 4:
            heads, head = q_shape[1], q_shape[3]
            k_shape = static_shape(node.inputs[1]) if len(node.inputs) > 1 else None
            kv_heads = k_shape[1] if k_shape is not None and len(k_shape) == 4 else kv_heads
        elif q_shape is not None and heads:
            if len(q_shape) == 5:
                head = q_shape[4]
            elif key == f"{_MS}.GroupQueryAttention" and (len(node.inputs) < 2 or node.inputs[1] is None):
                head = q_shape[-1] // (heads + 2 * (kv_heads or heads))
            else:
                head = q_shape[-1] // heads
        inputs = [*node.inputs, None, None, None]
        q_proj, q_node = _projection_before(walker, inputs[0])
        k_proj, k_node = _projection_before(walker, inputs[1])
        v_proj, v_node = _projection_before(walker, inputs[2])
        if inputs[1] is None and inputs[2] is None:  # packed QKV in the query input
            k_proj, v_proj, k_node, v_node = q_proj, q_proj, q_node, q_node
        fused = q_node is not None and q_node is k_node is v_node
    if kv_heads is None:
        kv_heads = heads
    o_proj, o_node = _projection_after(walker, node.outputs[0])
    if heads is None or head is None:
        notes.append(f"{key} {name!r}: number of heads or head size unknown")
    mask_index = {f"{_MS}.Attention": 3, f"{_MS}.MultiHeadAttention": 4, "Attention": 3}.get(key)
    mask = node.inputs[mask_index] if mask_index is not None and len(node.inputs) > mask_index else None
    if key == f"{_MS}.MultiHeadAttention" and mask is None and len(node.inputs) > 5:
        mask = node.inputs[5]  # attention_bias
    where.update(q=q_node, k=k_node, v=v_node, o=o_node)
    return AttentionBlock(
        kind=key, node=name, num_heads=heads, head_size=head, kv_heads=kv_heads,
        q_proj=q_proj, k_proj=k_proj, v_proj=v_proj, o_proj=o_proj, qkv_fused=fused,
        macs=block_macs([node, q_node, k_node, v_node, o_node]),
        mask=mask.name if mask is not None else None, residual=_residual_after(walker, o_node),
        layer_input=_input_name(q_node) if q_node is not None else _input_name(node),
    )
