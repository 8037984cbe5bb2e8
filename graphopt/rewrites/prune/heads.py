"""``prune-heads``: remove whole attention heads, physically.

For kept heads ``K`` (head size ``D``)::

    W_q -> W_q[:, cols(K)]   b_q -> b_q[cols(K)]   (same for W_k, W_v with the kept KV heads)
    W_o -> W_o[cols(K), :]   cols(K) = concat(range(h*D, (h+1)*D) for h in K)
    Reshape/Expand/Split targets: H -> |K|, H*D -> |K|*D (and H_kv, H_kv*D likewise)

With grouped-query attention one unit is a KV head with its ``H/H_kv`` query heads, so that the
repeat factor stays the same. A fused ``W_qkv`` is sliced in each of its three sections.
"""

from __future__ import annotations

import logging
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
from graphopt.rewrites.prune._dependency import HeadGroup, analyze
from graphopt.rewrites.prune._edit import remap_shape_input
from graphopt.rewrites.prune._importance import head_scores

__all__ = ["PruneHeadsPass", "prune_head_group"]

logger = logging.getLogger(__name__)

_SHAPE_INPUTS = {"Reshape": 1, "Expand": 1, "Split": 1}


def _columns(units: Sequence[int], size: int) -> np.ndarray:
    return np.concatenate([np.arange(u * size, (u + 1) * size) for u in units]).astype(np.int64)


def prune_head_group(model: ir.Model, group: HeadGroup, keep_units: Sequence[int]) -> bool:
    """Keep only units ``keep_units`` (heads, or KV groups) of ``group``; returns whether it changed."""
    if group.reason is not None:
        raise ValueError(f"attention block {group.index} cannot be pruned: {group.reason}")
    keep = sorted(int(u) for u in keep_units)
    if keep == list(range(group.units)):
        return False
    if not keep:
        raise ValueError("keep at least one head")
    assert group.q is not None and group.k is not None and group.v is not None and group.o is not None
    graph, d = model.graph, group.head_size
    rep = group.heads // group.kv_heads
    q_heads = [u * rep + r for u in keep for r in range(rep)]
    q_cols, kv_cols = _columns(q_heads, d), _columns(keep, d)
    old = {"h": group.heads, "kv": group.kv_heads}
    new = {"h": len(q_heads), "kv": len(keep)}
    mapping: dict[int, int] = {}
    for key in ("h", "kv"):
        for value, target in ((old[key], new[key]), (old[key] * d, new[key] * d)):
            if mapping.get(value, target) != target:
                raise ValueError(f"attention block {group.index}: ambiguous shape constants ({value})")
            mapping[value] = target
    width, kv_width = old["h"] * d, old["kv"] * d
    mapping[width + 2 * kv_width] = new["h"] * d + 2 * new["kv"] * d
    gqa = rep > 1

    def remap(position: int, rank: int, dim: int) -> int:
        if (rank >= 3 and position == 0) or (rank >= 4 and position == rank - 1):
            return dim
        if gqa and rank == 5 and position != 1:
            return dim
        return mapping.get(dim, dim)

    def remap_sizes(position: int, rank: int, dim: int) -> int:
        return mapping.get(dim, dim)

    for node in group.region:
        index = _SHAPE_INPUTS.get(node.op_type)
        if index is not None and node.domain in ("", "ai.onnx"):
            remap_shape_input(graph, node, index, remap_sizes if node.op_type == "Split" else remap)
    if group.block.qkv_fused:
        fused = np.concatenate([q_cols, width + kv_cols, width + kv_width + kv_cols])
        slice_linear_out(graph, group.q, fused)
    else:
        slice_linear_out(graph, group.q, q_cols)
        slice_linear_out(graph, group.k, kv_cols)
        slice_linear_out(graph, group.v, kv_cols)
    slice_linear_in(graph, group.o, q_cols)
    return True


@register_pass
class PruneHeadsPass(StructuredPrunePass):
    """Remove ``round(fraction * units)`` of the least important heads of every attention block."""

    name = "prune-heads"
    Settings = PruneSettings

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return self.prune_units(model, "attention block", lambda: analyze(model).heads, head_scores, prune_head_group)
