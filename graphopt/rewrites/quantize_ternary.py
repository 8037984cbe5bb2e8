"""Ternary weights (BitNet b1.58): ``W ≈ gamma · clip(round(W / gamma), -1, 1)``.

``scale=absmean`` uses ``gamma = mean|W|`` (Ma et al., 2024, "The Era of 1-bit LLMs"); ``median``
uses ``gamma = median|W|`` ("BitNet b1.58 Reloaded", Nielsen & Schneider-Kamp, 2024), which is less
pulled by outliers. ``granularity=tensor`` keeps one ``gamma`` per weight, ``channel`` one per output
column. The graph is ``MatMul(x, DequantizeLinear(T, gamma[, axis=1]))`` with ``T`` INT4 codes in
``{-1, 0, 1}`` (opset 21; 1.58 bits of information in a 4-bit container). These formats are
meant for models trained for them (quantization-aware): applied post hoc to a float model they
lose much accuracy, which the benchmark reports.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from graphopt.errors import UsageError
from graphopt.passes import GraphoptPass, PassSettings, register_pass, setting
from graphopt.rewrites.quantize_weights import (
    QuantizedWeight,
    emit_weight,
    find_weights,
    opset_ready,
    raise_opset,
    record_quantization,
    replace_weight,
    weight_skip_reason,
)

__all__ = ["QuantizeTernaryPass", "QuantizeTernarySettings", "ternarize"]

logger = logging.getLogger(__name__)

_EPS = 1e-8


def ternarize(w: np.ndarray, scale: str = "absmean", granularity: str = "tensor") -> tuple[np.ndarray, np.ndarray]:
    """Codes int8 ``[K, N]`` in ``{-1, 0, 1}`` and ``gamma`` (0-D, or ``[N]`` per column)."""
    a = np.abs(np.asarray(w, dtype=np.float64))
    axis = None if granularity == "tensor" else 0
    gamma = np.mean(a, axis=axis) if scale == "absmean" else np.median(a, axis=axis)
    gamma = np.maximum(np.asarray(gamma, dtype=np.float64), _EPS)
    codes = np.clip(np.rint(w / gamma), -1, 1).astype(np.int8)
    return codes, gamma.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class QuantizeTernarySettings(PassSettings):
    scale: str = setting("absmean", "absmean: gamma = mean|W| (BitNet b1.58); median: gamma = median|W| (Reloaded)",
                         search=("absmean", "median"))
    granularity: str = setting("tensor", "tensor: one gamma per weight; channel: one per output column",
                               search=("tensor", "channel"))
    min_elements: int = setting(4096, "leave weights with fewer elements in float")
    exclude: tuple[str, ...] = setting((), "leave weights whose initializer name contains any of these strings")

    def validate(self) -> None:
        if self.scale not in ("absmean", "median"):
            raise UsageError(f"quantize-ternary: scale must be absmean or median, not {self.scale!r}")
        if self.granularity not in ("tensor", "channel"):
            raise UsageError(f"quantize-ternary: granularity must be tensor or channel, not {self.granularity!r}")
        if self.min_elements < 0:
            raise UsageError("quantize-ternary: min_elements must not be negative")
        if isinstance(self.exclude, str) or not all(isinstance(s, str) for s in self.exclude):
            raise UsageError("quantize-ternary: exclude must be a list of strings")


@register_pass
class QuantizeTernaryPass(GraphoptPass[QuantizeTernarySettings]):
    """``MatMul(x, W) -> MatMul(x, DequantizeLinear(T, gamma))``, ``T = clip(round(W / gamma), -1, 1)``."""

    name = "quantize-ternary"
    Settings = QuantizeTernarySettings
    output_preserving = False

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        s = self.settings
        candidates = find_weights(model, lambda w: weight_skip_reason(w, s.min_elements, s.exclude),
                                  pass_name=self.name)
        if not candidates or not opset_ready(model, self.name):
            return ir.passes.PassResult(model, False)
        raise_opset(model)
        details = {}
        for name, (weight, users) in candidates.items():
            assert weight.const_value is not None
            codes, gamma = ternarize(weight.const_value.numpy(), s.scale, s.granularity)
            result = QuantizedWeight(codes, gamma, None, 2, axis=1)
            value = emit_weight(model.graph, weight, users[0][0], result, 0, self.name)
            replace_weight(model.graph, weight, users, value)
            details[name] = {"zeros": float(np.mean(codes == 0))}
        record_quantization(model, self.name, s.to_dict(), details)
        return ir.passes.PassResult(model, True)
