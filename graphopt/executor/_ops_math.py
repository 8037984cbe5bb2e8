"""Elementwise math, activations, comparisons, logic and reductions."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from graphopt.executor._registry import OpContext, register

__all__: list[str] = []

Tensor = torch.Tensor

_UNARY: dict[str, Callable[[Any], Any]] = {
    "Abs": torch.abs, "Neg": torch.neg, "Sqrt": torch.sqrt, "Exp": torch.exp, "Log": torch.log,
    "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil, "Round": torch.round,
    "Sign": torch.sign, "Sin": torch.sin, "Cos": torch.cos, "Tan": torch.tan, "Asin": torch.asin,
    "Acos": torch.acos, "Atan": torch.atan, "Sinh": torch.sinh, "Cosh": torch.cosh, "Erf": torch.erf,
    "Tanh": torch.tanh, "Sigmoid": torch.sigmoid, "Relu": torch.relu, "Softsign": F.softsign,
    "Mish": F.mish, "IsNaN": torch.isnan, "Not": torch.logical_not, "Identity": lambda x: x,
}
_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Equal": torch.eq, "Less": torch.lt,
    "LessOrEqual": torch.le, "Greater": torch.gt, "GreaterOrEqual": torch.ge, "And": torch.logical_and,
    "Or": torch.logical_or, "Xor": torch.logical_xor, "BitwiseAnd": torch.bitwise_and,
    "BitwiseOr": torch.bitwise_or, "BitwiseXor": torch.bitwise_xor,
}


def _unary(name: str) -> None:
    fn = _UNARY[name]
    register(name)(lambda ctx, xs: fn(xs[0]))


def _binary(name: str) -> None:
    fn = _BINARY[name]
    register(name)(lambda ctx, xs: fn(xs[0], xs[1]))


for _name in _UNARY:
    _unary(_name)
for _name in _BINARY:
    _binary(_name)


@register("Div")
def _div(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    a, b = xs
    if a.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


@register("Mod")
def _mod(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    return torch.fmod(xs[0], xs[1]) if ctx.get("fmod", 0) else torch.remainder(xs[0], xs[1])


@register("Pow")
def _pow(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    out = torch.pow(xs[0], xs[1])
    return out if out.dtype == xs[0].dtype else out.to(xs[0].dtype)


@register("Max", "Min", "Sum", "Mean")
def _variadic(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    fns: dict[str, Callable[[Any, Any], Any]] = {
        "Max": torch.maximum, "Min": torch.minimum, "Sum": torch.add, "Mean": torch.add,
    }
    fn = fns[ctx.op_type]
    out = xs[0]
    for x in xs[1:]:
        out = fn(out, x)
    return out / len(xs) if ctx.op_type == "Mean" else out


@register("IsInf")
def _isinf(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    x = xs[0]
    pos, neg = ctx.get("detect_positive", 1), ctx.get("detect_negative", 1)
    return (torch.isposinf(x) & bool(pos)) | (torch.isneginf(x) & bool(neg))


@register("Where")
def _where(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    return torch.where(xs[0], xs[1], xs[2])


@register("Clip")
def _clip(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    x = xs[0]
    if ctx.opset < 11:
        return torch.clamp(x, ctx.get("min", -math.inf), ctx.get("max", math.inf))
    low = xs[1] if len(xs) > 1 else None
    high = xs[2] if len(xs) > 2 else None
    # Tensor bounds keep gradients flowing into trainable clipping parameters.
    if low is not None:
        x = torch.maximum(x, low.to(x.dtype))
    if high is not None:
        x = torch.minimum(x, high.to(x.dtype))
    return x


@register("LeakyRelu")
def _leaky_relu(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    return F.leaky_relu(xs[0], ctx.get("alpha", 0.01))


@register("Elu")
def _elu(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    return F.elu(xs[0], ctx.get("alpha", 1.0))


@register("Celu")
def _celu(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    return F.celu(xs[0], ctx.get("alpha", 1.0))


@register("Selu")
def _selu(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    alpha, gamma = ctx.get("alpha", 1.67326319217681884765625), ctx.get("gamma", 1.05070102214813232421875)
    x = xs[0]
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


@register("HardSigmoid")
def _hard_sigmoid(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    return torch.clamp(ctx.get("alpha", 0.2) * xs[0] + ctx.get("beta", 0.5), 0.0, 1.0)


@register("HardSwish")
def _hard_swish(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    return F.hardswish(xs[0])


@register("Softplus")
def _softplus(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    return F.softplus(xs[0])


@register("PRelu")
def _prelu(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    x, slope = xs
    return torch.where(x >= 0, x, x * slope)


@register("Gelu")
def _gelu(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    return F.gelu(xs[0], approximate=ctx.get("approximate", "none"))


# ---- reductions -------------------------------------------------------------------------------

_REDUCE: dict[str, Callable[[Tensor, tuple[int, ...], bool], Tensor]] = {
    "ReduceSum": lambda x, d, k: torch.sum(x, dim=d, keepdim=k),
    "ReduceMean": lambda x, d, k: torch.mean(x, dim=d, keepdim=k),
    "ReduceMax": lambda x, d, k: torch.amax(x, dim=d, keepdim=k),
    "ReduceMin": lambda x, d, k: torch.amin(x, dim=d, keepdim=k),
    "ReduceProd": lambda x, d, k: _prod(x, d, k),
    "ReduceL1": lambda x, d, k: torch.sum(torch.abs(x), dim=d, keepdim=k),
    "ReduceL2": lambda x, d, k: torch.sqrt(torch.sum(x * x, dim=d, keepdim=k)),
    "ReduceSumSquare": lambda x, d, k: torch.sum(x * x, dim=d, keepdim=k),
    "ReduceLogSum": lambda x, d, k: torch.log(torch.sum(x, dim=d, keepdim=k)),
    "ReduceLogSumExp": lambda x, d, k: torch.logsumexp(x, dim=d, keepdim=k),
}
# Opset from which ``axes`` is an input rather than an attribute.
_AXES_INPUT_SINCE = {"ReduceSum": 13}


def _prod(x: Tensor, dims: tuple[int, ...], keep: bool) -> Tensor:
    for d in sorted((d % x.dim() for d in dims), reverse=True):
        x = torch.prod(x, dim=d, keepdim=keep)
    return x


@register(*_REDUCE)
def _reduce(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    x = xs[0]
    keep = bool(ctx.get("keepdims", 1))
    if ctx.opset >= _AXES_INPUT_SINCE.get(ctx.op_type, 18):
        axes_tensor = xs[1] if len(xs) > 1 else None
        axes = [] if axes_tensor is None else [int(a) for a in axes_tensor.tolist()]
    else:
        axes = list(ctx.get("axes", []))
    if not axes:
        if ctx.get("noop_with_empty_axes", 0):
            return x
        axes = list(range(x.dim()))
    if x.dim() == 0:
        return x
    return _REDUCE[ctx.op_type](x, tuple(axes), keep)


@register("ArgMax", "ArgMin")
def _arg(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    x = xs[0]
    axis = ctx.get("axis", 0) % max(x.dim(), 1)
    keep = bool(ctx.get("keepdims", 1))
    fn = torch.argmax if ctx.op_type == "ArgMax" else torch.argmin
    if ctx.get("select_last_index", 0):
        flipped = torch.flip(x, dims=(axis,))
        return x.shape[axis] - 1 - fn(flipped, dim=axis, keepdim=keep)
    return fn(x, dim=axis, keepdim=keep)


@register("CumSum")
def _cumsum(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    x, axis = xs[0], int(xs[1].reshape(-1)[0])
    if ctx.get("reverse", 0):
        x = torch.flip(x, dims=(axis,))
    out = torch.cumsum(x, dim=axis)
    if ctx.get("exclusive", 0):
        out = out - x
    if ctx.get("reverse", 0):
        out = torch.flip(out, dims=(axis,))
    return out.to(xs[0].dtype)
