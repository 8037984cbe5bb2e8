"""Importance scores for structured pruning; higher means keep.

* ``activation`` (Minitron): heads by the mean L2 norm of each head's output (the input of ``W_o``),
  MLP neurons by the mean ``|a_j|`` of their activation (the input of ``W_down``), layers by block
  importance ``1 - cos(x_in, x_out)`` averaged over tokens. Padding tokens (``attention_mask == 0``)
  are left out.
* ``magnitude``: the L2 norm of every weight a unit owns (``W_q``/``W_k``/``W_v`` columns and ``W_o``
  rows; ``W_up``/``W_gate`` columns and ``W_down`` rows); for layers, the norm of the block's two output
  projections.
* ``wanda``: ``sum |W_ij| * ||X_j||_2`` over the rows of ``W_o`` (``W_down``) that a unit owns, with
  ``X`` the calibration activations entering that projection.
* ``random``: uniform scores from ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from graphopt.errors import UsageError
from graphopt.rewrites.prune._dependency import HeadGroup, LayerGroup, Linear, MlpGroup

__all__ = ["METHODS", "head_scores", "layer_scores", "mlp_scores"]

METHODS = ("activation", "magnitude", "wanda", "random")
_Reducer = Callable[[list[np.ndarray]], np.ndarray]


def _need_feeds(method: str, feeds: Mapping[str, np.ndarray] | None) -> Mapping[str, np.ndarray]:
    if feeds is None:
        raise UsageError(f"importance {method!r} needs calibration data (an .npz of model inputs)")
    return feeds


def _collect(model: ir.Model, feeds: Mapping[str, np.ndarray],
             jobs: Mapping[str, tuple[Sequence[str], _Reducer]], *, channel_axis: int = -1) -> dict[str, np.ndarray]:
    """Run ``model`` once over ``feeds``; per job, sum ``reducer([tokens x channels arrays])`` over batches.

    ``channel_axis`` names the channel axis of the activations (1 for NCHW feature maps)."""
    from graphopt.calibration import iter_activations
    from graphopt.feeds import input_specs, iter_batches, validate_feeds

    names = sorted({n for tensors, _ in jobs.values() for n in tensors})
    specs = input_specs(model)
    batches = iter_batches(validate_feeds(feeds, specs, source="calibration data"), specs, 8)
    totals: dict[str, np.ndarray] = {}
    for acts, batch in zip(iter_activations(model, feeds, names, batch_size=8), batches):
        mask = batch.get("attention_mask")
        for key, (tensors, reducer) in jobs.items():
            if channel_axis == -1:
                arrays = [_tokens(acts[n], mask) for n in tensors]
            else:
                arrays = [_positions(acts[n], channel_axis) for n in tensors]
            part = reducer(arrays)
            totals[key] = part if key not in totals else totals[key] + part
    return totals


def _tokens(array: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``[..., C]`` activations as ``[tokens, C]`` float64, padding tokens dropped when a mask fits."""
    array = np.asarray(array, dtype=np.float64)
    if mask is not None and array.ndim == 3 and array.shape[:2] == mask.shape:
        return array[mask.astype(bool)]
    if mask is not None and array.ndim == 2 and array.shape[0] == mask.size:
        return array[mask.reshape(-1).astype(bool)]
    return array.reshape(-1, array.shape[-1])


def _positions(array: np.ndarray, channel_axis: int) -> np.ndarray:
    """Feature maps as ``[positions, C]`` float64."""
    moved = np.moveaxis(np.asarray(array, dtype=np.float64), channel_axis, -1)
    return moved.reshape(-1, moved.shape[-1])


def _rows(linear: Linear) -> np.ndarray:
    """``W`` as ``[out, in]`` regardless of storage."""
    return linear.weight.T if linear.out_axis == 1 else linear.weight


def _unit_norm(matrix: np.ndarray, units: int) -> np.ndarray:
    """Squared norm of each of ``units`` equal row blocks of ``matrix``."""
    return np.square(matrix.astype(np.float64)).reshape(units, -1).sum(axis=1)


def _head_columns(group: HeadGroup, linear: Linear, section: str) -> np.ndarray:
    """Output rows (``[out, in]``) of ``linear`` owned by the Q, K or V part of each unit, as ``[units, ...]``."""
    rows = _rows(linear)
    d, heads, kv = group.head_size, group.heads, group.kv_heads
    if group.block.qkv_fused:
        start = {"q": 0, "k": heads * d, "v": heads * d + kv * d}[section]
        rows = rows[start:start + (heads if section == "q" else kv) * d]
    return rows


