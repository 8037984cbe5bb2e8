"""``prune-heads``: removing heads equals zeroing their rows of W_o; shapes, parameters and MACs add up."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.analysis import summarize
from graphopt.errors import UsageError
from graphopt.passes import create_pass
from graphopt.provenance import read_provenance
from graphopt.rewrites.prune import analyze, prune_head_group
from graphopt.runtime import make_session
from tests.rewrites.prune._toy import toy_transformer, transformer_feeds


def _run(model: ir.Model) -> np.ndarray:
    return make_session(model).run(None, transformer_feeds())[0]


def _zero_heads(model: ir.Model, layer: int, heads: list[int], head_size: int = 4) -> None:
    weight = model.graph.initializers[f"l{layer}.o.w"]
    array = weight.const_value.numpy().copy()  # type: ignore[union-attr]
    for h in heads:
        array[h * head_size:(h + 1) * head_size] = 0
    weight.const_value = ir.tensor(array)


def test_pruned_heads_equal_zeroed_heads() -> None:
    model, reference = toy_transformer(), toy_transformer()
    analysis = analyze(model)
    assert prune_head_group(model, analysis.heads[0], [0, 2])
    assert prune_head_group(model, analysis.heads[1], [3])
    _zero_heads(reference, 0, [1, 3])
    _zero_heads(reference, 1, [0, 1, 2])
    np.testing.assert_allclose(_run(model), _run(reference), rtol=1e-5, atol=1e-5)


def test_pass_shrinks_parameters_and_macs_by_the_arithmetic() -> None:
    model, original = toy_transformer(), toy_transformer()
    result = create_pass("prune-heads", {"fraction": 0.5})(model)
    assert result.modified
    assert _run(model).shape == _run(original).shape
    width, removed, layers = 16, 8, 2  # 2 of 4 heads of size 4 per layer
    before, after = summarize(original, shapes={"x": (1, 8, 16)}), summarize(model, shapes={"x": (1, 8, 16)})
    # Q, K, V lose `removed` columns and bias entries, W_o loses `removed` rows.
    assert before.parameter_count - after.parameter_count == layers * (4 * width * removed + 3 * removed)
    # Per layer and token: projections 4 * width * removed, scores and context 2 * seq * removed.
    assert before.macs - after.macs == layers * 8 * (4 * width * removed + 2 * 8 * removed)
    assert [r["pass"] for r in read_provenance(model)] == ["prune-heads"]
    assert read_provenance(model)[0]["settings"]["fraction"] == 0.5
    # The explicit [0, 0, H, D] constant was rewritten for 2 heads, not the head size.
    shapes = [n.inputs[1].const_value.numpy().tolist() for n in model.graph  # type: ignore[union-attr]
              if n.op_type == "Reshape" and n.name == "l0.q.split"]
    assert shapes == [[0, 0, 2, 4]]


def test_fraction_zero_and_keeping_every_head_are_the_identity() -> None:
    model = toy_transformer()
    before = ir.to_proto(model).SerializeToString()
    assert not create_pass("prune-heads", {"fraction": 0.0})(model).modified
    assert not create_pass("prune-heads", {"fraction": 0.1})(model).modified  # rounds to 0 of 4 heads
    assert not prune_head_group(model, analyze(model).heads[0], [0, 1, 2, 3])
    assert ir.to_proto(model).SerializeToString() == before


def test_blocks_that_cannot_be_pruned_are_skipped_with_a_reason() -> None:
    model = toy_transformer(kv_output=True)
    pass_ = create_pass("prune-heads", {"fraction": 0.5})
    assert pass_(model).modified
    assert pass_.skipped == ["attention block 0: pruned tensor 'l0.kt' is a graph output (a KV cache?)"]  # type: ignore[attr-defined]
    assert model.graph.initializers["l0.q.w"].const_value.shape == (16, 16)  # type: ignore[union-attr]


def test_bad_settings() -> None:
    with pytest.raises(UsageError, match="fraction"):
        create_pass("prune-heads", {"fraction": 1.0})
    with pytest.raises(UsageError, match="unknown importance"):
        create_pass("prune-heads", {"fraction": 0.5, "importance": "taylor"})
    with pytest.raises(UsageError, match="not found"):
        create_pass("prune-heads", {"fraction": 0.5, "importance": "activation",
                                    "calibration": "/nonexistent/c.npz"})(toy_transformer())
