"""``prune-layers``: drop whole residual blocks (depth pruning).

For layer ``i`` with residual-stream input ``x_in`` and output ``x_out``: every reader of ``x_out``
reads ``x_in`` instead (``x_out -> x_in``), and the block's nodes and weights, now unused, are removed.
When ``x_out`` is a graph output it becomes ``Identity(x_in)`` under the same name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import onnx_ir as ir

from graphopt.errors import UsageError
from graphopt.passes import PassSettings, register_pass, setting
from graphopt.rewrites.prune._base import StructuredPrunePass, finish
from graphopt.rewrites.prune._dependency import LayerGroup, analyze
from graphopt.rewrites.prune._importance import METHODS, layer_scores

__all__ = ["PruneLayersPass", "PruneLayersSettings", "drop_layers"]


def drop_layers(model: ir.Model, layers: Sequence[LayerGroup]) -> bool:
    """Remove ``layers`` (from one :func:`analyze` of ``model``); returns whether anything changed."""
    for layer in layers:
        if layer.reason is not None:
            raise ValueError(f"layer {layer.index} cannot be dropped: {layer.reason}")
    # Last first, so that a later layer's x_in (an earlier layer's x_out) is rewired before it is used.
    for layer in sorted(layers, key=lambda g: -g.index):
        assert layer.x_in is not None and layer.x_out is not None
        x_in, x_out = layer.x_in, layer.x_out
        if x_out.is_graph_output():
            name = x_out.name
            x_out.name = f"{name}.dropped"
            identity = ir.node("Identity", [x_in], name=f"{name}.skip")
            identity.outputs[0].name = name
            if x_out.dtype is not None:
                identity.outputs[0].dtype = x_out.dtype
            identity.outputs[0].shape = x_out.shape
            model.graph.append(identity)
            outputs = model.graph.outputs
            for i, value in enumerate(outputs):
                if value is x_out:
                    outputs[i] = identity.outputs[0]
        ir.convenience.replace_all_uses_with(x_out, x_in)
    if layers:
        finish(model)
    return bool(layers)


@dataclasses.dataclass(frozen=True)
class PruneLayersSettings(PassSettings):
    count: int = setting(0, "number of residual blocks (layers) to drop", search=(0, 1, 2))
    importance: str = setting("activation", "how layers are scored: activation (1 - cos(x_in, x_out)), "
                              "magnitude or random", search=("activation", "magnitude", "random"))
    calibration: str = setting("", "an .npz of model inputs for activation importance")
    seed: int = setting(0, "seed of the random importance")

    def validate(self) -> None:
        if self.count < 0:
            raise UsageError(f"prune-layers: count must be >= 0, got {self.count}")
        if self.importance not in METHODS:
            raise UsageError(f"prune-layers: unknown importance {self.importance!r}")


@register_pass
class PruneLayersPass(StructuredPrunePass):
    """Drop the ``count`` least important layers (at least one layer always stays)."""

    name = "prune-layers"
    Settings = PruneLayersSettings

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        settings: PruneLayersSettings = self.settings
        if settings.count == 0:
            return ir.passes.PassResult(model, False)
        analysis = analyze(model)
        self.note_skipped([f"layer {g.index}: {g.reason}" for g in analysis.layers if g.reason])
        live = [g for g in analysis.layers if g.reason is None]
        if settings.count >= len(analysis.layers):
            raise UsageError(f"prune-layers: cannot drop {settings.count} of {len(analysis.layers)} layers")
        if len(live) < settings.count:
            raise UsageError(f"prune-layers: only {len(live)} layers can be dropped: {'; '.join(self.skipped)}")
        scores = layer_scores(model, live, analysis.heads, analysis.mlps, settings.importance,
                              self.load_feeds(model), settings.seed)
        order = sorted(live, key=lambda g: (scores[g.index], g.index))
        return ir.passes.PassResult(model, drop_layers(model, order[: settings.count]))
