"""Ensemble regressors: they learn a ranking, report spread, and rebuild from their state."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.errors import UsageError
from graphopt.predict import MODEL_KINDS, create_model, kendall_tau
from graphopt.predict.models import model_from_state


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    y = 2 * X[:, 0] + np.tanh(X[:, 1]) + 0.05 * rng.normal(size=n)
    return X, y


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_learns_a_ranking_and_reports_spread(kind):
    X, y = _data(120)
    Xt, yt = _data(200, seed=1)
    model = create_model(kind, members=3, seed=0, epochs=100).fit(X, y)
    mean, std = model.predict(Xt)
    assert mean.shape == std.shape == (200,)
    assert kendall_tau(mean, yt) > 0.6
    assert (std >= 0).all() and std.mean() > 0
    # in the target's units, not an arbitrary scale
    assert abs(np.median(mean) - np.median(yt)) < 1.0


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_state_round_trip_predicts_the_same(kind):
    X, y = _data(60)
    model = create_model(kind, members=2, seed=3, epochs=20).fit(X, y)
    again = model_from_state(kind, model.state(), members=2, seed=3)
    np.testing.assert_allclose(again.predict(X)[0], model.predict(X)[0])


def test_mlp_is_reproducible_from_its_seed():
    X, y = _data(40)
    a = create_model("mlp", members=2, seed=5, epochs=20).fit(X, y).predict(X)[0]
    b = create_model("mlp", members=2, seed=5, epochs=20).fit(X, y).predict(X)[0]
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: create_model("svm"), "unknown predictor model"),
        (lambda: create_model("gbm", members=0), "at least one member"),
        (lambda: create_model("ridge").fit(np.ones((1, 2)), np.ones(1)), "at least 2"),
        (lambda: create_model("ridge").fit(np.ones((3, 2)), np.ones(2)), "features must be"),
        (lambda: create_model("ridge").fit(np.array([[1.0], [np.nan]]), np.ones(2)), "finite"),
    ],
)
def test_bad_use_is_a_usage_error(call, message):
    with pytest.raises(UsageError, match=message):
        call()
