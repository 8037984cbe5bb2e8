"""onnxruntime's fused ``com.microsoft`` operators found in optimized transformer graphs.

``Attention``, ``MultiHeadAttention`` (without past state), ``SkipLayerNormalization``,
``SkipSimplifiedLayerNormalization``, ``SimplifiedLayerNormalization``, ``BiasGelu``, ``FastGelu``,
``Gelu``, ``QuickGelu``, ``FusedMatMul``; semantics follow onnxruntime's contrib-op documentation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from graphopt.executor._registry import OpContext, register

__all__: list[str] = []

Tensor = torch.Tensor
MS = "com.microsoft"


def _opt(xs: Sequence[Any], i: int) -> Any:
    return xs[i] if len(xs) > i else None


def _skip_outputs(ctx: OpContext, out: Tensor, mean: Tensor | None, inv_std: Tensor, total: Tensor) -> Any:
    if ctx.num_outputs == 1:
        return out
    return (out, mean if mean is not None else torch.zeros_like(inv_std), inv_std, total)[: ctx.num_outputs]


@register("SkipLayerNormalization", domain=MS)
def _skip_layer_norm(ctx: OpContext, xs: Sequence[Any]) -> Any:
    x, skip, gamma, beta, bias = xs[0], xs[1], xs[2], _opt(xs, 3), _opt(xs, 4)
    total = x + skip if bias is None else x + skip + bias
    eps = ctx.get("epsilon", 1e-12)
    if ctx.num_outputs == 1:
        return F.layer_norm(total, (total.shape[-1],), gamma, beta, eps)
    mean = total.mean(dim=-1, keepdim=True)
    inv_std = torch.rsqrt((total - mean).pow(2).mean(dim=-1, keepdim=True) + eps)
    out = (total - mean) * inv_std * gamma
    return _skip_outputs(ctx, out if beta is None else out + beta, mean, inv_std, total)


def _rms(x: Tensor, gamma: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    inv = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)
    return x * inv * gamma, inv


@register("SkipSimplifiedLayerNormalization", domain=MS)
def _skip_rms_norm(ctx: OpContext, xs: Sequence[Any]) -> Any:
    x, skip, gamma, bias = xs[0], xs[1], xs[2], _opt(xs, 3)
    total = x + skip if bias is None else x + skip + bias
    out, inv = _rms(total, gamma, ctx.get("epsilon", 1e-12))
    return _skip_outputs(ctx, out, None, inv, total)


@register("SimplifiedLayerNormalization")
@register("SimplifiedLayerNormalization", domain=MS)
def _rms_norm(ctx: OpContext, xs: Sequence[Any]) -> Any:
    if ctx.get("axis", -1) != -1:
        raise ctx.fail("only axis -1 is supported")
    out, inv = _rms(xs[0], xs[1], ctx.get("epsilon", 1e-5))
    return out if ctx.num_outputs == 1 else (out, inv)[: ctx.num_outputs]


@register("BiasGelu", domain=MS)
def _bias_gelu(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    return F.gelu(xs[0] + xs[1])


@register("Gelu", domain=MS)
def _gelu(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    return F.gelu(xs[0])


@register("FastGelu", domain=MS)
def _fast_gelu(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    x = xs[0] if _opt(xs, 1) is None else xs[0] + xs[1]
    return F.gelu(x, approximate="tanh")


@register("QuickGelu", domain=MS)
def _quick_gelu(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    return xs[0] * torch.sigmoid(ctx.get("alpha", 1.702) * xs[0])


@register("FusedMatMul", domain=MS)
def _fused_matmul(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    if ctx.get("transBatchA", 0) or ctx.get("transBatchB", 0):
        raise ctx.fail("transBatchA/transBatchB")
    a, b = xs
    if ctx.get("transA", 0):
        a = a.transpose(-1, -2)
    if ctx.get("transB", 0):
        b = b.transpose(-1, -2)
    return torch.matmul(a, b) * ctx.get("alpha", 1.0)


def _heads(x: Tensor, n: int) -> Tensor:
    """``[B, S, N*H] -> [B, N, S, H]``."""
    b, s, _ = x.shape
    return x.reshape(b, s, n, -1).transpose(1, 2)


def _padding_bias(ctx: OpContext, mask: Tensor | None, batch: int, q_len: int, kv_len: int, dtype: torch.dtype) -> Any:
    """An additive ``[B, 1, S or 1, L]`` bias from an onnxruntime mask (0/1 raw mask or lengths)."""
    if mask is None:
        return None
    fill = ctx.get("mask_filter_value", -10000.0)
    if mask.dim() == 1 and mask.shape[0] == batch:  # valid lengths, right padding
        keep = torch.arange(kv_len).unsqueeze(0) < mask.unsqueeze(1)
        return ((~keep).to(dtype) * fill).reshape(batch, 1, 1, kv_len)
    if mask.dim() == 2:
        return ((1 - mask.to(dtype)) * fill).reshape(batch, 1, 1, kv_len)
    if mask.dim() == 3:
        return ((1 - mask.to(dtype)) * fill).reshape(batch, 1, q_len, kv_len)
    raise ctx.fail(f"mask of shape {tuple(mask.shape)}")


def _attend(ctx: OpContext, q: Tensor, k: Tensor, v: Tensor, bias: Any, head_size: int) -> Tensor:
    if ctx.get("unidirectional", 0):
        causal = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).tril(k.shape[2] - q.shape[2])
        mask = torch.zeros(causal.shape, dtype=q.dtype).masked_fill(~causal, torch.finfo(q.dtype).min)
        bias = mask if bias is None else bias + mask
    scale = ctx.get("scale", 0.0) or 1.0 / math.sqrt(head_size)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    b, n, s, h = out.shape
    return out.transpose(1, 2).reshape(b, s, n * h)


@register("Attention", domain=MS)
def _attention(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    x, weights, qkv_bias, mask = xs[0], xs[1], _opt(xs, 2), _opt(xs, 3)
    stateful = _opt(xs, 4) is not None or ctx.num_outputs > 1 or ctx.get("past_present_share_buffer", 0)
    if stateful or ctx.get("do_rotary", 0):
        raise ctx.fail("past/present state and rotary embeddings are not supported")
    n = ctx.get("num_heads")
    sizes = list(ctx.get("qkv_hidden_sizes") or [weights.shape[1] // 3] * 3)
    qkv = torch.matmul(x, weights)
    if qkv_bias is not None:
        qkv = qkv + qkv_bias
    q, k, v = (_heads(t, n) for t in torch.split(qkv, sizes, dim=-1))
    batch, length = x.shape[0], x.shape[1]
    bias = _padding_bias(ctx, mask, batch, length, length, x.dtype)
    extra = _opt(xs, 5)
    if extra is not None:
        bias = extra if bias is None else bias + extra
    return _attend(ctx, q, k, v, bias, sizes[0] // n)


@register("MultiHeadAttention", domain=MS)
def _multi_head_attention(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    q, k, v = xs[0], _opt(xs, 1), _opt(xs, 2)
    if k is None or v is None or q.dim() != 3 or k.dim() != 3 or ctx.num_outputs > 1:
        raise ctx.fail("only separate 3-d query/key/value without past state are supported")
    if _opt(xs, 6) is not None or _opt(xs, 7) is not None:
        raise ctx.fail("past key/value are not supported")
    bias = _opt(xs, 3)
    if bias is not None:
        dq, dk = q.shape[-1], k.shape[-1]
        q, k, v = q + bias[:dq], k + bias[dq : dq + dk], v + bias[dq + dk :]
    n = ctx.get("num_heads")
    add = _padding_bias(ctx, _opt(xs, 4), q.shape[0], q.shape[1], k.shape[1], q.dtype)
    extra = _opt(xs, 5)
    if extra is not None:
        add = extra if add is None else add + extra
    return _attend(ctx, _heads(q, n), _heads(k, n), _heads(v, n), add, q.shape[-1] // n)


@register("MatMulNBits", domain=MS)
def _matmul_nbits(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    """``A · dequant(B)ᵀ (+ bias)`` with ``dequant(B)[n, k] = (code - zero) * scale`` per block of K."""
    a, packed, scales, zero = xs[0], xs[1], xs[2], _opt(xs, 3)
    bits, block, k, n = ctx.get("bits", 4), ctx.get("block_size"), ctx.get("K"), ctx.get("N")
    if bits not in (4, 8) or _opt(xs, 4) is not None:
        raise ctx.fail("only 4- and 8-bit weights without g_idx are supported")
    blocks = -(-k // block)
    codes = _unpack(packed, bits).reshape(n, blocks, block).to(scales.dtype)
    if zero is None:
        zp = torch.full((n, blocks), float(2 ** (bits - 1)), dtype=scales.dtype)
    elif zero.is_floating_point():
        zp = zero.reshape(n, blocks)
    else:
        zp = _unpack(zero.reshape(n, -1), bits)[:, :blocks].to(scales.dtype)
    weight = ((codes - zp.unsqueeze(-1)) * scales.reshape(n, blocks, 1)).reshape(n, blocks * block)[:, :k]
    out = torch.matmul(a, weight.transpose(0, 1))
    bias = _opt(xs, 5)
    return out if bias is None else out + bias


def _unpack(packed: Tensor, bits: int) -> Tensor:
    """4-bit codes two per byte (the first in the low nibble) along the last axis; 8-bit as they are."""
    if bits == 8:
        return packed
    return torch.stack((packed & 0x0F, packed >> 4), dim=-1).reshape(*packed.shape[:-1], -1)
