"""Pairwise-loss boosting (``rankgbm``) and the ``ens`` ensemble: gradients, invariances, round trips."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.predict import FeatureSpec, create_model, kendall_tau, load_predictor, save_predictor
from graphopt.predict.predictor import Predictor
from graphopt.predict.rankboost import EnsembleModel, RankBoostModel, _pairwise_newton


def _loss(scores: np.ndarray, y: np.ndarray) -> float:
    gap = y[:, None] - y[None, :]
    weight = np.where(gap > 0, gap, 0.0)
    weight /= weight[weight > 0].mean()
    return float((weight * np.logaddexp(0.0, -(scores[:, None] - scores[None, :]))).sum())


def test_newton_terms_are_the_loss_derivatives():
    rng = np.random.default_rng(0)
    y = rng.normal(size=7)
    y[3] = y[5]  # a tie: no pair, no gradient between them
    scores = rng.normal(size=7)
    grad, hess = _pairwise_newton(scores, y)
    here = _loss(scores, y)
    for i in range(7):
        step = np.zeros(7)
        step[i] = 1e-6
        assert -grad[i] == pytest.approx((_loss(scores + step, y) - _loss(scores - step, y)) / 2e-6, rel=1e-5)
        step[i] = 1e-3
        curvature = (_loss(scores + step, y) - 2 * here + _loss(scores - step, y)) / 1e-6
        assert hess[i] == pytest.approx(curvature, rel=1e-4)


def test_equal_targets_give_no_gradient():
    grad, hess = _pairwise_newton(np.arange(4.0), np.ones(4))
    assert not grad.any() and not hess.any()


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    return X, np.exp(X[:, 0]) + 0.5 * (X[:, 1] > 0) + 0.02 * rng.normal(size=n)


def test_ranking_ignores_the_targets_scale_but_scores_carry_their_units():
    X, y = _data(80, 0)
    Xt, _ = _data(50, 1)
    a = RankBoostModel(members=2, seed=4, rounds=20).fit(X, y)
    b = RankBoostModel(members=2, seed=4, rounds=20).fit(X, 4 * y)  # a power of two: exact in floating point
    raw_a = np.stack([a._raw(t, Xt) for t in a.trees])
    raw_b = np.stack([b._raw(t, Xt) for t in b.trees])
    np.testing.assert_allclose(raw_a, raw_b, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(b.predict(Xt)[0], 4 * a.predict(Xt)[0], rtol=1e-9)
    assert a.predict(X)[0].mean() == pytest.approx(y.mean())  # least-squares lines keep the mean


def test_subsampled_rounds_are_reproducible_and_still_rank():
    X, y = _data(300, 2)
    Xt, yt = _data(200, 3)
    first = RankBoostModel(members=2, seed=1, rounds=60, batch=64).fit(X, y).predict(Xt)[0]
    again = RankBoostModel(members=2, seed=1, rounds=60, batch=64).fit(X, y).predict(Xt)[0]
    np.testing.assert_array_equal(first, again)
    assert kendall_tau(first, yt) > 0.7
    other = RankBoostModel(members=2, seed=2, rounds=60, batch=64).fit(X, y).predict(Xt)[0]
    assert not np.array_equal(first, other)


def test_ens_pools_three_learners_and_survives_the_predictor_file(tmp_path):
    X, y = _data(60, 4)
    assert isinstance(create_model("ens"), EnsembleModel)
    model = EnsembleModel(members=2, seed=0, epochs=30, rounds=30).fit(X, y)
    assert [p.kind for p in model.parts] == ["gbm", "mlp", "rankgbm"]
    assert model.member_predictions(X).shape == (6, 60)
    predictor = Predictor(FeatureSpec(("structural",)), {"graph": model})
    again = load_predictor(save_predictor(predictor, tmp_path / "ens.pred"))
    np.testing.assert_allclose(again.heads["graph"].predict(X)[0], model.predict(X)[0])
    assert again.heads["graph"].kind == "ens"


def test_cli_offers_every_model_and_trains_rankgbm(tmp_path, capsys):
    import json

    from graphopt.cli import _predictor, main
    from graphopt.nas.spaces import get_space
    from graphopt.predict import MODEL_KINDS

    assert _predictor._MODELS == MODEL_KINDS
    space = get_space("nb201")
    archs = space.sample(np.random.default_rng(5), 40)
    convs = [sum(3 if o == 2 else 1 if o == 3 else 0 for o in a) + 0.01 * (k % 7) for k, a in enumerate(archs)]
    labels = tmp_path / "labels.csv"
    labels.write_text("arch,convs\n" + "".join(f'"{space.to_string(a)}",{c}\n' for a, c in zip(archs, convs)))
    out = tmp_path / "p.pred"
    code = main(["predictor", "train", "--space", "nb201", "--labels", str(labels), "--target", "convs",
                 "--features", "onehot", "--train-size", "30", "--model", "rankgbm", "--members", "2",
                 "--holdout", "10", "-o", str(out), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"] == "rankgbm" and summary["holdout"]["kendall_tau"] > 0.5
    assert load_predictor(out).heads["arch"].kind == "rankgbm"
