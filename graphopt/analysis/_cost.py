"""Multiply-accumulate (MAC) and floating-point operation (FLOP) estimates per node.

Counting rules (shapes are the concrete ones inferred by :mod:`graphopt.analysis._shapes`):

- ``MatMul`` (and ``MatMulInteger``, ``QLinearMatMul``, ``FusedMatMul``, ``MatMulNBits``, ...):
  ``MACs = numel(Y) * K`` with ``K`` the contracted dim, so ``[1,128,64] x [64,256]`` is
  ``128*64*256``; broadcasting batch dims are included.
- ``Gemm``: ``M*K*N`` MACs; the bias ``C`` adds ``M*N`` FLOPs; ``alpha``/``beta`` are free.
- ``Conv``: ``numel(Y) * (C_in/group) * prod(kernel)`` MACs; the bias adds ``numel(Y)`` FLOPs.
  ``ConvTranspose``: ``numel(X) * (C_out/group) * prod(kernel)``.
- ``Einsum``: the product of the sizes of all indices (for two or more operands).
- ``LSTM``/``GRU``/``RNN``: ``S*B*dirs*gates*H*(I+H)`` MACs.
- Fused attention: ``com.microsoft.Attention`` counts its QKV projection
  (``B*S*D_in*D_qkv``) plus ``Q Kᵀ`` and ``P V`` (``B*S*L*(D_q + D_v)``, ``L`` the key length
  including a past); ``MultiHeadAttention``, ``GroupQueryAttention`` and ONNX ``Attention``
  count ``Q Kᵀ`` and ``P V`` only (their projections are separate nodes).
  Their softmax adds ``5*B*N*S*L`` FLOPs.
- ``FLOPs = 2 * MACs`` plus, per output element: 1 for elementwise arithmetic and single-call math
  (``Add``, ``Mul``, ``Exp``, ``Tanh``, ``Erf``, ``Relu``, ...); 4 for ``Sigmoid``/``HardSwish``-like
  activations; 8 for ``Gelu`` (``FastGelu``/``BiasGelu`` 9); per input element: 5 for ``Softmax``,
  8 for ``LayerNormalization`` and group/instance norms (``SkipLayerNormalization`` 9), 5 for RMS
  norms, 2 for ``BatchNormalization``, 1 for reductions; pooling costs ``numel(Y) * prod(kernel)``
  (global pooling ``numel(X)``).
- Data movement (``Reshape``, ``Transpose``, ``Gather``, ``Concat``, casts, comparisons, ...) and
  elementwise ops on integer tensors (shape arithmetic, masks) are free.
- Nodes inside control-flow bodies are counted once.
- A matrix-like op (``*Conv*``, ``*MatMul*``, ``*Gemm*``, ``*Attention*``, RNNs) without shapes or
  without a rule is not counted and makes the estimate partial (``node_cost`` returns ``None``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import onnx_ir as ir

from graphopt.analysis._graph import op_key
from graphopt.analysis._shapes import static_shape

__all__ = ["NodeCost", "block_macs", "counts_macs", "node_cost"]

_MS = "com.microsoft"


@dataclasses.dataclass(frozen=True)
class NodeCost:
    macs: int
    flops: int


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


def _attr(node: ir.Node, name: str, default: int = 0) -> int:
    attr = node.attributes.get(name)
    return int(attr.value) if attr is not None else default


def _in(node: ir.Node, index: int) -> tuple[int, ...] | None:
    return static_shape(node.inputs[index]) if len(node.inputs) > index else None


def _out(node: ir.Node) -> tuple[int, ...] | None:
    return static_shape(node.outputs[0]) if node.outputs else None


def _has(node: ir.Node, index: int) -> bool:
    return len(node.inputs) > index and node.inputs[index] is not None


def _matmul(a_index: int, b_index: int) -> Callable[[ir.Node], NodeCost | None]:
    def cost(node: ir.Node) -> NodeCost | None:
        a, b = _in(node, a_index), _in(node, b_index)
        if a is None:
            return None
        trans_a = _attr(node, "transA")
        k = a[0] if len(a) == 1 else (a[-2] if trans_a else a[-1])
        out = _out(node)
        if out is None:
            if b is None:
                return None
            try:
                batch = np.broadcast_shapes(a[:-2], b[:-2])
            except ValueError:
                return None
            m = 1 if len(a) == 1 else (a[-1] if trans_a else a[-2])
            n = 1 if len(b) == 1 else (b[-2] if _attr(node, "transB") else b[-1])
            out = (*batch, m, n)
        macs = _numel(out) * k
        return NodeCost(macs, 2 * macs)

    return cost


def _matmul_nbits(node: ir.Node) -> NodeCost | None:
    out = _out(node)
    if out is None:
        return None
    macs = _numel(out) * _attr(node, "K")
    return NodeCost(macs, 2 * macs + (_numel(out) if _has(node, 5) else 0))


def _gemm(node: ir.Node) -> NodeCost | None:
    a, b = _in(node, 0), _in(node, 1)
    if a is None or b is None or len(b) != 2:
        return None
    k = a[0] if _attr(node, "transA") else a[-1]
    m = _numel(a) // max(k, 1)
    n = b[0] if _attr(node, "transB") else b[1]
    macs = m * k * n
    return NodeCost(macs, 2 * macs + (m * n if _has(node, 2) else 0))


def _conv(w_index: int, bias_index: int | None) -> Callable[[ir.Node], NodeCost | None]:
    def cost(node: ir.Node) -> NodeCost | None:
        w, out = _in(node, w_index), _out(node)
        if w is None or out is None:
            return None
        macs = _numel(out) * _numel(w[1:])
        bias = _numel(out) if bias_index is not None and _has(node, bias_index) else 0
        return NodeCost(macs, 2 * macs + bias)

    return cost


def _conv_transpose(node: ir.Node) -> NodeCost | None:
    x, w, out = _in(node, 0), _in(node, 1), _out(node)
    if x is None or w is None:
        return None
    macs = _numel(x) * _numel(w[1:])
    bias = _numel(out) if out is not None and _has(node, 2) else 0
    return NodeCost(macs, 2 * macs + bias)


def _einsum(node: ir.Node) -> NodeCost | None:
    attr = node.attributes.get("equation")
    if attr is None:
        return None
    lhs = str(attr.value).replace(" ", "").split("->")[0].split(",")
    shapes = [static_shape(v) for v in node.inputs]
    if any(s is None for s in shapes) or len(lhs) != len(shapes) or "..." in "".join(lhs):
        return None
    sizes: dict[str, int] = {}
    for term, shape in zip(lhs, shapes):
        assert shape is not None
        for letter, dim in zip(term, shape):
            sizes[letter] = max(sizes.get(letter, 1), dim)
    if len(shapes) < 2:
        out = _out(node)
        return NodeCost(0, _numel(out) if out else 0)
    macs = _numel(list(sizes.values()))
    return NodeCost(macs, 2 * macs)


def _recurrent(gates: int) -> Callable[[ir.Node], NodeCost | None]:
    def cost(node: ir.Node) -> NodeCost | None:
        x, w, r = _in(node, 0), _in(node, 1), _in(node, 2)
        if x is None or w is None or r is None:
            return None
        seq, batch = (x[1], x[0]) if _attr(node, "layout") else (x[0], x[1])
        dirs, hidden = w[0], r[-1]
        macs = seq * batch * dirs * gates * hidden * (x[-1] + hidden)
        return NodeCost(macs, 2 * macs + seq * batch * dirs * gates * hidden * 4)

    return cost


def _ms_attention(node: ir.Node) -> NodeCost | None:
    x, w = _in(node, 0), _in(node, 1)
    if x is None or w is None:
        return None
    batch, seq, d_in = x[0], x[1], x[-1]
    sizes = node.attributes.get("qkv_hidden_sizes")
    q, _, v = (int(s) for s in sizes.value) if sizes is not None else (w[-1] // 3,) * 3
    past = _in(node, 4)
    length = seq + (past[3] if past is not None and len(past) == 5 else 0)
    heads = max(_attr(node, "num_heads", 1), 1)
    macs = batch * seq * d_in * w[-1] + batch * seq * length * (q + v)
    return NodeCost(macs, 2 * macs + batch * seq * w[-1] + 5 * batch * heads * seq * length)


def _ms_mha(node: ir.Node) -> NodeCost | None:
    q = _in(node, 0)
    if q is None:
        return None
    heads = max(_attr(node, "num_heads", 1), 1)
    batch, seq = q[0], q[1]
    if len(q) == 5:  # packed QKV [B, S, N, 3, H]
        d_q = d_v = q[2] * q[4]
        length = seq
    else:
        d_q = q[-1]
        k, v = _in(node, 1), _in(node, 2)
        if _has(node, 1) and k is None:
            return None
        length = seq if k is None else (k[2] if len(k) == 4 else k[1])
        d_v = d_q if v is None else (v[1] * v[3] if len(v) == 4 else v[-1])
    past = _in(node, 6)
    if past is not None and len(past) == 4:
        length += past[2]
    macs = batch * seq * length * (d_q + d_v)
    return NodeCost(macs, 2 * macs + 5 * batch * heads * seq * length)


def _ms_gqa(node: ir.Node) -> NodeCost | None:
    q = _in(node, 0)
    heads, kv_heads = _attr(node, "num_heads"), _attr(node, "kv_num_heads")
    if q is None or not heads:
        return None
    batch, seq = q[0], q[1]
    head = q[-1] // heads if _has(node, 1) else q[-1] // (heads + 2 * kv_heads)
    past = _in(node, 3)
    length = seq + (past[2] if past is not None and len(past) == 4 else 0)
    macs = 2 * batch * heads * seq * length * head
    return NodeCost(macs, 2 * macs + 5 * batch * heads * seq * length)


def _onnx_attention(node: ir.Node) -> NodeCost | None:
    q, k, v = _in(node, 0), _in(node, 1), _in(node, 2)
    if q is None or k is None or v is None:
        return None
    if len(q) == 4:
        batch, heads, seq, head = q
    else:
        heads = max(_attr(node, "q_num_heads", 1), 1)
        batch, seq, head = q[0], q[1], q[2] // heads
    length = k[2] if len(k) == 4 else k[1]
    kv_heads = k[1] if len(k) == 4 else max(_attr(node, "kv_num_heads", 1), 1)
    head_v = v[3] if len(v) == 4 else v[2] // kv_heads
    past = _in(node, 4)
    if past is not None and len(past) == 4:
        length += past[2]
    macs = batch * heads * seq * length * (head + head_v)
    return NodeCost(macs, 2 * macs + 5 * batch * heads * seq * length)


_MAC_RULES: dict[str, Callable[[ir.Node], NodeCost | None]] = {
    "MatMul": _matmul(0, 1),
    "MatMulInteger": _matmul(0, 1),
    "QLinearMatMul": _matmul(0, 3),
    f"{_MS}.FusedMatMul": _matmul(0, 1),
    f"{_MS}.MatMulIntegerToFloat": _matmul(0, 1),
    f"{_MS}.DynamicQuantizeMatMul": _matmul(0, 1),
    f"{_MS}.MatMulNBits": _matmul_nbits,
    "Gemm": _gemm,
    "Conv": _conv(1, 2),
    "ConvInteger": _conv(1, None),
    "QLinearConv": _conv(3, 8),
    f"{_MS}.FusedConv": _conv(1, 2),
    f"{_MS}.NhwcConv": _conv(1, 2),
    "ConvTranspose": _conv_transpose,
    "Einsum": _einsum,
    "LSTM": _recurrent(4),
    "GRU": _recurrent(3),
    "RNN": _recurrent(1),
    f"{_MS}.Attention": _ms_attention,
    f"{_MS}.MultiHeadAttention": _ms_mha,
    f"{_MS}.GroupQueryAttention": _ms_gqa,
    "Attention": _onnx_attention,
}

_PER_OUTPUT: dict[str, int] = {
    **dict.fromkeys(
        ["Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Neg", "Abs", "Exp", "Log", "Tanh", "Erf",
         "Sin", "Cos", "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Softplus", "Softsign",
         "ThresholdedRelu", "Clip", "Floor", "Ceil", "Round", "Sign", "Mod", "Max", "Min", "Sum", "Mean",
         f"{_MS}.BiasAdd"],
        1,
    ),
    **dict.fromkeys(["Sigmoid", "HardSigmoid", "HardSwish", "Swish", f"{_MS}.QuickGelu"], 4),
    **dict.fromkeys(["Mish"], 6),
    **dict.fromkeys(["Gelu", f"{_MS}.Gelu"], 8),
    **dict.fromkeys([f"{_MS}.FastGelu", f"{_MS}.BiasGelu", f"{_MS}.EmbedLayerNormalization"], 9),
}

_PER_INPUT: dict[str, int] = {
    **dict.fromkeys(["Softmax", "LogSoftmax", "Hardmax"], 5),
    **dict.fromkeys(["LayerNormalization", f"{_MS}.LayerNormalization", "GroupNormalization",
                     "InstanceNormalization", "MeanVarianceNormalization"], 8),
    **dict.fromkeys([f"{_MS}.SkipLayerNormalization"], 9),
    **dict.fromkeys(["RMSNormalization", f"{_MS}.SimplifiedLayerNormalization"], 5),
    **dict.fromkeys([f"{_MS}.SkipSimplifiedLayerNormalization"], 6),
    **dict.fromkeys(["BatchNormalization", "LpNormalization"], 2),
    **dict.fromkeys(["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                     "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp", "GlobalAveragePool",
                     "GlobalMaxPool", "GlobalLpPool", "CumSum"], 1),
}

_POOLS = frozenset({"MaxPool", "AveragePool", "LpPool"})
_HEAVY = re.compile(r"Conv(Transpose|Integer)?$|MatMul|Gemm|Attention|^(LSTM|GRU|RNN)$")


def counts_macs(key: str) -> bool:
    """Ops that do matrix work: an uncounted one makes the MAC total partial."""
    return key in _MAC_RULES or bool(_HEAVY.search(key.rsplit(".", 1)[-1]))


def node_cost(node: ir.Node) -> NodeCost | None:
    """The node's MACs and FLOPs, ``NodeCost(0, 0)`` for free or unknown light ops, ``None`` when a
    counted op lacks the shapes it needs (or a heavy op has no rule)."""
    key = op_key(node)
    rule = _MAC_RULES.get(key)
    if rule is not None:
        return rule(node)
    if key in _PER_OUTPUT or key in _PER_INPUT:
        dtype = node.outputs[0].dtype if node.outputs else None
        if dtype is not None and not dtype.is_floating_point():
            return NodeCost(0, 0)  # integer shape arithmetic, masks
        if key in _PER_OUTPUT:
            out = _out(node)
            return None if out is None else NodeCost(0, _PER_OUTPUT[key] * _numel(out))
        x = _in(node, 0)
        return None if x is None else NodeCost(0, _PER_INPUT[key] * _numel(x))
    if key in _POOLS:
        out = _out(node)
        kernel = node.attributes.get("kernel_shape")
        if out is None or kernel is None:
            return None
        return NodeCost(0, _numel(out) * _numel([int(k) for k in kernel.value]))
    if counts_macs(key):
        return None
    return NodeCost(0, 0)


def block_macs(nodes: Iterable[ir.Node | None]) -> int | None:
    """MACs of a set of nodes (duplicates and ``None`` ignored); ``None`` if one cannot be counted."""
    total = 0
    for node in {n for n in nodes if n is not None}:
        cost = node_cost(node)
        if cost is None:
            return None
        total += cost.macs
    return total
