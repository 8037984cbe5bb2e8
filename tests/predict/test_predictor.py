"""Training, scoring (architectures and ONNX files, zero-shot) and the predictor file."""

from __future__ import annotations

import csv
import json
import zipfile

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.errors import InputError, UsageError
from graphopt.nas.spaces import get_space
from graphopt.predict import (
    FeatureSpec,
    kendall_tau,
    load_labels,
    load_predictor,
    save_predictor,
    spearman,
    train_predictor,
)

from .conftest import DATA

SPACE = get_space("nb201")


def _convs(arch: str) -> float:
    """A target only the graph knows: 3x3 convs count 3, 1x1 convs 1."""
    ops = SPACE.parse(arch)
    return float(sum(3 if o == 2 else 1 if o == 3 else 0 for o in ops))


@pytest.fixture(scope="module")
def archs() -> list[str]:
    return [SPACE.to_string(a) for a in SPACE.sample(np.random.default_rng(7), 30)]


def test_space_predictor_ranks_held_out_archs_and_scores_onnx_zero_shot(archs, feature_cache, tmp_path):
    y = np.array([_convs(a) for a in archs])
    predictor = train_predictor(archs[:20], y[:20], spec=FeatureSpec(("onehot", "structural"), "nb201"),
                                model="ridge", members=3, cache_dir=feature_cache)
    assert set(predictor.heads) == {"arch", "graph"}
    scores = predictor.score_archs(archs[20:])
    assert kendall_tau(scores.mean, y[20:]) > 0.8
    assert (scores.std > 0).any()
    # the graph-level head scores ONNX files built from the same cells
    paths = []
    for k, arch in enumerate(archs[20:25]):
        paths.append(tmp_path / f"{k}.onnx")
        ir.save(SPACE.build(SPACE.parse(arch)), paths[-1])
    onnx_scores = predictor.score_models(paths)
    assert kendall_tau(onnx_scores.mean, y[20:25]) > 0.5
    # saved and loaded: same scores
    path = save_predictor(predictor, tmp_path / "p.pred")
    again = load_predictor(path, cache_dir=feature_cache)
    np.testing.assert_allclose(again.score_archs(archs[20:]).mean, scores.mean)
    assert again.info["train_size"] == 20


def test_onehot_only_predictor_cannot_score_onnx(archs, mlp_zoo):
    predictor = train_predictor(archs[:10], np.arange(10.0), spec=FeatureSpec(("onehot",), "nb201"),
                                model="ridge", members=2)
    assert set(predictor.heads) == {"arch"}
    with pytest.raises(UsageError, match="score architectures with --space nb201"):
        predictor.score_models(mlp_zoo[0][:1])


def test_onnx_predictor_learns_parameter_counts(mlp_zoo, tmp_path):
    paths, y = mlp_zoo
    predictor = train_predictor(paths[:8], y[:8], spec=FeatureSpec(("structural",)), model="ridge", members=2)
    assert set(predictor.heads) == {"graph"}
    assert spearman(predictor.score_models(paths[8:]).mean, y[8:]) > 0.7
    with pytest.raises(UsageError, match="search space"):
        predictor.score_archs(["(0, 0, 0, 0, 0, 0)"])
    # and, through the graphs a space builds, architectures of any space
    assert predictor.score_archs(["(2, 2, 2, 2, 2, 2)"], space="nb201").mean.shape == (1,)


def test_loading_refuses_foreign_and_future_files(archs, tmp_path):
    predictor = train_predictor(archs[:10], np.arange(10.0), spec=FeatureSpec(("onehot",), "nb201"),
                                model="ridge", members=2)
    path = save_predictor(predictor, tmp_path / "p.pred")
    future = tmp_path / "future.pred"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(future, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "meta.json":
                meta = json.loads(data)
                meta["version"] = 99
                data = json.dumps(meta).encode()
            dst.writestr(name, data)
    with pytest.raises(InputError, match="version 99 is not supported"):
        load_predictor(future)
    (tmp_path / "junk.pred").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable graphopt predictor"):
        load_predictor(tmp_path / "junk.pred")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("meta.json", json.dumps({"format": "something-else"}))
    with pytest.raises(InputError, match="not a graphopt predictor file"):
        load_predictor(tmp_path / "other.zip")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["future.pred", "junk.pred", "other.zip", "p.pred"]


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "nb201_val_acc.csv").is_file(), reason="NAS-Bench data not present")
def test_real_nb201_accuracy_is_ranked_on_held_out_cells(feature_cache, tmp_path):
    """40 training cells, 30 held-out ones, real CIFAR-10 labels: better than chance by a margin."""
    rows = list(csv.DictReader((DATA / "nb201_val_acc.csv").open()))
    pick = np.random.default_rng(3).permutation(len(rows))[:70]
    sub = tmp_path / "sub.csv"
    with sub.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[i] for i in pick)
    labels = load_labels(sub, "cifar10_valid", space="nb201")
    predictor = train_predictor(labels.items[:40], labels.targets[:40], spec=FeatureSpec(("onehot", "structural"),
                                "nb201"), model="gbm", members=2, cache_dir=feature_cache)
    tau = kendall_tau(predictor.score_archs(labels.items[40:]).mean, labels.targets[40:])
    assert tau > 0.35
