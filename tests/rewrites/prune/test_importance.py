"""Importance scores: activation statistics match a direct computation; methods are selectable."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.errors import UsageError
from graphopt.rewrites.prune import analyze
from graphopt.rewrites.prune._importance import head_scores, layer_scores, mlp_scores
from tests.rewrites.prune._toy import toy_transformer, transformer_feeds


def _activations(model, names):  # type: ignore[no-untyped-def]
    from graphopt.calibration import iter_activations

    batches = list(iter_activations(model, transformer_feeds(), names, batch_size=None))
    return {n: np.concatenate([b[n] for b in batches]) for n in names}


def test_activation_scores_match_a_direct_computation() -> None:
    model = toy_transformer()
    analysis = analyze(model)
    acts = _activations(model, ["l0.merged", "l0.act", "x", "l0.out"])
    heads = head_scores(model, analysis.heads, "activation", transformer_feeds(), 0)
    merged = acts["l0.merged"].reshape(-1, 4, 4)
    np.testing.assert_allclose(heads[0], np.linalg.norm(merged, axis=-1).mean(axis=0), rtol=1e-5)
    mlp = mlp_scores(model, analysis.mlps, "activation", transformer_feeds(), 0)
    np.testing.assert_allclose(mlp[0], np.abs(acts["l0.act"].reshape(-1, 32)).mean(axis=0), rtol=1e-5)
    layers = layer_scores(model, analysis.layers, analysis.heads, analysis.mlps, "activation", transformer_feeds(), 0)
    a, b = acts["x"].reshape(-1, 16), acts["l0.out"].reshape(-1, 16)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert layers[0] == pytest.approx(float((1 - cos).mean()), rel=1e-5)


def test_wanda_weights_activation_norms_by_the_output_projection() -> None:
    model = toy_transformer()
    analysis = analyze(model)
    acts = _activations(model, ["l1.act"])
    scores = mlp_scores(model, analysis.mlps, "wanda", transformer_feeds(), 0)
    down = analysis.mlps[1].down
    assert down is not None
    expected = np.abs(down.weight).sum(axis=1) * np.linalg.norm(acts["l1.act"].reshape(-1, 32), axis=0)
    np.testing.assert_allclose(scores[1], expected, rtol=1e-5)


def test_magnitude_and_random_need_no_data_and_differ() -> None:
    model = toy_transformer()
    analysis = analyze(model)
    magnitude = head_scores(model, analysis.heads, "magnitude", None, 0)
    group = analysis.heads[0]
    assert group.q is not None
    assert magnitude[0].shape == (4,) and np.all(magnitude[0] > 0)
    first = head_scores(model, analysis.heads, "random", None, 3)
    again = head_scores(model, analysis.heads, "random", None, 3)
    np.testing.assert_array_equal(first[0], again[0])
    assert not np.allclose(first[0], magnitude[0])


def test_data_driven_methods_need_calibration_data() -> None:
    model = toy_transformer()
    analysis = analyze(model)
    with pytest.raises(UsageError, match="needs calibration data"):
        head_scores(model, analysis.heads, "activation", None, 0)
    with pytest.raises(UsageError, match="not whole layers"):
        layer_scores(model, analysis.layers, analysis.heads, analysis.mlps, "wanda", transformer_feeds(), 0)
