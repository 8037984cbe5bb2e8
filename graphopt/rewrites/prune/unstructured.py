"""``prune-unstructured``: magnitude or Wanda sparsity, unstructured or N:M, as masked (zeroed) weights.

For every MatMul/Gemm with a constant float weight ``W [in, out]`` and score ``S`` (``|W|``, or Wanda's
``|W_ij| * ||X_i||_2`` with ``X`` the calibration inputs of that layer)::

    unstructured: W_ij -> 0 for the round(sparsity * in) lowest S_ij of each output j
    N:M:          W_ij -> 0 for the M - N lowest S_ij of every M consecutive inputs i of each output j

The graph keeps its shapes and ops: onnxruntime's CPU kernels are dense, so the zeros save neither
time nor memory there; they are a reference for sparse runtimes and for measuring the accuracy cost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from graphopt.analysis._graph import ConstantTracker
from graphopt.errors import UsageError
from graphopt.passes import PassSettings, register_pass, setting
from graphopt.rewrites.prune._base import StructuredPrunePass
from graphopt.rewrites.prune._edit import const_array, replace_const_input
from graphopt.rewrites.prune._importance import _collect, _need_feeds

__all__ = ["PruneUnstructuredPass", "PruneUnstructuredSettings", "mask_weight"]


@dataclasses.dataclass(frozen=True)
class PruneUnstructuredSettings(PassSettings):
    sparsity: float = setting(0.0, "fraction of each output's weights zeroed (unstructured)", search=(0.0, 0.5))
    pattern: str = setting("", "N:M semi-structured pattern such as 2:4 (keep N of every M inputs); "
                           "overrides sparsity", search=("", "2:4"))
    importance: str = setting("magnitude", "magnitude (|W|) or wanda (|W| * ||X||)", search=("magnitude", "wanda"))
    calibration: str = setting("", "an .npz of model inputs for wanda")
    min_size: int = setting(0, "layers with fewer weights than this are left dense")

    def validate(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise UsageError(f"prune-unstructured: sparsity must be in [0, 1), got {self.sparsity}")
        if self.pattern:
            parts = self.pattern.split(":")
            if len(parts) != 2 or not all(p.isdigit() for p in parts) or not 0 < int(parts[0]) < int(parts[1]):
                raise UsageError(f"prune-unstructured: pattern must be N:M with 0 < N < M, got {self.pattern!r}")
        if self.importance not in ("magnitude", "wanda"):
            raise UsageError(f"prune-unstructured: importance must be magnitude or wanda, not {self.importance!r}")


def mask_weight(scores: np.ndarray, sparsity: float, pattern: tuple[int, int] | None) -> np.ndarray:
    """Boolean keep-mask for ``scores [in, out]`` (per output column, see the module docstring)."""
    rows, cols = scores.shape
    if pattern is not None:
        n, m = pattern
        grouped = scores.T.reshape(cols, rows // m, m)
        order = np.argsort(grouped, axis=-1, kind="stable")
        keep = np.ones_like(grouped, dtype=bool)
        np.put_along_axis(keep, order[..., : m - n], False, axis=-1)
        return keep.reshape(cols, rows).T
    drop = round(sparsity * rows)
    keep = np.ones_like(scores, dtype=bool)
    if drop:
        order = np.argsort(scores, axis=0, kind="stable")
        np.put_along_axis(keep, order[:drop], False, axis=0)
    return keep


@register_pass
class PruneUnstructuredPass(StructuredPrunePass):
    """Zero the least important weights of every linear layer (unstructured or N:M)."""

    name = "prune-unstructured"
    Settings = PruneUnstructuredSettings

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        settings: PruneUnstructuredSettings = self.settings
        pattern = tuple(int(p) for p in settings.pattern.split(":")) if settings.pattern else None
        if pattern is None and settings.sparsity == 0.0:
            return ir.passes.PassResult(model, False)
        consts = ConstantTracker(model.graph)
        layers: list[tuple[ir.Node, np.ndarray, bool]] = []
        for node in model.graph:
            if node.op_type not in ("MatMul", "Gemm") or node.domain not in ("", "ai.onnx"):
                continue
            if consts.projection(node) is None:
                continue
            weight = const_array(node.inputs[1])
            if weight is None or weight.ndim != 2 or weight.dtype.kind != "f" or weight.size < settings.min_size:
                continue
            trans = node.op_type == "Gemm" and bool(node.attributes.get("transB") and node.attributes["transB"].value)
            rows = weight.shape[1] if trans else weight.shape[0]
            if pattern is not None and rows % pattern[1]:
                self.note_skipped([f"{node.name!r}: {rows} inputs do not split into groups of {pattern[1]}"])
                continue
            layers.append((node, weight, trans))
        norms = self._input_norms(model, [n for n, _, _ in layers]) if settings.importance == "wanda" else None
        modified = False
        for node, weight, trans in layers:
            w = weight.T if trans else weight  # [in, out]
            scores = np.abs(w.astype(np.float64))
            if norms is not None:
                scores = scores * norms[node.name or ""][:, None]
            keep = mask_weight(scores, settings.sparsity, pattern)  # type: ignore[arg-type]
            if keep.all():
                continue
            masked = np.where(keep, w, 0).astype(weight.dtype)
            replace_const_input(model.graph, node, 1, masked.T if trans else masked, node.inputs[1].name or "w")  # type: ignore[union-attr]
            modified = True
        if modified:
            import onnx_ir.passes.common as common_passes

            common_passes.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified)

    def _input_norms(self, model: ir.Model, nodes: list[ir.Node]) -> dict[str, np.ndarray]:
        feeds: Mapping[str, np.ndarray] = _need_feeds("wanda", self.load_feeds(model))
        jobs = {}
        for node in nodes:
            source = node.inputs[0]
            name = source.name if source is not None and source.name else ""
            jobs[node.name or ""] = ([name], lambda a: np.square(a[0]).sum(axis=0))
        return {k: np.sqrt(v) for k, v in _collect(model, feeds, jobs).items()}
