"""``prune-mlp``: removing neurons equals zeroing their rows of W_down; parameters and MACs add up."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt.analysis import summarize
from graphopt.passes import create_pass
from graphopt.rewrites.prune import analyze, prune_mlp_group
from graphopt.runtime import make_session
from tests.rewrites.prune._toy import toy_transformer, transformer_feeds


def _run(model: ir.Model) -> np.ndarray:
    return make_session(model).run(None, transformer_feeds())[0]


def test_pruned_neurons_equal_zeroed_neurons() -> None:
    model, reference = toy_transformer(), toy_transformer()
    keep = [1, 4, 5, 9, 30]
    assert prune_mlp_group(model, analyze(model).mlps[1], keep)
    weight = reference.graph.initializers["l1.down.w"]
    array = weight.const_value.numpy().copy()  # type: ignore[union-attr]
    array[[i for i in range(32) if i not in keep]] = 0
    weight.const_value = ir.tensor(array)
    np.testing.assert_allclose(_run(model), _run(reference), rtol=1e-5, atol=1e-5)


def test_activation_importance_with_calibration_feeds(tmp_path) -> None:  # type: ignore[no-untyped-def]
    np.savez(tmp_path / "calib.npz", x=transformer_feeds(batch=6)["x"])
    model, original = toy_transformer(), toy_transformer()
    pass_ = create_pass("prune-mlp", {"fraction": 0.25, "importance": "activation",
                                      "calibration": str(tmp_path / "calib.npz")})
    assert pass_(model).modified
    removed, width = 8, 16
    before, after = summarize(original, shapes={"x": (1, 8, 16)}), summarize(model, shapes={"x": (1, 8, 16)})
    assert before.parameter_count - after.parameter_count == 2 * removed * (2 * width + 1)
    assert before.macs - after.macs == 2 * 8 * 2 * width * removed
    assert _run(model).shape == (3, 5, 16)


def test_fraction_zero_is_the_identity() -> None:
    model = toy_transformer()
    before = ir.to_proto(model).SerializeToString()
    assert not create_pass("prune-mlp", {"fraction": 0.0})(model).modified
    assert ir.to_proto(model).SerializeToString() == before
