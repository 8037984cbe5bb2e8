"""Settings and helpers shared by the structured pruning passes."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from graphopt.errors import UsageError
from graphopt.passes import GraphoptPass, PassSettings, setting
from graphopt.rewrites.prune._edit import clear_intermediate_shapes, replace_const_input
from graphopt.rewrites.prune._importance import METHODS

__all__ = ["PruneSettings", "StructuredPrunePass", "finish", "slice_linear_in", "slice_linear_out", "top_units"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PruneSettings(PassSettings):
    fraction: float = setting(0.0, "fraction of units removed from every block (heads, neurons, channels)",
                              search=(0.0, 0.25, 0.5))
    importance: str = setting("magnitude", f"how units are scored: {', '.join(METHODS)}", search=METHODS)
    calibration: str = setting("", "an .npz of model inputs for activation/wanda importance")
    seed: int = setting(0, "seed of the random importance")
    multiple_of: int = setting(1, "round every block's kept units to a multiple of this (8 or 16 keep MLP and "
                                  "conv widths on onnxruntime's fast CPU kernel paths)", search=(1, 8, 16))

    def validate(self) -> None:
        if not 0.0 <= self.fraction < 1.0:
            raise UsageError(f"prune: fraction must be in [0, 1), got {self.fraction}")
        if self.multiple_of < 1:
            raise UsageError(f"prune: multiple_of must be at least 1, got {self.multiple_of}")
        if self.importance not in METHODS:
            raise UsageError(f"prune: unknown importance {self.importance!r}; choose from {', '.join(METHODS)}")


class StructuredPrunePass(GraphoptPass[Any]):
    """Base of the structured pruning passes: calibration feeds and the skipped-group report.

    ``feeds`` may be set on an instance to pass calibration arrays directly (the facade does);
    otherwise they are read from ``settings.calibration``.
    """

    output_preserving = False

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.feeds: Mapping[str, np.ndarray] | None = None
        self.skipped: list[str] = []

    def load_feeds(self, model: ir.Model) -> Mapping[str, np.ndarray] | None:
        if self.feeds is not None:
            return self.feeds
        path = getattr(self.settings, "calibration", "")
        if not path:
            return None
        from graphopt.feeds import input_specs, load_feeds

        if not Path(path).is_file():
            raise UsageError(f"{self.name}: calibration file {path!r} not found")
        return load_feeds(path, input_specs(model))

    def note_skipped(self, lines: list[str]) -> None:
        for line in lines:
            logger.warning("%s: skipped %s", self.name, line)
        self.skipped.extend(lines)

    def prune_units(
        self,
        model: ir.Model,
        label: str,
        groups: Callable[[], Sequence[Any]],
        scores: Callable[..., Mapping[int, np.ndarray]],
        prune: Callable[[ir.Model, Any, list[int]], bool],
    ) -> ir.passes.PassResult:
        """The body of the unit-pruning passes: report the groups that cannot be pruned, score the
        others and keep the :func:`kept_units` best units of each."""
        settings = self.settings
        if settings.fraction == 0.0:
            return ir.passes.PassResult(model, False)
        found = groups()
        self.note_skipped([f"{label} {g.index}: {g.reason}" for g in found if g.reason])
        live = [g for g in found if g.reason is None]
        if all(kept_units(g.units, settings) == g.units for g in live):
            return ir.passes.PassResult(model, False)
        score = scores(model, live, settings.importance, self.load_feeds(model), settings.seed)
        modified = False
        for group in live:
            keep = top_units(score[group.index], kept_units(group.units, settings))
            modified = prune(model, group, keep.tolist()) or modified
        if modified:
            finish(model)
        return ir.passes.PassResult(model, modified)


def kept_units(units: int, settings: PruneSettings) -> int:
    """How many of a block's ``units`` survive: ``units - round(fraction * units)``, rounded to the nearest
    multiple of ``multiple_of`` (at least one multiple, never more than ``units``)."""
    keep = units - round(settings.fraction * units)
    step = settings.multiple_of
    if step > 1 and keep < units:
        keep = min(units, max(step, round(keep / step) * step))
    return keep


def top_units(scores: np.ndarray, keep: int) -> np.ndarray:
    """Indices of the ``keep`` highest scores, in ascending index order (ties: lower index wins)."""
    keep = max(1, min(int(keep), len(scores)))
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return np.sort(order[:keep])


def slice_linear_out(graph: ir.Graph, linear: Any, columns: np.ndarray) -> None:
    """Keep output features ``columns`` of a linear layer (weight and bias)."""
    weight = np.take(linear.weight, columns, axis=linear.out_axis)
    replace_const_input(graph, linear.node, 1, weight, linear.node.inputs[1].name or "weight")
    if linear.bias is not None:
        node, index, array = linear.bias
        flat = array.reshape(-1)[columns].reshape(*array.shape[:-1], len(columns))
        replace_const_input(graph, node, index, flat, node.inputs[index].name or "bias")


def slice_linear_in(graph: ir.Graph, linear: Any, rows: np.ndarray) -> None:
    """Keep input features ``rows`` of a linear layer."""
    weight = np.take(linear.weight, rows, axis=1 - linear.out_axis)
    replace_const_input(graph, linear.node, 1, weight, linear.node.inputs[1].name or "weight")


def finish(model: ir.Model) -> None:
    """Drop what pruning left unused and the value shapes it made stale."""
    common_passes.RemoveUnusedNodesPass()(model)
    clear_intermediate_shapes(model.graph)
