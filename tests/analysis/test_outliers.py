"""Outlier statistics of attention outputs: max |x| and per-token kurtosis, padding left out."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt.analysis._outliers import outlier_statistics
from graphopt.calibration import iter_activations
from tests.rewrites.test_attention import ATTENTION, CLASSIFIER

# The attention layer with an output-projection bias and an ``attention_mask`` input that marks padding.
MASKED = ATTENTION.replace("float[N, 1, 1, S] mask)", "float[N, 1, 1, S] mask, int64[N, S] attention_mask)").replace(
    "float scale = {2.0}>", "float scale = {2.0}, float[8] bo = {0.5, -1, 2, 0, 0, 1, -3, 0.25}>"
).replace("  y = Add(x, o)", "  ob = Add(o, bo)\n  y = Add(x, ob)")


def _kurtosis(tokens: np.ndarray) -> float:
    centred = tokens - tokens.mean(-1, keepdims=True)
    return float(((centred ** 4).mean(-1) / (centred ** 2).mean(-1) ** 2).mean())


def test_statistics_after_the_bias_and_without_padding():
    model = ir.from_onnx_text(MASKED)
    rng = np.random.default_rng(0)
    attention_mask = np.ones((4, 6), np.int64)
    attention_mask[1, 3:] = 0
    attention_mask[3, 1:] = 0
    feeds = {"x": rng.normal(size=(4, 6, 8)).astype(np.float32), "mask": np.zeros((4, 1, 1, 6), np.float32),
             "attention_mask": attention_mask}
    (layer,), notes = outlier_statistics(model, feeds, batch_size=3)
    assert notes == [] and layer.tensor == "ob" and layer.tokens == 24 - 3 - 5
    (batch,) = list(iter_activations(model, feeds, ["ob"], batch_size=None))
    kept = batch["ob"][attention_mask != 0].astype(np.float64)
    assert layer.max_abs == np.abs(kept).max()
    np.testing.assert_allclose(layer.kurtosis, _kurtosis(kept), rtol=1e-9)


def test_no_attention_no_statistics():
    model = ir.from_onnx_text(CLASSIFIER)
    layers, notes = outlier_statistics(model, {"x": np.zeros((2, 8), np.float32)})
    assert layers == [] and notes == []
