"""``prune-key-channels`` (ThinK): removing Q/K channels equals zeroing them in W_q; V is untouched."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.errors import UsageError
from graphopt.passes import create_pass
from graphopt.rewrites.prune import analyze, prune_key_channels
from graphopt.rewrites.prune.think import key_channel_scores
from graphopt.runtime import make_session
from tests.rewrites.prune._toy import toy_transformer, transformer_feeds


def _run(model: ir.Model) -> np.ndarray:
    return make_session(model).run(None, transformer_feeds())[0]


def test_pruned_key_channels_equal_zeroed_query_channels() -> None:
    model, reference = toy_transformer(layers=1), toy_transformer(layers=1)
    keep = np.array([[0, 1], [2, 3], [0, 3], [1, 2]])  # per head, 2 of 4 channels
    assert prune_key_channels(model, analyze(model).heads[0], keep)
    dropped = [h * 4 + c for h in range(4) for c in range(4) if c not in keep[h]]
    for name in ("l0.q.w", "l0.q.b"):
        array = reference.graph.initializers[name].const_value.numpy().copy()  # type: ignore[union-attr]
        array[..., dropped] = 0
        reference.graph.initializers[name].const_value = ir.tensor(array)
    np.testing.assert_allclose(_run(model), _run(reference), rtol=1e-5, atol=1e-5)
    weights = {n.name: n.inputs[1].const_value.shape for n in model.graph  # type: ignore[union-attr]
               if n.op_type == "MatMul" and n.inputs[1] is not None and n.inputs[1].const_value is not None}
    assert weights["l0.q.matmul"] == (16, 8) and weights["l0.k.matmul"] == (16, 8)
    assert weights["l0.v.matmul"] == (16, 16) and weights["l0.o.matmul"] == (16, 16)


def test_think_scores_are_mean_q_squared_times_mean_k_squared() -> None:
    model = toy_transformer(layers=1)
    group = analyze(model).heads[0]
    scores = key_channel_scores(model, [group], "activation", transformer_feeds())
    from graphopt.calibration import iter_activations

    acts = next(iter(iter_activations(model, transformer_feeds(), ["l0.q", "l0.k"], batch_size=None)))
    q, k = (np.square(acts[n].reshape(-1, 16)).mean(axis=0).reshape(4, 4) for n in ("l0.q", "l0.k"))
    np.testing.assert_allclose(scores[0], q * k, rtol=1e-5)


def test_pass_identity_and_settings() -> None:
    model = toy_transformer()
    before = ir.to_proto(model).SerializeToString()
    assert not create_pass("prune-key-channels", {"fraction": 0.0})(model).modified
    assert ir.to_proto(model).SerializeToString() == before
    assert create_pass("prune-key-channels", {"fraction": 0.5})(model).modified
    assert _run(model).shape == (3, 5, 16)
    with pytest.raises(UsageError, match="activation \\(ThinK\\) or magnitude"):
        create_pass("prune-key-channels", {"fraction": 0.5, "importance": "random"})(model)
