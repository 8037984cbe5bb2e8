"""``prune-hidden``: remove hidden (embedding) channels of the whole residual stream, physically (Minitron).

The residual stream is traced from its seeds (the inputs of ``LayerNormalization``-like nodes and the
outputs of embedding ``Gather`` s) through every op that carries the hidden channels on one axis, in both
directions (a residual ``Add`` pulls its other operand in). For kept channels ``K`` every constant on the
stream is sliced on its channel axis::

    E_tok, E_pos, E_type -> E[:, K]   LayerNorm: gamma -> gamma[K], beta -> beta[K]
    projections reading the stream: W -> W[K, :]   writing it: W -> W[:, K], b -> b[K]
    Conv writing it (ViT patches): W -> W[K], b -> b[K]   cls token, position table, per-channel consts -> c[..., K]
    Reshape/Expand shape constants: H -> |K| at the channel position

Semantics: LayerNorm (and RMSNorm, fused or decomposed) now normalises over ``|K|`` channels, so its
mean and variance are those of the kept channels only: pruned outputs are not a slice of the original
ones, and the fidelity has to be measured (``bench/prune_minilm.py``) and may be healed by distillation.
A graph output on the stream shrinks too: a sentence embedder's output goes from ``H`` to ``|K|``
dimensions; the kept indices are stored per output in ``metadata_props["graphopt.hidden_channels"]``.

A stream that reaches an op the tracer does not follow (a graph input, ``Softmax``, a reshape that
merges the channels with another axis, a MatMul of two computed tensors, ...) is skipped with a reason.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from graphopt.passes import register_pass
from graphopt.rewrites.prune._base import PruneSettings, StructuredPrunePass, finish, kept_units, top_units
from graphopt.rewrites.prune._edit import const_array, remap_shape_input, replace_const_input
from graphopt.rewrites.prune._importance import _collect, _need_feeds
from graphopt.rewrites.prune._stream import HiddenGroup, _int_attr, hidden_groups

__all__ = ["HIDDEN_KEY", "HiddenGroup", "PruneHiddenPass", "hidden_groups", "hidden_scores", "prune_hidden_group"]

logger = logging.getLogger(__name__)

HIDDEN_KEY = "graphopt.hidden_channels"

def _slices(group: HiddenGroup) -> dict[tuple[int, int], tuple[np.ndarray, int]]:
    """The distinct constants of the stream, by (id of the value, axis): (array, axis)."""
    out: dict[tuple[int, int], tuple[np.ndarray, int]] = {}
    for node, index, axis in group.consts:
        value = node.inputs[index]
        array = const_array(value)
        assert value is not None and array is not None
        out.setdefault((id(value), axis), (array, axis))
    return out


def hidden_scores(model: ir.Model, group: HiddenGroup, method: str, feeds: Mapping[str, np.ndarray] | None,
                  seed: int) -> np.ndarray:
    """A score per channel of ``group`` (higher: keep).

    ``activation`` (Minitron): mean ``|y_c|`` over (non-padding) tokens of every normalisation output on
    the stream, summed over the norms (the inputs of the projections that read the stream when the norms
    are decomposed); ``magnitude``: L2 norm of every constant slice the channel owns (embedding columns,
    projection rows/columns, norm scales); ``wanda``: ``sum_j |W_cj| * ||X_c||`` over the linear layers
    that read the stream; ``random``: uniform from ``seed``.
    """
    width = group.width
    if method == "random":
        return np.random.default_rng(seed).random(width)
    if method == "magnitude":
        total = np.zeros(width)
        for array, axis in _slices(group).values():
            moved = np.moveaxis(np.asarray(array, dtype=np.float64), axis, 0).reshape(width, -1)
            total += np.square(moved).sum(axis=1)
        return np.sqrt(total)
    data = _need_feeds(method, feeds)
    if method == "activation":
        names = [n.outputs[0].name or "" for n in group.norms]
        if not names:
            names = sorted({n.inputs[0].name or "" for n in group.readers if n.op_type != "Conv"})  # type: ignore[union-attr]
        jobs: dict[str, tuple[Sequence[str], Any]] = {
            name: ([name], lambda a: np.concatenate([np.abs(a[0]).sum(axis=0), [len(a[0])]])) for name in names}
        totals = _collect(model, data, jobs)
        return np.sum([t[:-1] / max(t[-1], 1.0) for t in totals.values()], axis=0)
    linears = [n for n in group.readers if n.op_type != "Conv"]
    jobs = {str(i): ([n.inputs[0].name or ""], lambda a: np.square(a[0]).sum(axis=0))  # type: ignore[union-attr]
            for i, n in enumerate(linears)}
    totals = _collect(model, data, jobs)
    score = np.zeros(width)
    for i, node in enumerate(linears):
        weight = const_array(node.inputs[1])
        assert weight is not None
        trans = node.op_type == "Gemm" and _int_attr(node, "transB", 0)
        rows = np.abs(weight.T if trans else weight).astype(np.float64)  # [in, out]
        score += rows.sum(axis=1) * np.sqrt(totals[str(i)])
    return score


def prune_hidden_group(model: ir.Model, group: HiddenGroup, keep: Sequence[int]) -> bool:
    """Keep only hidden channels ``keep`` of ``group``; returns whether it changed."""
    if group.reason is not None:
        raise ValueError(f"residual stream {group.index} cannot be pruned: {group.reason}")
    kept = np.array(sorted({int(k) for k in keep}), dtype=np.int64)
    if len(kept) == group.width:
        return False
    if len(kept) == 0 or kept[0] < 0 or kept[-1] >= group.width:
        raise ValueError(f"keep between 1 and {group.width} channels in [0, {group.width})")
    graph, old, new = model.graph, group.width, len(kept)
    made: dict[tuple[int, int], ir.Value] = {}
    for node, index, axis in group.consts:
        value = node.inputs[index]
        assert value is not None
        key = (id(value), axis)
        if key in made:
            node.replace_input_with(index, made[key])
            continue
        array = const_array(value)
        assert array is not None
        made[key] = replace_const_input(graph, node, index, np.take(array, kept, axis=axis), value.name or "hidden")
    for node, index, position in group.shapes:
        def remap(pos: int, rank: int, dim: int, position: int = position) -> int:
            return new if pos == position and dim == old else dim

        remap_shape_input(graph, node, index, remap)
    for value in graph.outputs:
        out_axis = group.outputs.get(value.name or "")
        if out_axis is not None and value.shape is not None:
            dims: list[Any] = list(value.shape)
            dims[out_axis] = new
            value.shape = ir.Shape(dims)
    recorded = json.loads(model.metadata_props.get(HIDDEN_KEY, "{}"))
    for name in group.outputs:
        previous = recorded.get(name, list(range(old)))
        recorded[name] = [int(previous[k]) for k in kept]
    if group.outputs:
        model.metadata_props[HIDDEN_KEY] = json.dumps(recorded)
    return True


@register_pass
class PruneHiddenPass(StructuredPrunePass):
    """Remove ``round(fraction * H)`` of the least important hidden channels of every residual stream."""

    name = "prune-hidden"
    Settings = PruneSettings

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.kept: dict[int, list[int]] = {}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        settings: PruneSettings = self.settings
        if settings.fraction == 0.0:
            return ir.passes.PassResult(model, False)
        groups = hidden_groups(model)
        if not groups:
            self.note_skipped(["no residual stream found (no LayerNorm/RMSNorm and no embedding table)"])
        self.note_skipped([f"residual stream {g.index}: {g.reason}" for g in groups if g.reason])
        modified = False
        for group in groups:
            kept = kept_units(group.width, settings)
            if group.reason is not None or kept == group.width:
                continue
            scores = hidden_scores(model, group, settings.importance, self.load_feeds(model), settings.seed)
            keep = top_units(scores, kept)
            self.kept[group.index] = keep.tolist()
            modified = prune_hidden_group(model, group, keep.tolist()) or modified
        if modified:
            finish(model)
        return ir.passes.PassResult(model, modified)
