"""Model inputs: signatures, feeds loaded from ``.npz`` (samples on axis 0), synthesised feeds."""

from __future__ import annotations

import dataclasses
import os
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError, UsageError

__all__ = [
    "Feeds",
    "InputSpec",
    "input_specs",
    "iter_batches",
    "load_feeds",
    "parse_shape_overrides",
    "save_feeds",
    "synthesize_feeds",
    "validate_feeds",
]

Feeds = dict[str, np.ndarray]
Dim = int | str | None


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One graph input: name, numpy dtype, shape (ints for static dims, names or None for dynamic),
    and for integer inputs an exclusive upper bound found from the graph (e.g. a vocabulary size)."""

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...] | None
    int_high: int | None = None


def input_specs(model: ir.Model) -> list[InputSpec]:
    """The model's real inputs (initializers listed as inputs are skipped)."""
    specs = []
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        if value.dtype is None:
            raise InputError(f"input {value.name!r} has no element type")
        dtype = value.dtype.numpy()
        shape = None
        if value.shape is not None:
            shape = tuple(d if isinstance(d, int) else (d.value if d.value else None) for d in value.shape)
        high = _integer_bound(value) if np.issubdtype(dtype, np.integer) else None
        specs.append(InputSpec(value.name or "", np.dtype(dtype), shape, high))
    return specs


def _integer_bound(value: ir.Value) -> int | None:
    """The smallest table size among Gather/embedding consumers indexing with this value."""
    bounds = []
    for node, index in value.uses():
        if node.op_type == "Gather" and index == 1 and node.inputs[0] is not None:
            data = node.inputs[0]
            if data.shape is not None and data.shape.rank() > 0 and isinstance(data.shape[0], int):
                bounds.append(data.shape[0])
    return min(bounds) if bounds else None


def parse_shape_overrides(items: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Parse ``name=2,128`` (or ``name=2x128``) items from the command line."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, sep, dims = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--shape {item!r}: expected NAME=D1,D2,...")
        try:
            shapes[name] = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
        except ValueError:
            raise UsageError(f"--shape {item!r}: dimensions must be integers") from None
        if any(d <= 0 for d in shapes[name]):
            raise UsageError(f"--shape {item!r}: dimensions must be positive")
    return shapes


def synthesize_feeds(
    specs: Sequence[InputSpec],
    *,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    batch: int = 2,
    sequence: int = 16,
    seed: int = 0,
) -> Feeds:
    """Random feeds from the signature: floats ~ N(0, 1); integer ids within the graph's table size
    (masks all ones, token types zeros); dynamic dims become ``batch`` (first) or ``sequence``."""
    shapes = dict(shapes or {})
    unknown = set(shapes) - {s.name for s in specs}
    if unknown:
        raise UsageError(f"--shape names unknown inputs: {', '.join(sorted(unknown))}")
    rng = np.random.default_rng(seed)
    feeds: Feeds = {}
    for spec in specs:
        shape = shapes.get(spec.name) or _concrete_shape(spec, batch, sequence)
        if spec.shape is not None and len(shape) != len(spec.shape):
            raise UsageError(f"--shape {spec.name}: rank {len(shape)} but the input has rank {len(spec.shape)}")
        feeds[spec.name] = _random_array(spec, shape, rng)
    return feeds


def _concrete_shape(spec: InputSpec, batch: int, sequence: int) -> tuple[int, ...]:
    if spec.shape is None:
        raise UsageError(f"input {spec.name!r} has unknown rank; give --shape {spec.name}=D1,D2,...")
    dims = []
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int) and dim > 0:
            dims.append(dim)
        else:
            dims.append(batch if axis == 0 else sequence)
    return tuple(dims)


