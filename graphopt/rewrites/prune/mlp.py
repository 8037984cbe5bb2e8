"""``prune-mlp``: remove hidden neurons of MLP blocks, physically.

For kept neurons ``K``::

    W_up -> W_up[:, K]   b_up -> b_up[K]   (W_gate, b_gate likewise)   W_down -> W_down[K, :]
    Reshape/Expand/Split targets between them: F -> |K|
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from graphopt.passes import register_pass
from graphopt.rewrites.prune._base import (
    PruneSettings,
    StructuredPrunePass,
    slice_linear_in,
    slice_linear_out,
)
from graphopt.rewrites.prune._dependency import MlpGroup, analyze
from graphopt.rewrites.prune._edit import remap_shape_input
from graphopt.rewrites.prune._importance import mlp_scores

__all__ = ["PruneMlpPass", "prune_mlp_group"]

_SHAPE_INPUTS = {"Reshape": 1, "Expand": 1, "Split": 1}


def prune_mlp_group(model: ir.Model, group: MlpGroup, keep: Sequence[int]) -> bool:
    """Keep only hidden neurons ``keep`` of ``group``; returns whether it changed."""
    if group.reason is not None:
        raise ValueError(f"MLP block {group.index} cannot be pruned: {group.reason}")
    kept = np.array(sorted(int(k) for k in keep), dtype=np.int64)
    if len(kept) == group.units:
        return False
    if len(kept) == 0:
        raise ValueError("keep at least one neuron")
    assert group.up is not None and group.down is not None
    graph, old, new = model.graph, group.units, len(kept)

    def remap(position: int, rank: int, dim: int) -> int:
        return new if dim == old and not (rank >= 3 and position == 0) else dim

    for node in group.region:
        index = _SHAPE_INPUTS.get(node.op_type)
        if index is not None and node.domain in ("", "ai.onnx"):
            remap_shape_input(graph, node, index, remap)
    slice_linear_out(graph, group.up, kept)
    if group.gate is not None:
        slice_linear_out(graph, group.gate, kept)
    slice_linear_in(graph, group.down, kept)
    return True


@register_pass
class PruneMlpPass(StructuredPrunePass):
    """Remove ``round(fraction * width)`` of the least important hidden neurons of every MLP block."""

    name = "prune-mlp"
    Settings = PruneSettings

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return self.prune_units(model, "MLP block", lambda: analyze(model).mlps, mlp_scores, prune_mlp_group)
