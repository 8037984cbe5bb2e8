"""Objectives of the sub-network space: latency, predictor, training-free metric, evaluation set, user function."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.errors import InputError, UsageError
from graphopt.feeds import input_specs, synthesize_feeds
from graphopt.nas.objectives import parse_objective, save_eval_set
from graphopt.nas.spaces.bert import BertSpace
from graphopt.nas.spaces.subnet import SubnetSpace
from graphopt.runtime import make_session


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> SubnetSpace:
    path = tmp_path_factory.mktemp("objectives") / "bert.onnx"
    ir.save(BertSpace(vocab_size=100, max_positions=64).build((2, 4, 32, 64), seed=3), path)
    return SubnetSpace(path)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> SubnetSpace:
    from tests.rewrites.prune._toy import toy_cnn

    path = tmp_path_factory.mktemp("objectives") / "cnn.onnx"
    ir.save(toy_cnn(), path)
    return SubnetSpace(path)


def _eval_set(space: SubnetSpace, path: Path, **kwargs: object) -> Path:
    source = ir.load(space.model_path)
    inputs = synthesize_feeds(input_specs(source), batch=24, sequence=8, seed=7)
    if kwargs.pop("labels", False):
        kwargs["labels"] = make_session(source).run(None, inputs)[0].argmax(axis=-1)
    return save_eval_set(path, inputs, **kwargs)  # type: ignore[arg-type]


def test_eval_cosine_and_mse_against_the_source_outputs(bert: SubnetSpace, tmp_path: Path) -> None:
    data = _eval_set(bert, tmp_path / "ref.npz", reference=bert.model_path)
    cosine, mse = parse_objective(bert, f"eval:{data}"), parse_objective(bert, f"eval:{data}:mse")
    assert (cosine.name, cosine.maximize, mse.name, mse.maximize) == ("eval_cosine", True, "eval_mse", False)
    whole, small = bert.uniform(), bert.uniform(layers=1, heads=0.25, mlp=0.25)
    assert cosine.fn(whole) == pytest.approx(1.0, abs=1e-6) and mse.fn(whole) == pytest.approx(0.0, abs=1e-9)
    assert cosine.fn(small) < 0.99 and mse.fn(small) > 1e-4
    # the same number by hand: mean per-sample cosine of the flattened outputs
    arrays = np.load(data)
    out = make_session(bert.build(small)).run(None, {k: arrays[k] for k in ("input_ids", "attention_mask")})[0]
    output = str(ir.load(bert.model_path).graph.outputs[0].name)
    a, b = out.reshape(24, -1), arrays[output].reshape(24, -1)
    expected = np.mean(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
    assert cosine.fn(small) == pytest.approx(expected, rel=1e-5)


def test_eval_accuracy_with_labels(cnn: SubnetSpace, tmp_path: Path) -> None:
    data = _eval_set(cnn, tmp_path / "labels.npz", labels=True)
    accuracy = parse_objective(cnn, f"eval:{data}")
    assert accuracy.name == "eval_accuracy" and accuracy.maximize
    assert accuracy.fn(cnn.uniform()) == 1.0  # labels are the whole network's own predictions
    assert 0.0 <= accuracy.fn(cnn.decode((0, 0))) < 1.0


def test_latency_is_measured_by_the_bench_worker(bert: SubnetSpace) -> None:
    latency = parse_objective(bert, "latency:batch=2,sequence=16,repeats=3,warmup=1")
    assert latency.name == "latency_ms" and not latency.maximize
    value = latency.fn(bert.uniform(layers=1))
    assert np.isfinite(value) and value > 0


def test_metric_is_the_training_free_score_of_the_built_graph(bert: SubnetSpace) -> None:
    from graphopt.nas.metrics import score_model

    arch = bert.uniform(layers=1, heads=0.5)
    params = parse_objective(bert, "metric:params")
    assert params.maximize and not parse_objective(bert, "metric:params:min").maximize
    assert params.fn(arch) == score_model(bert.build(arch), "params") < params.fn(bert.uniform())


def test_predictor_scores_the_built_graph(bert: SubnetSpace, tmp_path: Path) -> None:
    from graphopt.predict import FeatureSpec, save_predictor, train_predictor

    archs = bert.sample(np.random.default_rng(0), 6)
    models = [bert.build(a) for a in archs]
    predictor = train_predictor(models, [float(i) for i in range(6)], spec=FeatureSpec(("structural",)),
                                model="ridge", members=2)
    path = save_predictor(predictor, tmp_path / "pred.zip")
    predicted = parse_objective(bert, f"predictor:{path}")
    assert predicted.name == "predictor:pred" and not predicted.maximize
    assert predicted.fn(archs[2]) == pytest.approx(float(predictor.score_models([models[2]]).mean[0]))
    copy = pickle.loads(pickle.dumps(predicted))  # a worker loads the file again
    assert copy.fn._cache is None and copy.fn(archs[2]) == predicted.fn(archs[2])  # type: ignore[attr-defined]


def test_user_function_gets_the_built_graph_file(bert: SubnetSpace, tmp_path: Path) -> None:
    arch = bert.uniform(layers=1, heads=0.5)
    module = tmp_path / "user_objective.py"
    module.write_text("import os\n\ndef kib(path):\n    return os.path.getsize(path) / 1024\n")
    size = parse_objective(bert, f"py:{module}:kib:min")
    assert size.name == "kib" and not size.maximize
    assert 0 < size.fn(arch) < size.fn(bert.uniform())


def test_objectives_pickle_and_give_the_same_values(bert: SubnetSpace, tmp_path: Path) -> None:
    data = _eval_set(bert, tmp_path / "ref.npz", reference=bert.model_path)
    module = tmp_path / "user_objective.py"
    module.write_text("def one(path):\n    return 1.0\n")
    arch = bert.uniform(layers=1, mlp=0.5)
    for text in (f"eval:{data}", "metric:params", f"py:{module}:one", "macs"):
        objective = parse_objective(bert, text)
        copy = pickle.loads(pickle.dumps(objective))
        assert copy.fn(arch) == objective.fn(arch), text
    assert len(pickle.dumps(parse_objective(bert, f"eval:{data}"))) < 4000  # data stays out of the pickle


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ("latency:batch=0", UsageError, "must be positive"),
        ("latency:bogus=1", UsageError, "bad latency option"),
        ("latency:batch=two", UsageError, "integer"),
        ("metric:nonsense", UsageError, "unknown metric"),
        ("predictor:/no/such.zip", InputError, "no such file"),
        ("eval:/no/such.npz", InputError, "no such file"),
        ("py:no_such_module_here:f", UsageError, "No module named"),
        ("py:graphopt.errors:nothing", UsageError, "no function 'nothing'"),
        ("py:onlyone", UsageError, "bad objective"),
        ("flops", UsageError, "bad objective"),
    ],
)
def test_bad_objectives(bert: SubnetSpace, text: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        parse_objective(bert, text)


def test_eval_set_needs_labels_or_references(bert: SubnetSpace, tmp_path: Path) -> None:
    inputs = synthesize_feeds(input_specs(ir.load(bert.model_path)), batch=4, sequence=8, seed=0)
    only_inputs = save_eval_set(tmp_path / "inputs.npz", inputs)
    with pytest.raises(InputError, match="needs a 'labels' array"):
        parse_objective(bert, f"eval:{only_inputs}:accuracy")
    objective = parse_objective(bert, f"eval:{only_inputs}")  # cosine: the keys are checked on the graph
    with pytest.raises(InputError, match="no reference array"):
        objective.fn(bert.uniform())
