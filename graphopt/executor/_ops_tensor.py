"""Shape and data-movement operators: Reshape, Transpose, Slice, Gather, Concat, Cast, Shape, ..."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from graphopt.executor._registry import OpContext, register, to_torch_dtype

__all__: list[str] = []

Tensor = torch.Tensor


def _ints(t: Tensor | None) -> list[int]:
    return [] if t is None else [int(v) for v in t.reshape(-1).tolist()]


@register("Constant")
def _constant(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    for key in ("value", "value_float", "value_int", "value_floats", "value_ints"):
        if key in ctx.attrs:
            value = ctx.attrs[key]
            if isinstance(value, torch.Tensor):
                return value
            dtype = torch.float32 if "float" in key else torch.int64
            return torch.tensor(value, dtype=dtype)
    raise ctx.fail("only tensor, float and int values are supported")


@register("Dropout")
def _dropout(ctx: OpContext, xs: Sequence[Any]) -> Any:
    # Inference semantics (training_mode is ignored: the executor never samples a mask).
    x = xs[0]
    if ctx.num_outputs > 1:
        return x, torch.ones_like(x, dtype=torch.bool)
    return x


@register("Cast")
def _cast(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    return xs[0].to(to_torch_dtype(ctx.get("to")))


@register("CastLike")
def _cast_like(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    return xs[0].to(xs[1].dtype)


@register("Shape")
def _shape(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    dims = list(xs[0].shape)
    start, end = ctx.get("start", 0), ctx.get("end", None)
    return torch.tensor(dims[start:end], dtype=torch.int64)


@register("Size")
def _size(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    return torch.tensor(xs[0].numel(), dtype=torch.int64)


@register("Reshape")
def _reshape(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    x = xs[0]
    shape = _ints(xs[1]) if ctx.opset >= 5 else list(ctx.get("shape", []))
    if not ctx.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


@register("Flatten")
def _flatten(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    x = xs[0]
    axis = ctx.get("axis", 1) % (x.dim() + 1) if x.dim() else 0
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@register("Transpose")
def _transpose(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    x = xs[0]
    perm = ctx.get("perm") or list(range(x.dim()))[::-1]
    return x.permute(*perm)


@register("Squeeze")
def _squeeze(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    x = xs[0]
    axes = _ints(xs[1] if len(xs) > 1 else None) if ctx.opset >= 13 else list(ctx.get("axes", []))
    if not axes:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    axes = sorted({a % x.dim() for a in axes})
    return x.reshape([d for i, d in enumerate(x.shape) if i not in axes])


@register("Unsqueeze")
def _unsqueeze(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    x = xs[0]
    axes = _ints(xs[1]) if ctx.opset >= 13 else list(ctx.get("axes", []))
    rank = x.dim() + len(axes)
    shape = list(x.shape)
    for a in sorted(a % rank for a in axes):
        shape.insert(a, 1)
    return x.reshape(shape)


@register("Concat")
def _concat(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    return torch.cat([x for x in xs if x is not None], dim=ctx.get("axis"))


@register("Split")
def _split(ctx: OpContext, xs: Sequence[Any]) -> tuple[Tensor, ...]:
    x = xs[0]
    axis = ctx.get("axis", 0)
    sizes = _ints(xs[1] if len(xs) > 1 else None) if ctx.opset >= 13 else list(ctx.get("split", []))
    if not sizes:
        count = ctx.get("num_outputs", ctx.num_outputs)
        length = x.shape[axis]
        chunk = -(-length // count)
        sizes = [min(chunk, length - i * chunk) for i in range(count)]
    return tuple(torch.split(x, sizes, dim=axis))


@register("Slice")
def _slice(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    x = xs[0]
    if ctx.opset < 10:
        starts, ends = list(ctx.get("starts")), list(ctx.get("ends"))
        axes = list(ctx.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(xs[1]), _ints(xs[2])
        axes = _ints(xs[3]) if len(xs) > 3 and xs[3] is not None else list(range(len(starts)))
        steps = _ints(xs[4]) if len(xs) > 4 and xs[4] is not None else [1] * len(starts)
    index: list[Any] = [slice(None)] * x.dim()
    flips = []
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= x.dim()
        size = x.shape[axis]
        if step > 0:
            s = min(max(start + size if start < 0 else start, 0), size)
            e = min(max(end + size if end < 0 else end, 0), size)
            index[axis] = slice(s, max(e, s), step)
        else:  # torch slices forward only: take the range, then flip it
            s = min(max(start + size if start < 0 else start, 0), size - 1)
            e = min(max(end + size if end < 0 else end, -1), size - 1)
            count = max(0, -(-(s - e) // -step))
            first = s - (count - 1) * -step if count else 0
            index[axis] = slice(first, first + (count - 1) * -step + 1 if count else 0, -step)
            flips.append(axis)
    out = x[tuple(index)]
    return torch.flip(out, dims=flips) if flips else out


def _positive(idx: Tensor, size: int) -> Tensor:
    return torch.where(idx < 0, idx + size, idx)


@register("Gather")
def _gather(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    x, idx = xs
    axis = ctx.get("axis", 0) % x.dim()
    idx = _positive(idx.long(), x.shape[axis])
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :]))


@register("GatherElements")
def _gather_elements(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    x, idx = xs
    axis = ctx.get("axis", 0) % x.dim()
    return torch.gather(x, axis, _positive(idx.long(), x.shape[axis]))


@register("GatherND")
def _gather_nd(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    data, idx = xs
    batch = ctx.get("batch_dims", 0)
    idx = idx.long()
    depth = idx.shape[-1]
    batch_shape = data.shape[:batch]
    flat_batch = math.prod(batch_shape)
    data_b = data.reshape((flat_batch, *data.shape[batch:]))
    idx_b = idx.reshape(flat_batch, -1, depth)
    keys: list[Tensor] = [torch.arange(flat_batch).unsqueeze(1).expand(flat_batch, idx_b.shape[1])]
    for k in range(depth):
        keys.append(_positive(idx_b[..., k], data.shape[batch + k]))
    out = data_b[tuple(keys)]
    return out.reshape((*idx.shape[:-1], *data.shape[batch + depth :]))


@register("Expand")
def _expand(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    x = xs[0]
    shape = torch.broadcast_shapes(tuple(x.shape), tuple(_ints(xs[1])))
    return x.expand(shape)


@register("Tile")
def _tile(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    return xs[0].repeat(*_ints(xs[1]))


@register("ConstantOfShape")
def _constant_of_shape(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    value = ctx.get("value")
    shape = _ints(xs[0])
    if value is None:
        return torch.zeros(shape, dtype=torch.float32)
    return torch.full(shape, value.reshape(-1)[0].item(), dtype=value.dtype)


@register("Range")
def _range(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    start, limit, delta = xs
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


@register("Trilu")
def _trilu(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    k = int(xs[1].item()) if len(xs) > 1 and xs[1] is not None else 0
    return torch.triu(xs[0], k) if ctx.get("upper", 1) else torch.tril(xs[0], k)


@register("Pad")
def _pad(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    x = xs[0]
    if ctx.opset < 11:
        pads, value = list(ctx.get("pads")), ctx.get("value", 0.0)
        axes = list(range(x.dim()))
    else:
        pads = _ints(xs[1])
        value = xs[2].item() if len(xs) > 2 and xs[2] is not None and xs[2].numel() else 0
        axes = _ints(xs[3]) if len(xs) > 3 and xs[3] is not None else list(range(x.dim()))
    half = len(pads) // 2
    full = [0] * (2 * x.dim())
    for i, axis in enumerate(axes):
        axis %= x.dim()
        full[axis], full[axis + x.dim()] = pads[i], pads[i + half]
    torch_pads: list[int] = []
    for axis in reversed(range(x.dim())):  # torch wants (last_begin, last_end, ..., first_begin, first_end)
        torch_pads += [full[axis], full[axis + x.dim()]]
    mode = ctx.get("mode", "constant")
    if mode == "constant":
        return F.pad(x, torch_pads, value=value)
    if mode not in ("reflect", "edge", "wrap"):
        raise ctx.fail(f"pad mode {mode!r}")
    for axis in range(x.dim()):
        begin, end = full[axis], full[axis + x.dim()]
        if begin or end:
            x = x.index_select(axis, _pad_index(mode, x.shape[axis], begin, end))
    return x


def _pad_index(mode: str, size: int, begin: int, end: int) -> Tensor:
    """Source positions of each padded position along one axis (reflect, edge or wrap)."""
    p = torch.arange(-begin, size + end)
    if mode == "edge" or size == 1:
        return p.clamp(0, size - 1)
    if mode == "wrap":
        return p.remainder(size)
    q = p.remainder(2 * size - 2)
    return torch.where(q < size, q, 2 * size - 2 - q)


@register("Einsum")
def _einsum(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    return torch.einsum(ctx.get("equation"), *xs)


@register("DequantizeLinear")
def _dequantize(ctx: OpContext, xs: Sequence[Any]) -> Tensor:
    x, scale = xs[0], xs[1]
    zero = xs[2] if len(xs) > 2 else None
    axis = ctx.get("axis", 1) % max(x.dim(), 1)
    block = ctx.get("block_size", 0)
    values = x.to(scale.dtype)
    if zero is not None:
        zero = zero.to(scale.dtype)
    if scale.dim() and scale.numel() > 1:
        if block:
            scale = scale.repeat_interleave(block, dim=axis).narrow(axis, 0, x.shape[axis])
            if zero is not None:
                zero = zero.repeat_interleave(block, dim=axis).narrow(axis, 0, x.shape[axis])
        else:
            shape = [1] * x.dim()
            shape[axis] = -1
            scale = scale.reshape(shape)
            zero = zero.reshape(shape) if zero is not None else None
    if zero is not None:
        values = values - zero
    return values * scale
