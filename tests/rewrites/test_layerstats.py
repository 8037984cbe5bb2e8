"""Calibration statistics (``_layerstats``): H = XᵀX and mean |x| captured with onnxruntime,
padding rows dropped by the attention mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.errors import InputError
from graphopt.feeds import save_feeds
from graphopt.rewrites._layerstats import collect_input_stats, layer_error, load_calibration

MODEL = """<ir_version: 10, opset_import: ["" : 21]>
g (float[B, S, 4] x, int64[B, S] attention_mask) => (float[B, S, 3] y) <float[4, 3] w = {
  0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2}, float[4] b = {1, -1, 2, 0}> {
  h = Add(x, b)
  y = MatMul(h, w)
}"""


def test_hessian_and_mean_abs_match_numpy(tmp_path: Path) -> None:
    model = ir.from_onnx_text(MODEL)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 7, 4)).astype(np.float32)
    mask = np.ones((5, 7), dtype=np.int64)
    mask[:, 5:] = 0  # padding
    mask[2, 3:] = 0
    path = save_feeds({"x": x, "attention_mask": mask}, tmp_path / "calib.npz")
    feeds = load_calibration(path, model)
    stats = collect_input_stats(model, feeds, ["h"], batch_size=2)["h"]
    rows = (x + np.array([1, -1, 2, 0], np.float32))[mask != 0]
    assert stats.count == len(rows) == mask.sum()
    np.testing.assert_allclose(stats.hessian, rows.T.astype(np.float64) @ rows, rtol=1e-5)
    np.testing.assert_allclose(stats.mean_abs, np.abs(rows).mean(axis=0), rtol=1e-5)
    limited = collect_input_stats(model, feeds, ["h"], max_samples=2)["h"]
    assert limited.count == mask[:2].sum()


def test_layer_error_is_the_output_error() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 6))
    w, w_hat = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))
    assert layer_error(w, w_hat, x.T @ x) == pytest.approx(np.sum((x @ w - x @ w_hat) ** 2))


def test_calibration_must_match_the_inputs(tmp_path: Path) -> None:
    model = ir.from_onnx_text(MODEL)
    path = save_feeds({"x": np.zeros((2, 3, 4), np.float32)}, tmp_path / "bad.npz")
    with pytest.raises(InputError, match="missing attention_mask"):
        load_calibration(path, model)
    with pytest.raises(InputError, match="no such file"):
        load_calibration(tmp_path / "none.npz", model)
