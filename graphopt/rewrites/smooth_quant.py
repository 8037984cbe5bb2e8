"""SmoothQuant: migrate activation outliers into the weights before W8A8 quantization.

``smooth-quant`` (:class:`SmoothQuantPass`) rewrites, for every activation ``X`` read by MatMuls
with constant weights ``W_i`` (one ``X`` may feed several, as Q, K and V do),

    X · W_i = (X · diag(s)^-1) · (diag(s) · W_i),   s_j = max|X_j|^a / max_i max_n |W_i[j, n]|^(1-a)

with ``max|X_j|`` the calibrated per-channel maximum of the last axis and ``a`` the migration
strength ``alpha``. The weights are rescaled in place (rows ``j`` times ``s_j``); ``X / s`` is folded
into the producing ``LayerNormalization``'s scale and bias when every reader of ``X`` is one of
those MatMuls, and otherwise computed by an inserted ``Mul(X, 1/s)`` that only the MatMuls read
(residual Adds keep ``X``). In float the model computes the same function (up to rounding); the
ranges the activation quantizer then sees are flatter. A MatMul that reads an inserted ``Mul``
output is not matched again.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from graphopt.errors import UsageError
from graphopt.passes import GraphoptPass, PassSettings, register_pass, setting
from graphopt.rewrites._calibrators import ChannelAbsMax
from graphopt.rewrites.quantize_activations import (
    INSERTED_BY,
    WeightSite,
    load_calibration,
    split_holdout,
    weight_sites,
)
from graphopt.rewrites.quantize_weights import _add_initializer

__all__ = ["SmoothQuantPass", "SmoothQuantSettings", "smoothing_scales"]

logger = logging.getLogger(__name__)

def smoothing_scales(act_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    """``s_j = act_max_j^alpha / weight_max_j^(1 - alpha)``, 1 where either maximum is 0, clipped to [1e-5, 1e5]."""
    a = np.asarray(act_max, dtype=np.float64)
    w = np.asarray(weight_max, dtype=np.float64)
    ok = (a > 0) & (w > 0)
    s = np.ones_like(a)
    s[ok] = a[ok] ** alpha / w[ok] ** (1 - alpha)
    return np.clip(s, 1e-5, 1e5).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class SmoothQuantSettings(PassSettings):
    alpha: float = setting(0.5, "migration strength a (0: none, 1: all onto the weights)", search=(0.3, 0.5, 0.7, 0.85))
    calib: str = setting("", "calibration feeds (.npz keyed by input name, samples on axis 0)")
    fold: bool = setting(True, "fold 1/s into a producing LayerNormalization when possible (else insert Mul)")
    holdout: float = setting(0.0, "fraction of the calibration samples (the last ones) not used")
    batch_size: int = setting(8, "calibration batch size")
    max_abs: float = setting(1e6, "calibration ignores values with |x| above this")
    exclude: tuple[str, ...] = setting((), "node or weight names left alone")

    def validate(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise UsageError(f"smooth-quant: alpha must lie in [0, 1], not {self.alpha}")
        if not 0 <= self.holdout < 1 or self.batch_size < 1 or self.max_abs <= 0:
            raise UsageError("smooth-quant: holdout must lie in [0, 1), batch_size and max_abs must be positive")


@register_pass
class SmoothQuantPass(GraphoptPass[SmoothQuantSettings]):
    """SmoothQuant scale migration (see the module docstring). Calibration feeds come from the
    ``calib`` file or ``feeds=`` in memory."""

    name = "smooth-quant"
    Settings = SmoothQuantSettings
    output_preserving = False  # equal in exact arithmetic; float rounding differs slightly

    def __init__(self, *, feeds: Mapping[str, np.ndarray] | None = None, **settings: Any) -> None:
        super().__init__(**settings)
        self._feeds = feeds

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        groups: dict[str, list[WeightSite]] = {}
        values: dict[str, ir.Value] = {}
        for site in weight_sites(model.graph, exclude=self.settings.exclude):
            x = site.node.inputs[0]
            if site.axis != 1 or x is None or not x.name or x.const_value is not None:
                continue
            producer = x.producer()
            if producer is not None and producer.metadata_props.get(INSERTED_BY) == self.name:
                continue
            if len(site.weight.uses()) != 1:  # a shared weight cannot be rescaled for one reader only
                continue
            groups.setdefault(x.name, []).append(site)
            values[x.name] = x
        if not groups:
            return ir.passes.PassResult(model, False)
        act_max = self._activation_max(model, list(groups))
        for name, sites in groups.items():
            amax = act_max[name]
            weights = [s.weight.const_value.numpy() for s in sites]  # type: ignore[union-attr]
            if amax is None or any(w.shape[0] != amax.shape[0] for w in weights):
                continue
            wmax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
            scale = smoothing_scales(amax, wmax, self.settings.alpha)
            for site, w in zip(sites, weights):
                tensor = ir.Tensor((w * scale[:, None]).astype(np.float32), name=site.weight.name)
                site.weight.const_value = tensor
            x = values[name]
            if not (self.settings.fold and _fold_into_layernorm(x, {id(s.node) for s in sites}, scale)):
                self._insert_mul(model.graph, x, sites, scale)
        model.graph.sort()
        logger.info("smooth-quant: smoothed %d activations (alpha %.2f)", len(groups), self.settings.alpha)
        return ir.passes.PassResult(model, True)

    def _activation_max(self, model: ir.Model, names: list[str]) -> dict[str, np.ndarray | None]:
        from graphopt.calibration import iter_activations

        feeds = self._feeds
        if feeds is None:
            if not self.settings.calib:
                raise UsageError("smooth-quant needs calibration data: set 'calib' to an .npz of feeds")
            feeds = load_calibration(model, self.settings.calib)
        calib, _ = split_holdout(feeds, self.settings.holdout)
        stats = {n: ChannelAbsMax(max_abs=self.settings.max_abs) for n in names}
        for batch in iter_activations(model, calib, names, batch_size=self.settings.batch_size):
            for n, array in batch.items():
                stats[n].update(array)
        return {n: s.value for n, s in stats.items()}

    def _insert_mul(self, graph: ir.Graph, x: ir.Value, sites: list[WeightSite], scale: np.ndarray) -> None:
        inv = _add_initializer(graph, f"{x.name}_smooth_inv", ir.Tensor((1.0 / scale).astype(np.float32)))
        mul = ir.Node("", "Mul", [x, inv], name=f"{x.name}_smooth", metadata_props={INSERTED_BY: self.name})
        mul.outputs[0].name = f"{x.name}_smooth"
        mul.outputs[0].type, mul.outputs[0].shape = x.type, x.shape
        graph.append(mul)
        for site in sites:
            site.node.replace_input_with(0, mul.outputs[0])


def _fold_into_layernorm(x: ir.Value, readers: set[int], scale: np.ndarray) -> bool:
    """Divide a producing LayerNormalization's scale and bias by ``scale``; only when every reader of
    ``x`` is one of ``readers`` and the LayerNorm's constants belong to it alone."""
    ln = x.producer()
    if ln is None or ln.op_type != "LayerNormalization" or ln.domain not in ("", "ai.onnx"):
        return False
    if x.is_graph_output() or any(id(node) not in readers for node, _ in x.uses()):
        return False
    if ln.outputs[0] is not x or ln.attributes.get_int("axis", -1) not in (-1, len(x.shape or ()) - 1):
        return False
    params = [v for v in ln.inputs[1:3] if v is not None]
    if any(v.const_value is None or len(v.uses()) != 1 or v.is_graph_input() for v in params):
        return False
    for v in params:
        array = v.const_value.numpy()  # type: ignore[union-attr]
        if array.shape[-1:] != scale.shape:
            return False
    for v in params:
        v.const_value = ir.Tensor((v.const_value.numpy() / scale).astype(np.float32), name=v.name)  # type: ignore[union-attr]
    return True

