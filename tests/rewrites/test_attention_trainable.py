"""clipped-softmax with trainable gamma/zeta initializers (per layer, per head): markers, identity exact
in onnxruntime, the per-head algebra against numpy, and the reasons it refuses to fire."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnxscript.rewriter._basics import MatchingTracer

from graphopt.errors import UsageError
from graphopt.passes import create_pass
from graphopt.rewrites._markers import CLIP_PREFIX, INSERTED_BY_KEY, is_clip, is_trainable
from graphopt.rewrites.attention import _value_shapes, clipped_softmax_rule, value_dtypes
from tests.conftest import op_types
from tests.rewrites.test_attention import ATTENTION, _capture, _exact, _feeds, _run

STATIC = ATTENTION.replace("float[N, S, 8] x, float[N, 1, 1, S] mask", "float[N, 5, 8] x, float[N, 1, 1, 5] mask")


def _values(model, name):
    return model.graph.initializers[name].const_value.numpy()


@pytest.mark.parametrize(("parameters", "shape"), [("layer", ()), ("head", (2, 1, 1))])
def test_trainable_identity_is_exact_and_marked(parameters, shape):
    original, model, modified = _run("clipped-softmax", gamma=0.0, zeta=1.0, parameters=parameters)
    assert modified
    names = sorted(n for n in model.graph.initializers if is_clip(n))
    assert names == [f"{CLIP_PREFIX}0.gamma", f"{CLIP_PREFIX}0.zeta"]
    assert all(is_trainable(n) for n in names)
    assert _values(model, names[0]).shape == shape and np.all(_values(model, names[0]) == 0)
    assert np.all(_values(model, names[1]) == 1)
    clip = next(n for n in model.graph if n.op_type == "Clip")
    assert clip.metadata_props[INSERTED_BY_KEY] == "clipped-softmax"
    # gamma and zeta are read from the initializers, not from Constant nodes
    users = {node.op_type for name in names for node, _ in model.graph.initializers[name].uses()}
    assert users == {"Sub", "Add"}
    _exact(original, model, _feeds(original))


def test_per_head_values_match_numpy():
    original, model, _ = _run("clipped-softmax", gamma=0.0, parameters="head")
    gamma = np.array([-0.3, -0.05], np.float32).reshape(2, 1, 1)
    zeta = np.array([1.2, 1.0], np.float32).reshape(2, 1, 1)
    for name, value in ((f"{CLIP_PREFIX}0.gamma", gamma), (f"{CLIP_PREFIX}0.zeta", zeta)):
        model.graph.initializers[name].const_value = ir.tensor(value, name=name)
    feeds = _feeds(original, seed=4)
    scores = _capture(original, feeds, ["s"])["s"]
    clip = next(n for n in model.graph if n.op_type == "Clip")
    got = _capture(model, feeds, [clip.outputs[0].name])[clip.outputs[0].name]
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(got, np.clip((zeta - gamma) * probs + gamma, 0, 1), atol=2e-6, rtol=0)
    assert (got[:, 0] == 0).any()  # head 0 (gamma -0.3) clips small probabilities to exact zeros


def test_default_gamma_starts_at_minus_alpha_over_static_length():
    _, model, modified = _run("clipped-softmax", text=STATIC, alpha=2.0, zeta=1.1, parameters="layer")
    assert modified
    assert _values(model, f"{CLIP_PREFIX}0.gamma") == pytest.approx(-2.0 / 5)
    assert _values(model, f"{CLIP_PREFIX}0.zeta") == pytest.approx(1.1)
    assert not create_pass("clipped-softmax", {"parameters": "layer"})(model).modified  # never clips twice


def test_trainable_refusals_say_why():
    _, model, modified = _run("clipped-softmax", parameters="layer")  # dynamic T and no gamma
    assert not modified and "Clip" not in op_types(model)
    softmax = next(n for n in model.graph if n.op_type == "Softmax")
    dtypes, shapes = value_dtypes(model), _value_shapes(model)
    for layers, per_head, reason in (({softmax: (0, 2)}, False, "static softmax length"),
                                     ({}, False, "no layer index"),
                                     ({softmax: (0, None)}, True, "number of heads unknown"),
                                     ({softmax: (0, 3)}, True, "not [..., 3 heads, T, T]")):
        rule = clipped_softmax_rule(gamma=None if reason.startswith("static") else 0.0, layers=layers,
                                    per_head=per_head, graph=model.graph, dtypes=dtypes, shapes=shapes)
        tracer = MatchingTracer()
        assert rule.try_rewrite(model, model.graph, softmax, tracer=tracer) is None
        assert reason in tracer.best_matches_map[rule][0].match_result.reason
    with pytest.raises(UsageError, match="need the graph"):
        clipped_softmax_rule(layers={})
    with pytest.raises(UsageError, match="parameters must be"):
        create_pass("clipped-softmax", {"parameters": "token"})
