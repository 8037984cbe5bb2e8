"""``prune-channels``: removing conv output channels equals zeroing their filters (ReLU keeps 0 at 0)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt.passes import create_pass
from graphopt.prune import parameter_count
from graphopt.rewrites.prune import channel_groups, prune_channel_group
from graphopt.runtime import make_session
from tests.rewrites.prune._toy import toy_cnn

FEEDS = {"x": np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)}


def _run(model: ir.Model) -> np.ndarray:
    return make_session(model).run(None, FEEDS)[0]


def test_pruned_channels_equal_zeroed_filters() -> None:
    model, reference = toy_cnn(), toy_cnn()
    keep = [0, 3, 4]
    assert prune_channel_group(model, channel_groups(model)[0], keep)
    for name in ("c1.w", "c1.b"):
        array = reference.graph.initializers[name].const_value.numpy().copy()  # type: ignore[union-attr]
        array[[i for i in range(8) if i not in keep]] = 0
        reference.graph.initializers[name].const_value = ir.tensor(array)
    np.testing.assert_allclose(_run(model), _run(reference), rtol=1e-5, atol=1e-6)


def test_pass_prunes_every_conv_and_the_classifier_rows() -> None:
    model = toy_cnn()
    assert create_pass("prune-channels", {"fraction": 0.5})(model).modified
    # conv1 4x3x3x3+4, conv2 4x4x3x3+4, fc 5x4+5
    assert parameter_count(model) == 112 + 148 + 25
    assert _run(model).shape == (4, 5)
    same = toy_cnn()
    assert not create_pass("prune-channels", {"fraction": 0.0})(same).modified


def test_a_residual_add_blocks_the_group() -> None:
    model = toy_cnn()
    graph = model.graph
    relu2 = next(n for n in graph if n.name == "relu2")
    pool = next(n for n in graph if n.name == "pool1")
    add = ir.node("Add", [relu2.outputs[0], pool.outputs[0]], name="residual")
    graph.insert_after(relu2, add)
    gap = next(n for n in graph if n.name == "gap")
    gap.replace_input_with(0, add.outputs[0])
    reasons = {g.conv.name: g.reason for g in channel_groups(model)}
    assert reasons["conv2"] is not None and "residual" in reasons["conv2"]
    assert reasons["conv1"] is not None and "residual" in reasons["conv1"]


def test_reduce_mean_without_keepdims_feeds_the_classifier() -> None:
    model = toy_cnn()
    graph = model.graph
    gap, flatten = (next(n for n in graph if n.name == name) for name in ("gap", "flatten"))
    axes = ir.Value(name="axes", const_value=ir.tensor(np.array([2, 3], dtype=np.int64)))
    graph.register_initializer(axes)
    mean = ir.node("ReduceMean", [gap.inputs[0], axes], attributes={"keepdims": 0}, name="mean")
    graph.insert_before(gap, mean)
    ir.convenience.replace_all_uses_with(flatten.outputs[0], mean.outputs[0])
    graph.remove([flatten, gap], safe=True)
    reference = _run(model)
    assert [g.reason for g in channel_groups(model)] == [None, None]
    assert not create_pass("prune-channels", {"fraction": 0.0})(model).modified
    np.testing.assert_array_equal(_run(model), reference)
    assert create_pass("prune-channels", {"fraction": 0.25})(model).modified
    assert _run(model).shape == (4, 5)


def test_activation_scores_read_what_the_next_layer_reads() -> None:
    from graphopt.calibration import iter_activations
    from graphopt.rewrites.prune.channels import channel_scores

    model = toy_cnn()
    groups = channel_groups(model)
    assert [g.activation.name for g in groups] == ["p1", "f"]  # type: ignore[union-attr]
    scores = channel_scores(model, groups, "activation", FEEDS, 0)
    acts = next(iter(iter_activations(model, FEEDS, ["p1"], batch_size=None)))["p1"].astype(np.float64)
    reader = model.graph.initializers["c2.w"].const_value.numpy().astype(np.float64)  # type: ignore[union-attr]
    expected = acts.var(axis=(0, 2, 3)) * np.square(reader).sum(axis=(0, 2, 3))  # Var(y_c) * ||W'_{:,c}||^2
    np.testing.assert_allclose(scores[0], expected, rtol=1e-5)



def test_multiple_of_rounds_the_kept_channels() -> None:
    import pytest

    from graphopt.errors import UsageError
    from graphopt.rewrites.prune._base import PruneSettings, kept_units

    def kept(units: int, fraction: float, step: int) -> int:
        return kept_units(units, PruneSettings(fraction=fraction, multiple_of=step))

    assert [kept(64, 0.25, 1), kept(64, 0.25, 16), kept(64, 0.3, 16), kept(24, 0.5, 8)] == [48, 48, 48, 16]
    assert kept(12, 0.5, 16) == 12  # fewer units than one multiple: the block is left whole
    assert kept(64, 0.9, 16) == 16  # never below one multiple
    model = toy_cnn()  # two convs of 8 channels: 40% removed keeps 5, rounded to a multiple of 4 keeps 4
    assert create_pass("prune-channels", {"fraction": 0.4, "multiple_of": 4})(model).modified
    widths = [g.conv.inputs[1].const_value.shape[0] for g in channel_groups(model)]  # type: ignore[union-attr]
    assert widths == [4, 4]
    assert _run(model).shape == (4, 5)
    with pytest.raises(UsageError, match="multiple_of"):
        PruneSettings(fraction=0.5, multiple_of=0).validate()
