"""Pruning facade: ``prune(model, heads=..., mlp=..., layers=..., think=..., hidden=...)`` and ``extract_subnetwork``.

``prune`` runs ``prune-layers``, ``prune-heads``, ``prune-mlp``, ``prune-key-channels`` (ThinK) and
``prune-hidden`` (in that order, each recorded in the model's provenance) and reports parameters before
and after and the blocks it had to skip. ``extract_subnetwork`` cuts the sub-network of a transformer
graph that an architecture search asks for: the layers kept, per kept layer the number of heads (KV
groups under grouped-query attention) and the MLP width, and the hidden width, keeping the most
important units; for a convolutional network, the output channels of each prunable convolution, or
of every prunable convolution of each stage (:func:`conv_stages`).
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
    PruneHiddenPass,
    PruneKeyChannelsPass,
    PruneLayersPass,
    PruneMlpPass,
    analyze,
    drop_layers,
    hidden_groups,
    prune_head_group,
    prune_hidden_group,
    prune_mlp_group,
)
from graphopt.rewrites.prune._base import finish, top_units
from graphopt.rewrites.prune._importance import METHODS, head_scores, mlp_scores

__all__ = ["SUBNET_IMPORTANCE", "ConvStagePlan", "PruneResult", "conv_stages", "extract_subnetwork",
           "parameter_count", "prune"]

#: How :func:`extract_subnetwork` picks the units it keeps: the importance methods, or ``first``
SUBNET_IMPORTANCE = (*METHODS, "first")


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
    think: float = 0.0,
    hidden: float = 0.0,
    importance: str = "magnitude",
    feeds: Mapping[str, np.ndarray] | None = None,
    calibration: str = "",
    seed: int = 0,
    multiple_of: int = 1,
) -> PruneResult:
    """Prune ``model`` in place: drop ``layers`` layers, then ``heads`` and ``mlp`` fractions per block,
    ``think`` of every head's query/key channels (ThinK) and ``hidden`` of the residual stream's channels.

    ``importance`` is one of ``activation``, ``magnitude``, ``wanda``, ``random``; the data-driven
    ones (activation, wanda) read ``feeds`` (arrays keyed by input name) or the ``calibration`` .npz path.
    Layers are scored with ``activation`` (block importance) when ``importance`` is ``wanda``; ThinK
    accepts only ``activation`` and ``magnitude``. Hidden pruning shrinks a graph output that carries the
    stream (a sentence embedding: ``H -> H - round(hidden * H)`` dimensions). ``multiple_of`` rounds the
    kept MLP neurons and hidden channels of every block to a multiple (8 or 16 suit CPU kernels).
    """
    if importance not in METHODS:
        raise UsageError(f"unknown importance {importance!r}; choose from {', '.join(METHODS)}")
    if think and importance not in ("activation", "magnitude"):
        raise UsageError(f"ThinK ranks key channels by activation or magnitude, not {importance}")
    before = parameter_count(model)
    layer_method = "activation" if importance == "wanda" else importance
    passes = [
        PruneLayersPass(count=layers, importance=layer_method, calibration=calibration, seed=seed),
        PruneHeadsPass(fraction=heads, importance=importance, calibration=calibration, seed=seed),
        PruneMlpPass(fraction=mlp, importance=importance, calibration=calibration, seed=seed,
                     multiple_of=multiple_of),
        PruneKeyChannelsPass(fraction=think, importance=importance if think else "magnitude",
                             calibration=calibration, seed=seed),
        PruneHiddenPass(fraction=hidden, importance=importance, calibration=calibration, seed=seed,
                        multiple_of=multiple_of),
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
    hidden: int | None = None,
    channels: Sequence[int] | None = None,
    stages: Sequence[int] | None = None,
    importance: str = "magnitude",
    feeds: Mapping[str, np.ndarray] | None = None,
    seed: int = 0,
) -> ir.Model:
    """The sub-network of ``model`` (a transformer graph) with ``layers`` kept (indices, default all),
    ``heads`` units and ``mlp`` hidden neurons per kept layer (one number for all, or one per kept
    layer; ``None`` keeps them whole) and ``hidden`` channels of the residual stream; for a CNN,
    ``channels`` output channels for each prunable convolution in graph order, or ``stages``: one
    channel count per stage of :func:`conv_stages`, kept by every prunable convolution of that stage
    (a convolution narrower than the count keeps all of its channels). ``importance`` is one of
    ``activation``, ``magnitude``, ``wanda``, ``random``, or ``first``: keep the first units of every
    block, the prefix slices a weight-shared super-network (InstaTune, once-for-all) trains. Returns a
    new model; ``model`` is not modified.
    """
    if importance not in SUBNET_IMPORTANCE:
        raise UsageError(f"unknown importance {importance!r}; choose from {', '.join(SUBNET_IMPORTANCE)}")
    if channels is not None and stages is not None:
        raise UsageError("give channels (per convolution) or stages (per stage), not both")
    if stages is not None:
        plans = conv_stages(model)
        if len(stages) != len(plans):
            raise UsageError(f"stages: {len(stages)} values for {len(plans)} stages with prunable convolutions")
        per_conv: list[int] = []
        for plan, count in zip(plans, stages):
            if not 1 <= int(count) <= max(plan.widths):
                raise UsageError(f"stage {plan.index}: channels must be in [1, {max(plan.widths)}], got {count}")
            per_conv.extend(min(int(count), width) for width in plan.widths)
        return _conv_subnetwork(model, per_conv, importance, feeds, seed, record={"stages": [int(c) for c in stages]})
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
        _keep_units(work, [analysis.heads[i] for i in kept], head_counts, "attention block", "heads",
                    head_scores, prune_head_group, importance, feeds, seed)
    if mlp_counts:
        _keep_units(work, [analysis.mlps[i] for i in kept], mlp_counts, "MLP block", "mlp",
                    mlp_scores, prune_mlp_group, importance, feeds, seed)
    if hidden is not None:
        _keep_hidden(work, int(hidden), importance, feeds, seed)
    if head_counts or mlp_counts or hidden is not None:
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
        "mlp": mlp_counts and [mlp_counts[i] for i in kept], "hidden": hidden, "importance": importance,
        "seed": seed,
    })
    return work


def _keep_hidden(model: ir.Model, count: int, importance: str, feeds: Mapping[str, np.ndarray] | None,
                 seed: int) -> None:
    from graphopt.rewrites.prune.hidden import hidden_scores

    groups = hidden_groups(model)
    if not groups:
        raise UsageError("hidden: no residual stream found")
    for group in groups:
        if group.reason is not None:
            raise UsageError(f"hidden: residual stream {group.index} cannot be pruned: {group.reason}")
        if not 1 <= count <= group.width:
            raise UsageError(f"hidden must be in [1, {group.width}], got {count}")
    for group in groups:
        scores = (-np.arange(group.width, dtype=np.float64) if importance == "first"
                  else hidden_scores(model, group, importance, feeds, seed))
        prune_hidden_group(model, group, top_units(scores, count).tolist())


def _keep_units(model: ir.Model, groups: Sequence[Any], counts: Mapping[int, int], block: str, what: str,
                scorer: Any, pruner: Any, importance: str, feeds: Mapping[str, np.ndarray] | None,
                seed: int) -> None:
    """Keep ``counts[g.index]`` units of every group (heads or MLP neurons), the best by ``importance``."""
    for g in groups:
        if g.reason is not None:
            raise UsageError(f"{block} {g.index} cannot be pruned: {g.reason}")
        if not 1 <= counts[g.index] <= g.units:
            raise UsageError(f"layer {g.index}: {what} must be in [1, {g.units}], got {counts[g.index]}")
    scores = _first(groups) if importance == "first" else scorer(model, groups, importance, feeds, seed)
    for g in groups:
        pruner(model, g, top_units(scores[g.index], counts[g.index]).tolist())


def _first(groups: Sequence[Any]) -> dict[int, np.ndarray]:
    """Scores that rank every group's units in index order (``importance="first"``)."""
    return {g.index: -np.arange(g.units, dtype=np.float64) for g in groups}


