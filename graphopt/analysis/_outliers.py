"""Outlier statistics of attention outputs (Bondarenko et al., "Quantizable Transformers", 2023).

For each recognised attention block the output of its output projection, after its bias (what the block
adds to the residual stream), is captured on calibration feeds and summarised as ``max_abs = max |x|`` (the
infinity norm over all tokens) and ``kurtosis``: the kurtosis ``E[(x - μ)⁴] / σ⁴`` of each token's
hidden vector (not the excess kurtosis: a Gaussian gives 3), averaged over tokens. When the model has
an ``attention_mask`` input of shape ``[batch, sequence]`` matching the tensor, padding tokens (mask 0)
are left out; otherwise every token counts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

__all__ = ["LayerOutliers", "outlier_statistics"]


@dataclasses.dataclass(frozen=True)
class LayerOutliers:
    """Statistics of one attention block's output tensor over all calibration tokens."""

    layer: int
    tensor: str
    max_abs: float
    kurtosis: float
    tokens: int


def outlier_statistics(
    model: ir.Model, feeds: Mapping[str, np.ndarray], *, batch_size: int | None = 8
) -> tuple[list[LayerOutliers], list[str]]:
    """Per-layer statistics and notes (blocks without a usable output tensor). The model is not modified."""
    from graphopt.analysis._attention import find_attention
    from graphopt.calibration import iter_activations

    notes: list[str] = []
    located: list[dict[str, ir.Node | None]] = []
    tensors: list[tuple[int, str]] = []
    for i, block in enumerate(find_attention(model.graph, [], located=located)):
        node = located[i].get("o")
        if node is None or not node.outputs[0].name:
            notes.append(f"attention block {i} ({block.node}): no output projection, no statistics")
            continue
        tensors.append((i, _after_bias(node.outputs[0]).name or ""))
    if not tensors:
        return [], notes
    names = [name for _, name in tensors]
    mask_name = "attention_mask" if any(v.name == "attention_mask" for v in model.graph.inputs) else None
    peak = dict.fromkeys(names, 0.0)
    kurt_sum = dict.fromkeys(names, 0.0)
    count = dict.fromkeys(names, 0)
    wanted = names + ([mask_name] if mask_name else [])
    for batch in iter_activations(model, feeds, wanted, batch_size=batch_size):
        mask = np.asarray(batch[mask_name]) if mask_name else None
        for name in names:
            x = np.asarray(batch[name], dtype=np.float64)
            if mask is not None and x.ndim == 3 and x.shape[:2] == mask.shape:
                tokens = x[mask != 0]
            else:
                tokens = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
            peak[name] = max(peak[name], float(np.abs(tokens).max(initial=0.0)))
            centred = tokens - tokens.mean(axis=-1, keepdims=True)
            var = (centred ** 2).mean(axis=-1)
            fourth = (centred ** 4).mean(axis=-1)
            ok = var > 0
            kurt_sum[name] += float((fourth[ok] / var[ok] ** 2).sum())
            count[name] += int(ok.sum())
    return [
        LayerOutliers(i, name, peak[name], kurt_sum[name] / count[name] if count[name] else float("nan"), count[name])
        for i, name in tensors
    ], notes


def _after_bias(value: ir.Value) -> ir.Value:
    """The output of ``Add(value, bias)`` when that is the only use of ``value`` and ``bias`` is constant."""
    uses = list(value.uses())
    if len(uses) == 1:
        node, _ = uses[0]
        others = [v for v in node.inputs if v is not value]
        if node.op_type == "Add" and others and all(
                v is not None and (v.const_value is not None or (v.producer() is not None
                                                                 and v.producer().op_type == "Constant"))  # type: ignore[union-attr]
                for v in others) and node.outputs[0].name:
            return node.outputs[0]
    return value
