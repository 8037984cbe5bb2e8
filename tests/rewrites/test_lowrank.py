"""LQ-LoRA's decomposition (``_lowrank``): randomized SVD and alternating quantization."""

from __future__ import annotations

import numpy as np

from graphopt.rewrites._blockwise import dequantize_blockwise, quantize_blockwise
from graphopt.rewrites._lowrank import lq_decompose, randomized_svd


def _fake_quantize(w: np.ndarray) -> np.ndarray:
    return dequantize_blockwise(*quantize_blockwise(w, 2, 32, False), 32)


def test_randomized_svd_recovers_a_low_rank_matrix() -> None:
    rng = np.random.default_rng(0)
    m = rng.standard_normal((80, 6)) @ rng.standard_normal((6, 50))
    u, s, vt = randomized_svd(m, 6)
    assert u.shape == (80, 6) and s.shape == (6,) and vt.shape == (6, 50)
    np.testing.assert_allclose((u * s) @ vt, m, atol=1e-8 * np.abs(m).max())
    np.testing.assert_allclose(s, np.linalg.svd(m, compute_uv=False)[:6], rtol=1e-8)


def test_alternation_beats_plain_quantization() -> None:
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((96, 4)) @ rng.standard_normal((4, 64)) * 3 + rng.standard_normal((96, 64)) * 0.1)
    l1, l2, errors = lq_decompose(w.astype(np.float32), 4, _fake_quantize, iterations=6)
    assert l1.shape == (96, 4) and l2.shape == (4, 64)
    assert errors[0] == np.linalg.norm(w - _fake_quantize(w.astype(np.float32))) or np.isclose(
        errors[0], np.linalg.norm(w - _fake_quantize(w.astype(np.float32))), rtol=1e-5)
    assert min(errors) < 0.5 * errors[0]  # the low-rank part absorbs what 2 bits cannot hold
    residual = w - l1 @ l2
    np.testing.assert_allclose(np.linalg.norm(w - _fake_quantize(residual.astype(np.float32)) - l1 @ l2),
                               min(errors), rtol=1e-4)


def test_row_weights_favour_important_rows() -> None:
    rng = np.random.default_rng(2)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    weight = np.ones(64)
    weight[:8] = 100.0
    l1, l2, _ = lq_decompose(w, 8, _fake_quantize, iterations=4, row_weight=weight)
    l1u, l2u, _ = lq_decompose(w, 8, _fake_quantize, iterations=4)

    def row_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        low = a @ b
        return np.linalg.norm(w - _fake_quantize((w - low).astype(np.float32)) - low, axis=1)

    assert row_error(l1, l2)[:8].sum() < row_error(l1u, l2u)[:8].sum()