@dataclasses.dataclass(frozen=True)
class ConvStagePlan:
    """One stage of a CNN for sub-network extraction: the prunable convolutions (``prune-channels``
    groups) between two downsampling points, i.e. whose outputs have one spatial resolution; their
    output widths, and the convolutions of the stage that cannot be pruned alone (with the reason,
    e.g. the ones whose outputs a residual ``Add`` couples)."""

    index: int
    resolution: tuple[int, ...] | None
    convs: tuple[str, ...]
    widths: tuple[int, ...]
    fixed: tuple[str, ...]

    @property
    def search(self) -> tuple[int, ...]:
        """Channel counts a search may pick for the stage: 25%, 50%, 75% and 100% of its widest conv."""
        top = max(self.widths)
        return tuple(sorted({max(1, round(top * f)) for f in (0.25, 0.5, 0.75, 1.0)}))


def conv_stages(model: ir.Model, shapes: Mapping[str, tuple[int, ...]] | None = None) -> list[ConvStagePlan]:
    """The stages of a CNN: convolutions in graph order, a new stage wherever the spatial resolution of
    their outputs changes (a strided convolution or a pooling downsampled). Only stages holding at least one
    prunable convolution are returned; ``shapes`` fixes input shapes (dynamic dims default as in
    :func:`graphopt.analysis.concrete_copy`)."""
    from graphopt.analysis import concrete_copy
    from graphopt.analysis._shapes import static_shape
    from graphopt.rewrites.prune.channels import channel_groups

    work = concrete_copy(model, shapes).model
    resolution: dict[str, tuple[int, ...] | None] = {}
    for node in work.graph:
        if node.op_type == "Conv" and node.name:
            out = static_shape(node.outputs[0])
            resolution[node.name] = tuple(out[2:]) if out is not None and len(out) > 2 else None
    stages: list[list[Any]] = []
    current: tuple[int, ...] | None = None
    for group in channel_groups(model):
        here = resolution.get(group.conv.name or "")
        if not stages or here != current:
            stages.append([here, [], [], []])
            current = here
        stage = stages[-1]
        if group.reason is None:
            stage[1].append(group.conv.name or "")
            stage[2].append(group.channels)
        else:
            stage[3].append(f"{group.conv.name}: {group.reason}")
    plans = [s for s in stages if s[1]]
    return [ConvStagePlan(i, s[0], tuple(s[1]), tuple(s[2]), tuple(s[3])) for i, s in enumerate(plans)]


def _conv_subnetwork(model: ir.Model, channels: Sequence[int], importance: str,
                     feeds: Mapping[str, np.ndarray] | None, seed: int,
                     record: Mapping[str, Any] | None = None) -> ir.Model:
    from graphopt.rewrites.prune.channels import channel_groups, channel_scores, prune_channel_group

    work = model.clone()
    groups = [g for g in channel_groups(work) if g.reason is None]
    if len(channels) != len(groups):
        raise UsageError(f"channels: {len(channels)} values for {len(groups)} prunable convolutions")
    for group, count in zip(groups, channels):
        if not 1 <= int(count) <= group.channels:
            raise UsageError(f"conv {group.conv.name!r}: channels must be in [1, {group.channels}], got {count}")
    scores = ([-np.arange(g.channels, dtype=np.float64) for g in groups] if importance == "first"
              else channel_scores(work, groups, importance, feeds, seed))
    for group, count, score in zip(groups, channels, scores):
        prune_channel_group(work, group, top_units(score, int(count)).tolist())
    finish(work)
    provenance.record_pass(work, "extract-subnetwork", {**(record or {}), "channels": [int(c) for c in channels],
                                                        "importance": importance, "seed": seed})
    return work
