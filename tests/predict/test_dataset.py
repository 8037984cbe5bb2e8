"""Label CSVs and feature matrices of architectures and ONNX files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from graphopt.errors import InputError, UsageError
from graphopt.predict import FEATURE_NAMES, LIVE_FEATURE_NAMES, FeatureSpec, Featurizer, load_labels


def _csv(path, text):
    path.write_text(text)
    return path


def test_space_labels_are_parsed_to_canonical_strings(tmp_path):
    path = _csv(tmp_path / "l.csv", 'arch,acc\n"(2, 2, 0, 4, 2, 0)",91.5\n'
                "|nor_conv_3x3~0|+|skip_connect~0|none~1|+|skip_connect~0|none~1|none~2|,80\n"
                '"(1, 1, 1, 1, 1, 1)",\n')
    labels = load_labels(path, "acc", space="nb201")
    assert labels.items == ["(2, 2, 0, 4, 2, 0)", "(2, 0, 0, 1, 1, 1)"]  # empty target skipped
    np.testing.assert_array_equal(labels.targets, [91.5, 80.0])


def test_model_paths_are_relative_to_the_csv(tmp_path, mlp_zoo):
    paths, _ = mlp_zoo
    path = _csv(tmp_path / "l.csv", f"model,latency\n{paths[0].name},1.5\n{paths[1]},2\n")
    labels = load_labels(path, "latency")
    assert labels.items == [str(paths[0]), str(paths[1])]


@pytest.mark.parametrize(
    ("text", "space", "message"),
    [
        ("arch,acc\n", "nb201", "at least 2 rows"),
        ("net_str,acc\n(0,0,0,0,0,0),1\n", "nb201", "needs an 'arch' column"),
        ('arch,acc\n"(0, 0, 0, 0, 0, 0)",1\n', "nb201", None),
        ('arch,acc\n"(0, 0, 0, 0, 0, 0)",high\n"(0, 0, 0, 0, 0, 1)",2\n', "nb201", "row 2: acc is not a number"),
        ('arch,acc\n"(0, 0, 9, 0, 0, 0)",1\n"(0, 0, 0, 0, 0, 1)",2\n', "nb201", "row 2: .*six op indices"),
        ("model,acc\nmissing.onnx,1\nother.onnx,2\n", None, "row 2: .*missing.onnx: no such file"),
        ("arch,acc\nx,1\n", None, "needs a 'model' column"),
    ],
)
def test_bad_csvs(tmp_path, text, space, message):
    path = _csv(tmp_path / "l.csv", text)
    target = "acc"
    if message is None:  # a missing target column names the columns there are
        target, message = "cifar10", "no column 'cifar10'; columns are arch, acc"
    with pytest.raises(InputError, match=message):
        load_labels(path, target, space=space)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_labels(tmp_path / "none.csv", "acc", space="nb201")


def test_spec_validation():
    with pytest.raises(UsageError, match="feature groups"):
        FeatureSpec(("onehot", "flops"), "nb201")
    with pytest.raises(UsageError, match="need a search space"):
        FeatureSpec(("onehot",), None)
    spec = FeatureSpec(("onehot", "structural"), "nb201")
    assert spec.graph_only() == FeatureSpec(("structural",), "nb201")
    assert FeatureSpec(("onehot",), "nb201").graph_only() is None
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    old = {k: v for k, v in spec.to_dict().items() if k != "live"}  # a file written before live features
    assert FeatureSpec.from_dict(old).live is False


def test_cache_written_without_live_features_gains_them(tmp_path):
    cell = ["(2, 0, 3, 1, 4, 2)"]
    old = Featurizer(FeatureSpec(("structural",), "nb201", live=False), cache_dir=tmp_path).archs(cell)
    new = Featurizer(FeatureSpec(("structural",), "nb201"), cache_dir=tmp_path).archs(cell)
    np.testing.assert_array_equal(new[:, : old.shape[1]], old)
    assert new.shape[1] == old.shape[1] + len(LIVE_FEATURE_NAMES)
    [cached] = (tmp_path / "graphs").glob("*.json")
    assert len(json.loads(cached.read_text())["live"]) == len(LIVE_FEATURE_NAMES)


def test_arch_features_are_onehot_then_log_structural(feature_cache):
    featurizer = Featurizer(FeatureSpec(("onehot", "structural"), "nb201"), cache_dir=feature_cache)
    X = featurizer.archs(["(2, 2, 2, 2, 2, 2)", "(1, 1, 1, 1, 1, 1)"])
    assert X.shape == (2, 30 + len(FEATURE_NAMES) + len(LIVE_FEATURE_NAMES))
    np.testing.assert_array_equal(X[0, :30].reshape(6, 5).argmax(1), [2] * 6)
    params = X[:, 30 + FEATURE_NAMES.index("parameter_count")]
    assert params[0] > params[1] > 0  # six 3x3 convolutions per cell against none, on a log scale
    assert params[0] < 20  # log1p(1.1M)
    live = X[:, 30 + len(FEATURE_NAMES) + LIVE_FEATURE_NAMES.index("live_conv")]
    assert live[0] > 0 and live[1] == 0  # all-none cells: nothing depends on the input
    assert list((feature_cache / "graphs").glob("*.json"))


def test_cached_graph_features_are_reused(feature_cache, monkeypatch):
    spec = FeatureSpec(("structural",), "nb201")
    first = Featurizer(spec, cache_dir=feature_cache).archs(["(3, 0, 4, 2, 1, 0)"])
    again = Featurizer(spec, cache_dir=feature_cache)

    def no_build(*args, **kwargs):
        raise AssertionError("built again despite the cache")

    monkeypatch.setattr(again._space_obj, "build", no_build)
    np.testing.assert_array_equal(again.archs(["(3, 0, 4, 2, 1, 0)"]), first)


def test_model_features_and_their_limits(mlp_zoo):
    paths, _ = mlp_zoo
    X = Featurizer(FeatureSpec(("structural",))).models(paths[:3])
    assert X.shape == (3, len(FEATURE_NAMES) + len(LIVE_FEATURE_NAMES))
    assert Featurizer(FeatureSpec(("structural",), live=False)).models(paths[:1]).shape == (1, len(FEATURE_NAMES))
    with pytest.raises(UsageError, match="onehot features exist only"):
        Featurizer(FeatureSpec(("onehot",), "nb201")).models(paths[:1])
    with pytest.raises(UsageError, match="trained on ONNX files"):
        Featurizer(FeatureSpec(("structural",))).archs(["(0, 0, 0, 0, 0, 0)"])