def _random_array(spec: InputSpec, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    lower = spec.name.lower()
    if spec.dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(spec.dtype, np.integer):
        if "mask" in lower:
            return np.ones(shape, dtype=spec.dtype)
        if "type" in lower or "segment" in lower:
            return np.zeros(shape, dtype=spec.dtype)
        if "position" in lower and shape:
            return np.broadcast_to(np.arange(shape[-1]), shape).astype(spec.dtype)
        high = spec.int_high if spec.int_high is not None else 2
        return rng.integers(0, high, size=shape).astype(spec.dtype)
    if np.issubdtype(spec.dtype, np.floating) or spec.dtype.kind == "V":
        return rng.standard_normal(shape).astype(spec.dtype)
    raise UsageError(f"cannot synthesise input {spec.name!r} of type {spec.dtype}; pass --inputs FEED.npz")


def load_feeds(path: str | os.PathLike[str], specs: Sequence[InputSpec] | None = None) -> Feeds:
    """Load an ``.npz`` of feeds; with ``specs``, check names, ranks, static dims and dtypes."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    try:
        with np.load(p, allow_pickle=False) as data:
            feeds = {name: np.asarray(data[name]) for name in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{p}: not a readable .npz file ({str(exc).splitlines()[0] if str(exc) else exc})") from exc
    if not feeds:
        raise InputError(f"{p}: the .npz holds no arrays")
    return validate_feeds(feeds, specs, source=str(p)) if specs is not None else feeds


def validate_feeds(feeds: Mapping[str, np.ndarray], specs: Sequence[InputSpec], *, source: str = "feeds") -> Feeds:
    """Check feeds against the signature and cast them to the input dtypes."""
    expected = {s.name: s for s in specs}
    missing = sorted(set(expected) - set(feeds))
    extra = sorted(set(feeds) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if extra:
            parts.append(f"unknown {', '.join(extra)}")
        raise InputError(
            f"{source}: feed names do not match the model inputs ({'; '.join(parts)}); expected {', '.join(expected)}"
        )
    out: Feeds = {}
    for name, spec in expected.items():
        array = np.asarray(feeds[name])
        if spec.shape is not None:
            if array.ndim != len(spec.shape):
                raise InputError(
                    f"{source}: {name!r} has shape {array.shape} but the model expects rank {len(spec.shape)} "
                    f"{_format_shape(spec.shape)}"
                )
            for axis, dim in enumerate(spec.shape):
                if isinstance(dim, int) and dim > 0 and axis > 0 and array.shape[axis] != dim:
                    raise InputError(
                        f"{source}: {name!r} has shape {array.shape} but the model expects {_format_shape(spec.shape)}"
                    )
        if array.dtype != spec.dtype:
            if not np.can_cast(array.dtype, spec.dtype, casting="same_kind"):
                raise InputError(f"{source}: {name!r} has dtype {array.dtype}, the model expects {spec.dtype}")
            array = array.astype(spec.dtype)
        out[name] = array
    return out


def iter_batches(feeds: Feeds, specs: Sequence[InputSpec], batch_size: int | None = None) -> Iterator[Feeds]:
    """Split feeds (samples on axis 0) into batches; a static batch dim in the model wins."""
    counts = {a.shape[0] if a.ndim else 1 for a in feeds.values()}
    if not feeds or counts == {0}:  # a model without inputs, or empty inputs: one run
        yield dict(feeds)
        return
    if len(counts) != 1 and batch_size is None and specs and not any(_dynamic_leading(s) for s in specs):
        # Every input has a fixed leading dim (or is a scalar): the feeds are one run, not samples.
        yield dict(feeds)
        return
    if len(counts) != 1:
        raise InputError(f"feeds disagree on the number of samples (axis 0): {sorted(counts)}")
    total = counts.pop()
    static = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int) and s.shape[0] > 0}
    size = static.pop() if len(static) == 1 else (batch_size or total)
    if total % size and static:
        raise InputError(f"{total} samples cannot be split into the model's fixed batch of {size}")
    for start in range(0, total, size):
        yield {k: v[start : start + size] if v.ndim else v for k, v in feeds.items()}


def _dynamic_leading(spec: InputSpec) -> bool:
    return spec.shape is None or (bool(spec.shape) and not isinstance(spec.shape[0], int))


def save_feeds(feeds: Mapping[str, np.ndarray], path: str | os.PathLike[str]) -> Path:
    """Write feeds to ``.npz`` atomically."""
    from graphopt._io import atomic_output

    out = Path(path)
    with atomic_output(out) as tmp, open(tmp / out.name, "wb") as handle:
        arrays: dict[str, Any] = dict(feeds)
        np.savez(handle, **arrays)
    return out


def _format_shape(shape: tuple[Dim, ...]) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in shape) + "]"