def head_scores(model: ir.Model, groups: Sequence[HeadGroup], method: str,
                feeds: Mapping[str, np.ndarray] | None, seed: int) -> dict[int, np.ndarray]:
    """Per prunable group index, a score for each unit (head, or KV group with its query heads)."""

    def owned(g: HeadGroup) -> list[np.ndarray]:
        assert g.q is not None and g.k is not None and g.v is not None and g.o is not None
        return [_head_columns(g, g.q, "q"), _head_columns(g, g.k, "k"), _head_columns(g, g.v, "v"), _columns(g.o)]

    def head_norms(g: HeadGroup, x: np.ndarray) -> np.ndarray:
        return np.linalg.norm(x.reshape(len(x), g.heads, g.head_size), axis=-1).sum(axis=0)

    return _unit_scores(model, [g for g in groups if g.reason is None], method, feeds, seed,
                        owned=owned, reader=lambda g: g.o, activation=head_norms)


def mlp_scores(model: ir.Model, groups: Sequence[MlpGroup], method: str,
               feeds: Mapping[str, np.ndarray] | None, seed: int) -> dict[int, np.ndarray]:
    """Per prunable MLP index, a score for each hidden neuron."""

    def owned(g: MlpGroup) -> list[np.ndarray]:
        assert g.up is not None and g.down is not None
        return [_rows(g.up), *([_rows(g.gate)] if g.gate is not None else []), _columns(g.down)]

    return _unit_scores(model, [g for g in groups if g.reason is None], method, feeds, seed,
                        owned=owned, reader=lambda g: g.down, activation=lambda g, x: np.abs(x).sum(axis=0))


def _columns(linear: Linear) -> np.ndarray:
    """``W`` as ``[in, out]`` regardless of storage: the rows each input channel owns."""
    return linear.weight if linear.out_axis == 1 else linear.weight.T


def _unit_scores(model: ir.Model, live: Sequence[HeadGroup] | Sequence[MlpGroup], method: str,
                 feeds: Mapping[str, np.ndarray] | None, seed: int, *,
                 owned: Callable[[Any], list[np.ndarray]], reader: Callable[[Any], Linear | None],
                 activation: Callable[[Any, np.ndarray], np.ndarray]) -> dict[int, np.ndarray]:
    """Scores of each group's units by ``method``. ``owned(g)``: the weights its units own, each as
    ``[units * k, ...]`` row blocks; ``reader(g)``: the projection reading the units' outputs (its
    input is what ``activation`` and ``wanda`` measure); ``activation(g, x)``: the per-channel
    activation sums of ``[tokens, channels]`` activations ``x`` (channels summed per unit afterwards)."""
    if method == "random":
        rng = np.random.default_rng(seed)
        return {g.index: rng.random(g.units) for g in live}
    if method == "magnitude":
        return {g.index: np.sqrt(sum(_unit_norm(w, g.units) for w in owned(g))) for g in live}
    data = _need_feeds(method, feeds)
    jobs: dict[str, tuple[Sequence[str], _Reducer]] = {}
    for g in live:
        projection = reader(g)
        assert projection is not None
        source = projection.node.inputs[0]
        name = source.name if source is not None and source.name else ""
        if method == "activation":
            def reduce(arrays: list[np.ndarray], g: Any = g) -> np.ndarray:
                return np.concatenate([activation(g, arrays[0]), [len(arrays[0])]])
            jobs[str(g.index)] = ([name], reduce)
        else:
            jobs[str(g.index)] = ([name], lambda arrays: np.square(arrays[0]).sum(axis=0))
    totals = _collect(model, data, jobs)
    scores = {}
    for g in live:
        total = totals[str(g.index)]
        if method == "activation":
            per_channel = total[:-1] / max(total[-1], 1.0)
        else:
            projection = reader(g)
            assert projection is not None
            per_channel = np.abs(_columns(projection)).astype(np.float64).sum(axis=1) * np.sqrt(total)
        scores[g.index] = per_channel.reshape(g.units, -1).sum(axis=1)
    return scores


def layer_scores(model: ir.Model, layers: Sequence[LayerGroup], heads: Sequence[HeadGroup],
                 mlps: Sequence[MlpGroup], method: str, feeds: Mapping[str, np.ndarray] | None,
                 seed: int) -> dict[int, float]:
    """Per droppable layer index, its importance."""
    live = [g for g in layers if g.reason is None]
    if method == "random":
        rng = np.random.default_rng(seed)
        return {g.index: float(rng.random()) for g in live}
    if method == "magnitude":
        scores = {}
        for g in live:
            o, down = heads[g.index].o, mlps[g.index].down
            scores[g.index] = float(sum(np.linalg.norm(x.weight) for x in (o, down) if x is not None))
        return scores
    if method != "activation":
        raise UsageError(f"importance {method!r} scores weights, not whole layers; use activation, magnitude or random")
    data = _need_feeds(method, feeds)

    def distance(arrays: list[np.ndarray]) -> np.ndarray:
        a, b = arrays
        cos = (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        return np.array([(1.0 - cos).sum(), len(a)])

    jobs: dict[str, tuple[Sequence[str], _Reducer]] = {}
    for g in live:
        assert g.x_in is not None and g.x_out is not None
        jobs[str(g.index)] = ([g.x_in.name or "", g.x_out.name or ""], distance)
    totals = _collect(model, data, jobs)
    return {g.index: float(totals[str(g.index)][0] / max(totals[str(g.index)][1], 1.0)) for g in live}
