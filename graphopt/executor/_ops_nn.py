"""Neural-network operators: MatMul, Gemm, Conv, ConvTranspose, pooling, normalization, Softmax, LRN."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from graphopt.executor._registry import OpContext, register

__all__: list[str] = []

Tensor = torch.Tensor

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


@register("MatMul")
def _matmul(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    return torch.matmul(xs[0], xs[1])


@register("Gemm")
def _gemm(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    a, b = xs[0], xs[1]
    if ctx.get("transA", 0):
        a = a.transpose(0, 1)
    if ctx.get("transB", 0):
        b = b.transpose(0, 1)
    out = a @ b
    alpha, beta = ctx.get("alpha", 1.0), ctx.get("beta", 1.0)
    if alpha != 1.0:
        out = out * alpha
    c = xs[2] if len(xs) > 2 else None
    if c is not None:
        out = out + (c * beta if beta != 1.0 else c)
    return out


def _pads(ctx: OpContext, spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
          dilations: Sequence[int]) -> list[int]:
    """ONNX pads ``[b1..bn, e1..en]`` with ``auto_pad`` resolved for these spatial sizes."""
    n = len(spatial)
    auto = ctx.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        return list(ctx.get("pads", [0] * (2 * n)))
    if auto == "VALID":
        return [0] * (2 * n)
    begin, end = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else large)
        end.append(large if auto == "SAME_UPPER" else small)
    return begin + end


def _torch_pad(pads: Sequence[int]) -> list[int]:
    """ONNX spatial pads ``[b1..bn, e1..en]`` in F.pad order (last dim first)."""
    n = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


def _geometry(ctx: OpContext, x: Tensor, kernel: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
    n = x.dim() - 2
    strides = list(ctx.get("strides", [1] * n))
    dilations = list(ctx.get("dilations", [1] * n))
    return strides, dilations, _pads(ctx, x.shape[2:], kernel, strides, dilations)


@register("Conv")
def _conv(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    x, w = xs[0], xs[1]
    bias = xs[2] if len(xs) > 2 else None
    n = x.dim() - 2
    if n not in _CONV:
        raise ctx.fail(f"{n}-d convolution")
    strides, dilations, pads = _geometry(ctx, x, w.shape[2:])
    if pads[:n] == pads[n:]:
        padding: Any = pads[:n]
    else:
        x, padding = F.pad(x, _torch_pad(pads)), 0
    return _CONV[n](x, w, bias, strides, padding, dilations, ctx.get("group", 1))


@register("ConvTranspose")
def _conv_transpose(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    x, w = xs[0], xs[1]
    bias = xs[2] if len(xs) > 2 else None
    n = x.dim() - 2
    if n not in _CONV_T or ctx.get("output_shape") or ctx.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID", ""):
        raise ctx.fail("only explicit pads (no output_shape or SAME auto_pad) are supported")
    strides = list(ctx.get("strides", [1] * n))
    dilations = list(ctx.get("dilations", [1] * n))
    pads = list(ctx.get("pads", [0] * (2 * n))) if ctx.get("auto_pad", "NOTSET") != "VALID" else [0] * (2 * n)
    extra = list(ctx.get("output_padding", [0] * n))
    out = _CONV_T[n](x, w, None, strides, 0, extra, ctx.get("group", 1), dilations)
    index = [slice(None), slice(None)] + [slice(pads[i], out.shape[2 + i] - pads[i + n]) for i in range(n)]
    out = out[tuple(index)]
    if bias is not None:
        out = out + bias.reshape(1, -1, *([1] * n))
    return out


def _symmetric(pads: Sequence[int], kernel: Sequence[int]) -> bool:
    n = len(kernel)
    return pads[:n] == pads[n:] and all(p <= k // 2 for p, k in zip(pads[:n], kernel))


@register("MaxPool")
def _max_pool(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    x = xs[0]
    kernel = list(ctx.get("kernel_shape"))
    n = len(kernel)
    if ctx.num_outputs > 1:
        raise ctx.fail("the Indices output is not supported")
    strides, dilations, pads = _geometry(ctx, x, kernel)
    ceil = bool(ctx.get("ceil_mode", 0))
    if _symmetric(pads, kernel):
        return _MAX_POOL[n](x, kernel, strides, pads[:n], dilations, ceil_mode=ceil)
    x = F.pad(x, _torch_pad(pads), value=-math.inf)
    return _MAX_POOL[n](x, kernel, strides, 0, dilations, ceil_mode=ceil)


@register("AveragePool")
def _avg_pool(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    x = xs[0]
    kernel = list(ctx.get("kernel_shape"))
    n = len(kernel)
    strides, dilations, pads = _geometry(ctx, x, kernel)
    if any(d != 1 for d in dilations):
        raise ctx.fail("dilated average pooling")
    ceil = bool(ctx.get("ceil_mode", 0))
    include = bool(ctx.get("count_include_pad", 0))
    if _symmetric(pads, kernel):
        return _AVG_POOL[n](x, kernel, strides, pads[:n], ceil, include)
    padded = F.pad(x, _torch_pad(pads))
    out = _AVG_POOL[n](padded, kernel, strides, 0, ceil, True)
    if include:
        return out
    ones = F.pad(torch.ones_like(x[:1, :1]), _torch_pad(pads))
    return out / _AVG_POOL[n](ones, kernel, strides, 0, ceil, True)


@register("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    x = xs[0]
    dims = tuple(range(2, x.dim()))
    return x.mean(dim=dims, keepdim=True) if ctx.op_type == "GlobalAveragePool" else x.amax(dim=dims, keepdim=True)


@register("LRN")
def _lrn(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    size = ctx.get("size")
    if size % 2 == 0:
        raise ctx.fail("an even LRN size")
    return F.local_response_norm(xs[0], size, ctx.get("alpha", 1e-4), ctx.get("beta", 0.75), ctx.get("bias", 1.0))


@register("BatchNormalization")
def _batch_norm(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    if ctx.get("training_mode", 0) or ctx.num_outputs > 1:
        raise ctx.fail("training mode (only inference BatchNormalization is supported)")
    x, scale, bias, mean, var = xs[:5]
    eps = ctx.get("epsilon", 1e-5)
    if not (mean.requires_grad or var.requires_grad):  # torch's kernel does not differentiate the statistics
        return F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    inv = torch.rsqrt(var + eps) * scale
    return x * inv.reshape(shape) + (bias - mean * inv).reshape(shape)


@register("InstanceNormalization")
def _instance_norm(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    return F.instance_norm(xs[0], weight=xs[1], bias=xs[2], eps=ctx.get("epsilon", 1e-5))


@register("LayerNormalization")
def _layer_norm(ctx: OpContext, xs: Sequence[Any]) -> Any:
    x, scale = xs[0], xs[1]
    bias = xs[2] if len(xs) > 2 else None
    axis = ctx.get("axis", -1) % x.dim()
    eps = ctx.get("epsilon", 1e-5)
    shape = tuple(x.shape[axis:])
    if ctx.num_outputs == 1:
        scale = scale.expand(shape)
        bias = bias.expand(shape) if bias is not None else None
        return F.layer_norm(x, shape, scale, bias, eps)
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    inv_std = torch.rsqrt((x - mean).pow(2).mean(dim=dims, keepdim=True) + eps)
    out = (x - mean) * inv_std * scale
    if bias is not None:
        out = out + bias
    return (out, mean, inv_std)[: ctx.num_outputs]


def _coerced(ctx: OpContext, x: Tensor, fn: Any) -> Tensor:
    """Softmax-like ops: before opset 13 the input is seen as 2-d ``[prod(:axis), prod(axis:)]``."""
    if ctx.opset >= 13:
        return fn(x, dim=ctx.get("axis", -1))
    axis = ctx.get("axis", 1) % max(x.dim(), 1)
    flat = x.reshape(math.prod(x.shape[:axis]), -1)
    return fn(flat, dim=1).reshape(x.shape)


@register("Softmax")
def _softmax(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    return _coerced(ctx, xs[0], torch.softmax)


@register("LogSoftmax")
def _log_softmax(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    return _coerced(ctx, xs[0], torch.log_softmax)
