"""``prune-key-channels`` (ThinK): query-driven pruning of the channels of Q·Kᵀ, static.

Per KV head ``g`` and channel ``c`` of the head dimension, ``score = mean q_c² · mean k_c²`` over
calibration tokens (summed over the query heads that read ``g``); ``magnitude`` uses the squared
column norms of ``W_q`` and ``W_k`` instead. Keeping channels ``C_g`` of every head::

    W_q -> W_q[:, cols(C)]   W_k -> W_k[:, cols(C)]   (biases likewise; V and W_o unchanged)
    Reshape targets on the Q and K paths: D -> |C|, H*D -> H*|C|   (the 1/sqrt(D) scale is kept)

Blocks whose Q/K path holds rotary embeddings (channel pairs ``c``, ``c + D/2``) or a fused QKV
weight are skipped with a reason.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from graphopt.passes import register_pass
from graphopt.rewrites.prune._base import PruneSettings, StructuredPrunePass, finish, slice_linear_out, top_units
from graphopt.rewrites.prune._dependency import HeadGroup, analyze
from graphopt.rewrites.prune._edit import remap_shape_input
from graphopt.rewrites.prune._importance import _collect, _need_feeds

__all__ = ["PruneKeyChannelsPass", "key_channel_scores", "prune_key_channels"]

_ROTARY_HINTS = frozenset({"Neg", "Slice", "Concat", "RotaryEmbedding", "Sin", "Cos"})


def _reach(value: ir.Value, members: set[ir.Node]) -> set[ir.Node]:
    seen: set[ir.Node] = set()
    frontier = [value]
    while frontier:
        for node, _ in frontier.pop().uses():
            if node in members and node not in seen:
                seen.add(node)
                frontier.extend(node.outputs)
    return seen


def _qk_nodes(group: HeadGroup) -> list[ir.Node]:
    """Region nodes on the Q and K paths, up to (not including) the Q·Kᵀ MatMul."""
    assert group.q is not None and group.k is not None
    members = set(group.region)
    from_q, from_k = _reach(group.q.output, members), _reach(group.k.output, members)
    order = {node: i for i, node in enumerate(group.region)}
    both = [n for n in from_q & from_k if n.op_type == "MatMul"]
    if not both:
        return []
    qk = min(both, key=lambda n: order[n])
    return [n for n in group.region if n in (from_q | from_k) and order[n] < order[qk]]


def key_channel_scores(model: ir.Model, groups: list[HeadGroup], method: str,
                       feeds: Mapping[str, np.ndarray] | None) -> dict[int, np.ndarray]:
    """Per group, scores ``[kv_heads, head_size]``."""
    out: dict[int, np.ndarray] = {}
    if method == "magnitude":
        for g in groups:
            assert g.q is not None and g.k is not None
            q = np.square(g.q.weight if g.q.out_axis == 1 else g.q.weight.T).sum(axis=0)
            k = np.square(g.k.weight if g.k.out_axis == 1 else g.k.weight.T).sum(axis=0)
            out[g.index] = _combine(g, q, k)
        return out
    data = _need_feeds(method, feeds)
    jobs = {}
    for g in groups:
        assert g.q is not None and g.k is not None
        jobs[str(g.index)] = ([g.q.output.name or "", g.k.output.name or ""],
                              lambda a: np.concatenate([np.square(a[0]).sum(0), np.square(a[1]).sum(0), [len(a[0])]]))
    totals = _collect(model, data, jobs)
    for g in groups:
        total = totals[str(g.index)]
        width, count = g.heads * g.head_size, max(total[-1], 1.0)
        out[g.index] = _combine(g, total[:width] / count, total[width:-1] / count)
    return out


def _combine(group: HeadGroup, q: np.ndarray, k: np.ndarray) -> np.ndarray:
    rep, d = group.heads // group.kv_heads, group.head_size
    q_per_kv = q.reshape(group.kv_heads, rep, d).sum(axis=1)
    return q_per_kv * k.reshape(group.kv_heads, d)


def prune_key_channels(model: ir.Model, group: HeadGroup, keep: np.ndarray) -> bool:
    """Keep channels ``keep[g]`` (``[kv_heads, D']``) of every head's Q and K."""
    assert group.q is not None and group.k is not None
    d, new_d = group.head_size, keep.shape[1]
    if new_d == d:
        return False
    rep = group.heads // group.kv_heads
    k_cols = np.concatenate([g * d + np.sort(keep[g]) for g in range(group.kv_heads)])
    q_cols = np.concatenate([(g * rep + r) * d + np.sort(keep[g]) for g in range(group.kv_heads) for r in range(rep)])
    mapping = {d: new_d, group.heads * d: group.heads * new_d, group.kv_heads * d: group.kv_heads * new_d}

    def remap(position: int, rank: int, dim: int) -> int:
        if rank >= 4:
            return mapping.get(dim, dim) if position == rank - 1 else dim
        return dim if position == 0 and rank >= 3 else mapping.get(dim, dim) if dim != d else dim

    for node in _qk_nodes(group):
        if node.op_type in ("Reshape", "Expand") and node.domain in ("", "ai.onnx"):
            remap_shape_input(model.graph, node, 1, remap)
    slice_linear_out(model.graph, group.q, q_cols.astype(np.int64))
    slice_linear_out(model.graph, group.k, k_cols.astype(np.int64))
    return True


@register_pass
class PruneKeyChannelsPass(StructuredPrunePass):
    """ThinK: remove ``round(fraction * D)`` channels of every head's queries and keys."""

    name = "prune-key-channels"
    Settings = PruneSettings

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        settings: PruneSettings = self.settings
        if settings.importance not in ("activation", "magnitude"):
            from graphopt.errors import UsageError

            raise UsageError("prune-key-channels: importance must be activation (ThinK) or magnitude")
        if settings.fraction == 0.0:
            return ir.passes.PassResult(model, False)
        live = []
        for g in analyze(model).heads:
            reason = g.reason
            if reason is None and g.block.qkv_fused:
                reason = "fused QKV weight"
            if reason is None and any(n.op_type in _ROTARY_HINTS for n in _qk_nodes(g)):
                reason = "rotary embeddings pair the key channels"
            if reason is not None:
                self.note_skipped([f"attention block {g.index}: {reason}"])
            elif round(settings.fraction * g.head_size) > 0:
                live.append(g)
        if not live:
            return ir.passes.PassResult(model, False)
        scores = key_channel_scores(model, live, settings.importance, self.load_feeds(model))
        modified = False
        for g in live:
            new_d = g.head_size - round(settings.fraction * g.head_size)
            keep = np.stack([top_units(row, new_d) for row in scores[g.index]])
            modified = prune_key_channels(model, g, keep) or modified
        if modified:
            finish(model)
        return ir.passes.PassResult(model, modified)
