"""``prune-layers``: dropping a residual block equals the model built without it."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.errors import UsageError
from graphopt.passes import create_pass
from graphopt.prune import parameter_count
from graphopt.rewrites.prune import analyze, drop_layers
from graphopt.runtime import make_session
from tests.rewrites.prune._toy import toy_transformer, transformer_feeds


def test_dropping_the_last_layer_equals_the_shorter_model() -> None:
    model = toy_transformer(layers=2)
    assert drop_layers(model, [analyze(model).layers[1]])
    shorter = toy_transformer(layers=1)
    feeds = transformer_feeds()
    np.testing.assert_allclose(make_session(model).run(None, feeds)[0], make_session(shorter).run(None, feeds)[0],
                               rtol=1e-6, atol=1e-6)
    assert [o.name for o in model.graph.outputs] == ["y"]
    assert parameter_count(model) == parameter_count(shorter)


def test_dropping_the_first_layer_feeds_the_input_to_the_second() -> None:
    model = toy_transformer(layers=2)
    assert drop_layers(model, [analyze(model).layers[0]])
    assert not any((n.name or "").startswith("l0.") for n in model.graph)
    assert next(n for n in model.graph if n.name == "l1.q.matmul").inputs[0].name == "x"  # type: ignore[union-attr]


def test_pass_drops_the_least_important_layers() -> None:
    model = toy_transformer(layers=3)
    pass_ = create_pass("prune-layers", {"count": 2, "importance": "magnitude"})
    assert pass_(model).modified
    assert len(analyze(model).heads) == 1
    assert make_session(model).run(None, transformer_feeds())[0].shape == (3, 5, 16)
    assert not create_pass("prune-layers", {"count": 0})(model).modified
    with pytest.raises(UsageError, match="cannot drop 1 of 1 layers"):
        create_pass("prune-layers", {"count": 1, "importance": "magnitude"})(model)
