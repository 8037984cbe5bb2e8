"""``prune-unstructured``: exact per-output sparsity, the N:M pattern, Wanda scores, the identity at 0."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.errors import UsageError
from graphopt.passes import create_pass
from graphopt.rewrites.prune import mask_weight
from tests.rewrites.prune._toy import toy_transformer, transformer_feeds


def _weights(model: ir.Model) -> dict[str, np.ndarray]:
    out = {}
    for node in model.graph:
        if node.op_type == "MatMul" and node.inputs[1] is not None and node.inputs[1].const_value is not None:
            out[node.name or ""] = node.inputs[1].const_value.numpy()
    return out


def test_mask_weight() -> None:
    scores = np.arange(24, dtype=np.float64).reshape(8, 3)
    keep = mask_weight(scores, 0.25, None)
    assert keep[:2].sum() == 0 and keep[2:].all()
    nm = mask_weight(np.random.default_rng(0).random((8, 3)), 0.0, (2, 4))
    assert (nm.reshape(2, 4, 3).sum(axis=1) == 2).all()


def test_unstructured_sparsity_per_output() -> None:
    model = toy_transformer()
    assert create_pass("prune-unstructured", {"sparsity": 0.5, "min_size": 1})(model).modified
    for name, weight in _weights(model).items():
        zeros = (weight == 0).sum(axis=0)
        assert (zeros == weight.shape[0] // 2).all(), name


def test_two_four_pattern_with_wanda(tmp_path) -> None:  # type: ignore[no-untyped-def]
    np.savez(tmp_path / "c.npz", x=transformer_feeds(batch=4)["x"])
    model = toy_transformer()
    pass_ = create_pass("prune-unstructured", {"pattern": "2:4", "importance": "wanda", "min_size": 1,
                                               "calibration": str(tmp_path / "c.npz")})
    assert pass_(model).modified
    for weight in _weights(model).values():
        groups = (weight != 0).reshape(weight.shape[0] // 4, 4, weight.shape[1])
        assert (groups.sum(axis=1) == 2).all()


def test_zero_sparsity_is_the_identity_and_bad_patterns_fail() -> None:
    model = toy_transformer()
    before = ir.to_proto(model).SerializeToString()
    assert not create_pass("prune-unstructured", {"sparsity": 0.0})(model).modified
    assert ir.to_proto(model).SerializeToString() == before
    with pytest.raises(UsageError, match="N:M"):
        create_pass("prune-unstructured", {"pattern": "4:2"})
