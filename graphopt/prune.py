"""Pruning facade: ``prune(model, heads=..., mlp=..., layers=...)`` and ``extract_subnetwork``.

``prune`` runs ``prune-layers``, ``prune-heads`` and ``prune-mlp`` (in that order, each recorded in
the model's provenance) and reports parameters before and after and the blocks it had to skip.
``extract_subnetwork`` cuts the sub-network of a transformer graph that an architecture search
asks for: the layers kept, and per kept layer the number of heads (KV groups under grouped-query
attention) and the MLP width, keeping the most important units; for a convolutional network, the
output channels of each prunable convolution.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from graphopt import provenance
from graphopt.errors import UsageError
from graphopt.passes import run_passes
from graphopt.rewrites.prune import (
    PruneHeadsPass,
    PruneLayersPass,
    PruneMlpPass,
    analyze,
    drop_layers,
    prune_head_group,
    prune_mlp_group,
)
from graphopt.rewrites.prune._base import finish, top_units
from graphopt.rewrites.prune._importance import METHODS, head_scores, mlp_scores

__all__ = ["PruneResult", "extract_subnetwork", "parameter_count", "prune"]


@dataclasses.dataclass(frozen=True)
class PruneResult:
    """What :func:`prune` did: parameters before/after, the passes that changed the model, skipped blocks."""

    parameters_before: int
    parameters_after: int
    applied: tuple[str, ...]
    skipped: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parameter_count(model: ir.Model) -> int:
    """Elements of all initializers (and ``Constant`` tensors) of the main graph."""
    total = sum(v.const_value.size for v in model.graph.initializers.values() if v.const_value is not None)
    for node in model.graph:
        if node.op_type == "Constant" and "value" in node.attributes:
            total += node.attributes["value"].value.size
    return int(total)


def prune(
    model: ir.Model,
    *,
    heads: float = 0.0,
    mlp: float = 0.0,
    layers: int = 0,
    importance: str = "magnitude",
    feeds: Mapping[str, np.ndarray] | None = None,
    calibration: str = "",
    seed: int = 0,
) -> PruneResult:
    """Prune ``model`` in place: drop ``layers`` layers, then ``heads`` and ``mlp`` fractions per block.

    ``importance`` is one of ``activation``, ``magnitude``, ``wanda``, ``random``; the data-driven
    ones (activation, wanda) read ``feeds`` (arrays keyed by input name) or the ``calibration`` .npz path.
    Layers are scored with ``activation`` (block importance) when ``importance`` is ``wanda``.
    """
    if importance not in METHODS:
        raise UsageError(f"unknown importance {importance!r}; choose from {', '.join(METHODS)}")
    before = parameter_count(model)
    layer_method = "activation" if importance == "wanda" else importance
    passes = [
        PruneLayersPass(count=layers, importance=layer_method, calibration=calibration, seed=seed),
        PruneHeadsPass(fraction=heads, importance=importance, calibration=calibration, seed=seed),
        PruneMlpPass(fraction=mlp, importance=importance, calibration=calibration, seed=seed),
    ]
    applied: list[str] = []
    skipped: list[str] = []
    for pass_ in passes:
        pass_.feeds = feeds
        if run_passes(model, [pass_]):
            applied.append(pass_.name)
        skipped.extend(pass_.skipped)
    return PruneResult(before, parameter_count(model), tuple(applied), tuple(dict.fromkeys(skipped)))


def _per_layer(value: int | Sequence[int] | None, kept: Sequence[int], what: str) -> dict[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return {i: value for i in kept}
    values = list(value)
    if len(values) != len(kept):
        raise UsageError(f"{what}: {len(values)} values for {len(kept)} kept layers")
    return dict(zip(kept, (int(v) for v in values)))


def extract_subnetwork(
    model: ir.Model,
    *,
    layers: Sequence[int] | None = None,
    heads: int | Sequence[int] | None = None,
    mlp: int | Sequence[int] | None = None,
    channels: Sequence[int] | None = None,
    importance: str = "magnitude",
    feeds: Mapping[str, np.ndarray] | None = None,
    seed: int = 0,
) -> ir.Model:
    """The sub-network of ``model`` (a transformer graph) with ``layers`` kept (indices, default all),
    ``heads`` units and ``mlp`` hidden neurons per kept layer (one number for all, or one per kept
    layer; ``None`` keeps them whole); for a CNN, ``channels`` output channels for each prunable
    convolution in graph order. Returns a new model; ``model`` is not modified.
    """
    if channels is not None:
        return _conv_subnetwork(model, channels, importance, feeds, seed)
    work = model.clone()
    analysis = analyze(work)
    count = len(analysis.heads)
    kept = sorted(set(range(count) if layers is None else (int(i) for i in layers)))
    if not kept or kept[0] < 0 or kept[-1] >= count:
        raise UsageError(f"layers must be indices in [0, {count}) and keep at least one; got {list(layers or [])}")
    head_counts = _per_layer(heads, kept, "heads")
    mlp_counts = _per_layer(mlp, kept, "mlp")
    if head_counts:
        groups = [analysis.heads[i] for i in kept]
        for g in groups:
            if g.reason is not None:
                raise UsageError(f"attention block {g.index} cannot be pruned: {g.reason}")
            if not 1 <= head_counts[g.index] <= g.units:
                raise UsageError(f"layer {g.index}: heads must be in [1, {g.units}], got {head_counts[g.index]}")
        scores = head_scores(work, groups, importance, feeds, seed)
        for g in groups:
            prune_head_group(work, g, top_units(scores[g.index], head_counts[g.index]).tolist())
    if mlp_counts:
        mgroups = [analysis.mlps[i] for i in kept]
        for m in mgroups:
            if m.reason is not None:
                raise UsageError(f"MLP block {m.index} cannot be pruned: {m.reason}")
            if not 1 <= mlp_counts[m.index] <= m.units:
                raise UsageError(f"layer {m.index}: mlp must be in [1, {m.units}], got {mlp_counts[m.index]}")
        scores = mlp_scores(work, mgroups, importance, feeds, seed)
        for m in mgroups:
            prune_mlp_group(work, m, top_units(scores[m.index], mlp_counts[m.index]).tolist())
    if head_counts or mlp_counts:
        finish(work)
    dropped = [i for i in range(count) if i not in kept]
    if dropped:
        layer_groups = analyze(work).layers
        blocked = [g for g in layer_groups if g.index in dropped and g.reason]
        if blocked:
            raise UsageError(f"layer {blocked[0].index} cannot be dropped: {blocked[0].reason}")
        drop_layers(work, [g for g in layer_groups if g.index in dropped])
    provenance.record_pass(work, "extract-subnetwork", {
        "layers": kept, "heads": head_counts and [head_counts[i] for i in kept],
        "mlp": mlp_counts and [mlp_counts[i] for i in kept], "importance": importance, "seed": seed,
    })
    return work


def _conv_subnetwork(model: ir.Model, channels: Sequence[int], importance: str,
                     feeds: Mapping[str, np.ndarray] | None, seed: int) -> ir.Model:
    from graphopt.rewrites.prune.channels import channel_groups, channel_scores, prune_channel_group

    work = model.clone()
    groups = [g for g in channel_groups(work) if g.reason is None]
    if len(channels) != len(groups):
        raise UsageError(f"channels: {len(channels)} values for {len(groups)} prunable convolutions")
    for group, count in zip(groups, channels):
        if not 1 <= int(count) <= group.channels:
            raise UsageError(f"conv {group.conv.name!r}: channels must be in [1, {group.channels}], got {count}")
    scores = channel_scores(work, groups, importance, feeds, seed)
    for group, count, score in zip(groups, channels, scores):
        prune_channel_group(work, group, top_units(score, int(count)).tolist())
    finish(work)
    provenance.record_pass(work, "extract-subnetwork", {"channels": [int(c) for c in channels],
                                                        "importance": importance, "seed": seed})
    return work
