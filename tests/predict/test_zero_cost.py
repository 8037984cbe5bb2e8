"""Zero-cost predictor features (``zc``): the metrics on natural images, their disk cache, the CLI flag."""

from __future__ import annotations

import json

import numpy as np
import pytest

import graphopt.predict.zero_cost as zero_cost
from graphopt.cli import main
from graphopt.errors import InputError, UsageError
from graphopt.nas.spaces import get_space
from graphopt.nas.spaces.nb201 import NB201Space
from graphopt.predict import FeatureSpec, Featurizer, load_predictor, save_predictor, train_predictor
from graphopt.predict.zero_cost import ZC_METRICS, ZeroCostResult, ZeroCostSpec, zero_cost_features, zero_cost_transform
from tests.predict.conftest import write_mlp

TINY = NB201Space(channels=4, cells_per_stage=1)  # a few thousand parameters: metrics in milliseconds
SMALL = ZeroCostSpec(batch=8)
CONVS, SKIPS, NONE = (2, 2, 2, 2, 2, 2), (0, 0, 0, 0, 0, 0), (1, 1, 1, 1, 1, 1)


def test_metrics_on_a_real_cell_are_deterministic_and_see_the_architecture():
    convs = zero_cost_features(TINY.build(CONVS), SMALL)
    assert convs.values.shape == (len(ZC_METRICS),) and np.all(np.isfinite(convs.values)) and convs.seconds > 0
    np.testing.assert_array_equal(convs.values, zero_cost_features(TINY.build(CONVS), SMALL).values)
    skips = zero_cost_features(TINY.build(SKIPS), SMALL).values
    synflow, nwot = ZC_METRICS.index("synflow"), ZC_METRICS.index("nwot")
    assert convs.values[synflow] > skips[synflow] > 0  # synflow grows with the parameters on the path
    # a cell of "none" edges ignores its input: every image gets the same activation pattern
    assert zero_cost_features(TINY.build(NONE), SMALL).values[nwot] == -np.inf


def test_other_images_give_other_values():
    model = TINY.build(CONVS)
    a = zero_cost_features(model, SMALL).values
    b = zero_cost_features(model, ZeroCostSpec(batch=8, seed=1)).values
    assert not np.allclose(a, b)


def test_graphs_without_one_image_input_are_refused(tmp_path):
    from graphopt._io import load_model

    model = load_model(write_mlp(tmp_path / "m.onnx", [8]))
    with pytest.raises(InputError, match="one N x 3 x H x H image input"):
        zero_cost_features(model)
    with pytest.raises(InputError, match=r"m\.onnx: zero-cost features need"):
        Featurizer(FeatureSpec(("zc",))).models([tmp_path / "m.onnx"])


def test_transform_is_signed_log_and_finite():
    out = zero_cost_transform(np.array([0.0, np.e - 1, -(np.e - 1), np.inf, -np.inf, np.nan]))
    np.testing.assert_allclose(out, [0.0, 1.0, -1.0, 1e3, -1e3, 0.0])


@pytest.fixture
def stub(monkeypatch):
    """Replace the metrics by a cheap function of the graph (its node count), counting the calls."""
    calls: list[int] = []

    def fake(model, spec=None):
        calls.append(1)
        n = float(sum(1 for _ in model.graph.all_nodes()))
        return ZeroCostResult(np.array([n * 1e6, -n, np.inf]), 0.25)

    monkeypatch.setattr(zero_cost, "zero_cost_features", fake)
    return calls


def test_zc_group_is_appended_and_cached_per_architecture(tmp_path, stub):
    space = get_space("nb201")
    archs = ["(2, 0, 3, 1, 4, 2)", "(1, 1, 1, 1, 1, 1)"]
    first = Featurizer(FeatureSpec(("onehot", "zc"), "nb201"), cache_dir=tmp_path)
    X = first.archs(archs)
    assert X.shape == (2, 30 + 3) and len(stub) == 2
    np.testing.assert_array_equal(X[:, :30], [space.one_hot(space.parse(a)) for a in archs])
    assert X[0, 30] > X[1, 30] and np.all(X[:, 32] == 1e3)  # more nodes, larger value; inf made finite
    assert first.zero_cost_seconds == {a: 0.25 for a in archs}
    files = sorted((tmp_path / "zero_cost").glob("*.json"))
    assert sorted(json.loads(f.read_text())["arch"] for f in files) == sorted(archs)
    again = Featurizer(FeatureSpec(("zc",), "nb201"), cache_dir=tmp_path)
    np.testing.assert_array_equal(again.archs(archs), X[:, 30:])
    assert len(stub) == 2 and again.zero_cost_seconds[archs[0]] == 0.25  # read back, cost included
    assert not (tmp_path / "graphs").exists()  # zc alone builds no structural features
    files[0].write_text(json.dumps({"arch": "x", "values": [1.0], "seconds": 1.0}))  # stale entry: recomputed
    Featurizer(FeatureSpec(("zc",), "nb201"), cache_dir=tmp_path).archs(archs)
    assert len(stub) == 3


def test_spec_accepts_zc_and_rejects_unknown_groups():
    assert FeatureSpec(("onehot", "structural", "zc"), "nb201").graph_groups == ("structural", "zc")
    with pytest.raises(UsageError, match="zc"):
        FeatureSpec(("zero-cost",), "nb201")


def test_cli_features_zc_trains_and_reports_the_cost(tmp_path, stub, capsys):
    space = get_space("nb201")
    archs = space.sample(np.random.default_rng(3), 8)
    lines = ["arch,acc"] + [f'"{space.to_string(a)}",{k}' for k, a in enumerate(archs)]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "p.pred"
    code = main(["predictor", "train", "--space", "nb201", "--labels", str(tmp_path / "labels.csv"), "--target",
                 "acc", "--features", "onehot,zc", "--model", "ridge", "--members", "1", "--cache",
                 str(tmp_path / "cache"), "-o", str(out), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["features"] == ["onehot", "zc"] and summary["zero_cost_s_per_item"] == 0.25
    assert len(stub) == 8 and len(list((tmp_path / "cache" / "zero_cost").glob("*.json"))) == 8
    predictor = load_predictor(out)
    assert predictor.spec.groups == ("onehot", "zc") and predictor.info["zero_cost_s_per_item"] == 0.25
    assert predictor.info["zero_cost"] == ZeroCostSpec().key()
    assert predictor.score_archs([space.to_string(a) for a in archs[:2]]).mean.shape == (2,)
    code = main(["predictor", "train", "--space", "nb201", "--labels", str(tmp_path / "labels.csv"), "--target",
                 "acc", "--features", "onehot,zcx", "-o", str(tmp_path / "q.pred")])
    assert code == 2 and "zc" in capsys.readouterr().err and not (tmp_path / "q.pred").exists()


def test_scoring_refuses_zc_features_computed_another_way(tmp_path, stub):
    space = get_space("nb201")
    archs = [space.to_string(a) for a in space.sample(np.random.default_rng(4), 6)]
    predictor = train_predictor(archs, np.arange(6.0), spec=FeatureSpec(("onehot", "zc"), "nb201"), model="ridge",
                                members=1, cache_dir=tmp_path)
    path = save_predictor(predictor, tmp_path / "p.pred")
    loaded = load_predictor(path)
    assert loaded.score_archs(archs[:2]).mean.shape == (2,)
    stale = load_predictor(path)
    stale.info["zero_cost"] = "synflow|64|0|photos-v0"  # as if trained by a graphopt with other zc inputs
    with pytest.raises(UsageError, match="retrain"):
        stale.score_archs(archs[:2])
