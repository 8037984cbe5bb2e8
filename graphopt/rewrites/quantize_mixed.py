"""Mixed-precision weight-only quantization at an average bit budget (``mixed:B``).

``quantize-mixed`` is ``quantize-weights`` with per-weight bit widths chosen by BAQ's
closed-form allocation (:mod:`graphopt.rewrites._bitalloc`):
``bits_i = B + ½·log2(s_i / geomean(s))``, rounded to ``choices`` under the budget
``Σ n_i bits_i <= B Σ n_i``. The sensitivity is a Hessian proxy measured, not modelled:
``D_i(4) = tr(E_iᵀ (XᵀX / tokens) E_i)``, the per-token output error of a 4-bit RTN grid
(``E_i`` its weight error; unit activations without calibration), and ``s_i = D_i(4)·2^8 / n_i``
so that ``D_i(b) ≈ n_i·s_i·2^(-2b)``. A Gather table ``[V, D]`` (``embeddings``) takes part with
the error of one row per token, ``D(4) = ||E||² / V`` (tokens used uniformly).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from graphopt.errors import UsageError
from graphopt.passes import register_pass, setting
from graphopt.rewrites._bitalloc import allocate_bits
from graphopt.rewrites._blockwise import SUPPORTED_BITS, dequantize_blockwise, quantize_blockwise
from graphopt.rewrites._layerstats import InputStats
from graphopt.rewrites.quantize_weights import Candidates, QuantizeWeightsPass, QuantizeWeightsSettings

__all__ = ["QuantizeMixedPass", "QuantizeMixedSettings", "weight_sensitivity"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class QuantizeMixedSettings(QuantizeWeightsSettings):
    average_bits: float = setting(3.0, "average bits per quantized weight (the budget)", search=(2.5, 3.0, 3.5, 4.0))
    choices: tuple[int, ...] = setting((2, 3, 4, 8), "bit widths a weight may get")

    def validate(self) -> None:
        super().validate()
        if not self.choices or any(c not in SUPPORTED_BITS for c in self.choices):
            raise UsageError(f"quantize-mixed: choices must be taken from {SUPPORTED_BITS}, not {self.choices}")
        if not min(self.choices) <= self.average_bits <= max(self.choices):
            raise UsageError(f"quantize-mixed: average_bits must lie in [{min(self.choices)}, {max(self.choices)}]")
        if self.format != "int":
            raise UsageError("quantize-mixed: format must be int")


def weight_sensitivity(
    w: np.ndarray, block_size: int, symmetric: bool, stats: InputStats | None, *, rows_per_token: int = 0
) -> float:
    """``s`` with ``D(b) = n·s·2^(-2b)``, from the measured error of a 4-bit RTN grid: ``D(4)`` is the
    per-token output error ``tr(Eᵀ (XᵀX / tokens) E)`` (unit activations without statistics); a
    Gather table reads one of its ``rows_per_token`` rows per token (uniform use assumed)."""
    e = w.astype(np.float64) - dequantize_blockwise(*quantize_blockwise(w, 4, block_size, symmetric), block_size)
    if stats is not None:
        distortion = float(np.sum(e * (stats.second_moment @ e)))
    elif rows_per_token:
        distortion = float(np.sum(e**2)) / rows_per_token
    else:
        distortion = float(np.sum(e**2))
    return distortion * 2.0**8 / w.size


@register_pass
class QuantizeMixedPass(QuantizeWeightsPass):
    """``quantize-weights`` with per-weight widths from BAQ's closed-form allocation (see the module);
    the inherited ``bits`` setting is not used. Each weight's continuous ``baq_bits`` and sensitivity
    are recorded with its chosen width under ``graphopt.quantization``."""

    name = "quantize-mixed"
    Settings = QuantizeMixedSettings
    settings: QuantizeMixedSettings

    def needs_stats(self) -> bool:
        return bool(self.settings.calibration)

    def plan_bits(self, candidates: Candidates, stats: dict[str, InputStats]) -> dict[str, int]:
        s = self.settings
        names = list(candidates)
        sizes = [_size(candidates[name][0]) for name in names]
        sens = []
        for name in names:
            weight, users = candidates[name]
            x = users[0][0].inputs[0] if users[0][0].op_type != "Gather" else None
            layer_stats = stats.get(x.name) if x is not None and x.name else None
            assert weight.const_value is not None
            w = weight.const_value.numpy()
            if users[0][0].op_type == "Gather":
                sens.append(weight_sensitivity(w.T, s.block_size, s.symmetric, None, rows_per_token=w.shape[0]))
            else:
                sens.append(weight_sensitivity(w, s.block_size, s.symmetric, layer_stats))
        chosen, continuous = allocate_bits(sens, sizes, s.average_bits, s.choices)
        average = sum(n * b for n, b in zip(sizes, chosen)) / sum(sizes)
        logger.info("%s: %.3f bits per weight on average (budget %.3f)", self.name, average, s.average_bits)
        self._details = {
            n: {"baq_bits": round(float(c), 3), "sensitivity": v} for n, c, v in zip(names, continuous, sens)
        }
        return dict(zip(names, chosen))

    def plan_details(self) -> dict[str, dict[str, float]]:
        return dict(getattr(self, "_details", {}))


def _size(weight: ir.Value) -> int:
    assert weight.const_value is not None
    return int(weight.const_value.size)
