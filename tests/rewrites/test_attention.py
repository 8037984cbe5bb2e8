"""clipped-softmax and gated-attention: identity cases exact in onnxruntime, the algebra against numpy."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnxscript.rewriter._basics import MatchingTracer

from graphopt.calibration import iter_activations
from graphopt.errors import UsageError
from graphopt.feeds import input_specs, synthesize_feeds
from graphopt.passes import create_pass
from graphopt.rewrites._markers import GATE_PREFIX, INSERTED_BY_KEY
from graphopt.rewrites.attention import clipped_softmax_rule, value_dtypes
from graphopt.verify import verify_models
from tests.conftest import op_types


def _w(seed: int, size: int = 64) -> str:
    return ", ".join(f"{v:.4f}" for v in np.random.default_rng(seed).normal(0, 0.5, size))


# One attention layer: 2 heads of size 4 on hidden size 8, a mask added to the scores, a residual.
ATTENTION = f"""
<ir_version: 8, opset_import: ["" : 18]>
attn (float[N, S, 8] x, float[N, 1, 1, S] mask) => (float[N, S, 8] y) <float[8, 8] wq = {{{_w(1)}}},
    float[8, 8] wk = {{{_w(2)}}}, float[8, 8] wv = {{{_w(3)}}},
    float[8, 8] wo = {{{_w(4)}}}, int64[4] heads = {{0, 0, 2, 4}}, int64[3] merged = {{0, 0, 8}},
    float scale = {{2.0}}> {{
  q0 = MatMul(x, wq)
  k0 = MatMul(x, wk)
  v0 = MatMul(x, wv)
  q1 = Reshape(q0, heads)
  k1 = Reshape(k0, heads)
  v1 = Reshape(v0, heads)
  q = Transpose <perm = [0, 2, 1, 3]> (q1)
  kt = Transpose <perm = [0, 2, 3, 1]> (k1)
  v = Transpose <perm = [0, 2, 1, 3]> (v1)
  s0 = MatMul(q, kt)
  s1 = Div(s0, scale)
  s = Add(s1, mask)
  p = Softmax <axis = -1> (s)
  c0 = MatMul(p, v)
  c1 = Transpose <perm = [0, 2, 1, 3]> (c0)
  c = Reshape(c1, merged)
  o = MatMul(c, wo)
  y = Add(x, o)
}}
"""

CLASSIFIER = """
<ir_version: 8, opset_import: ["" : 18]>
clf (float[N, 8] x) => (float[N, 8] y) {
  y = Softmax <axis = -1> (x)
}
"""


def _feeds(model: ir.Model, seed: int = 0) -> dict[str, np.ndarray]:
    return synthesize_feeds(input_specs(model), shapes={"x": (3, 5, 8), "mask": (3, 1, 1, 5)}, seed=seed)


def _exact(original: ir.Model, rewritten: ir.Model, feeds: dict[str, np.ndarray]) -> None:
    report = verify_models(original, rewritten, feeds, atol=0.0, rtol=0.0, signature=original)
    assert report.passed and all(o.max_abs == 0.0 for o in report.outputs), report


def _run(pass_name: str, text: str = ATTENTION, **settings: object) -> tuple[ir.Model, ir.Model, bool]:
    original, model = ir.from_onnx_text(text), ir.from_onnx_text(text)
    return original, model, create_pass(pass_name, settings)(model).modified


def _capture(model: ir.Model, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    (batch,) = list(iter_activations(model, feeds, names, batch_size=None))
    return batch


# ------------------------------------------------------------------------------ clipped softmax


def test_clipped_softmax_identity_is_exact():
    original, model, modified = _run("clipped-softmax", gamma=0.0, zeta=1.0)
    assert modified
    assert op_types(model).count("Clip") == 1
    inserted = [n for n in model.graph if n.metadata_props.get(INSERTED_BY_KEY) == "clipped-softmax"]
    assert {n.op_type for n in inserted} >= {"Softmax", "Mul", "Add", "Clip"}
    _exact(original, model, _feeds(original))


@pytest.mark.parametrize(("gamma", "zeta", "alpha"), [(-0.1, 1.05, 4.0), (None, 1.0, 2.0), (None, 1.1, 4.0)])
def test_clipped_softmax_matches_numpy(gamma, zeta, alpha):
    original, model, modified = _run("clipped-softmax", gamma=gamma, zeta=zeta, alpha=alpha)
    assert modified
    feeds = _feeds(original, seed=3)
    scores = _capture(original, feeds, ["s"])["s"]
    clip = next(n for n in model.graph if n.op_type == "Clip")
    clipped = _capture(model, feeds, [clip.outputs[0].name])[clip.outputs[0].name]
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    g = gamma if gamma is not None else -alpha / scores.shape[-1]  # T = 5 tokens, known only at run time
    expected = np.clip((zeta - g) * probs + g, 0.0, 1.0)
    np.testing.assert_allclose(clipped, expected, atol=2e-6, rtol=0)
    assert (clipped == 0).any()  # small probabilities are clipped to exact zeros


def test_clipped_softmax_does_not_clip_twice():
    _, model, _ = _run("clipped-softmax")
    assert not create_pass("clipped-softmax")(model).modified
    softmax = next(n for n in model.graph if n.op_type == "Softmax")
    rule, tracer = clipped_softmax_rule(), MatchingTracer()
    assert rule.try_rewrite(model, model.graph, softmax, tracer=tracer) is None
    (info,) = tracer.best_matches_map[rule]
    assert "already clipped" in info.match_result.reason


def test_classifier_softmax_is_left_alone_unless_scope_all():
    _, model, modified = _run("clipped-softmax", text=CLASSIFIER)
    assert not modified and op_types(model) == ["Softmax"]
    softmax = next(iter(model.graph))
    rule, tracer = clipped_softmax_rule(softmaxes=frozenset()), MatchingTracer()
    assert rule.try_rewrite(model, model.graph, softmax, tracer=tracer) is None
    assert "not part of a recognised attention block" in tracer.best_matches_map[rule][0].match_result.reason
    _, model, modified = _run("clipped-softmax", text=CLASSIFIER, scope="all", gamma=0.0)
    assert modified and "Clip" in op_types(model)


@pytest.mark.parametrize("settings", [{"gamma": 0.1}, {"zeta": 0.9}, {"alpha": 0.0}, {"scope": "some"}])
def test_clipped_softmax_bad_settings(settings):
    with pytest.raises(UsageError, match="clipped-softmax"):
        create_pass("clipped-softmax", settings)


# ------------------------------------------------------------------------------ gated attention


def test_gated_attention_finetune_init_is_exact():
    original, model, modified = _run("gated-attention")
    assert modified
    gates = sorted(n for n in model.graph.initializers if n.startswith(GATE_PREFIX))
    assert gates == [f"{GATE_PREFIX}0.bias", f"{GATE_PREFIX}0.weight"]
    assert model.graph.initializers[f"{GATE_PREFIX}0.weight"].shape == ir.Shape([8, 2])  # [D, heads]
    o_proj = next(n for n in model.graph if n.op_type == "MatMul" and n.inputs[1].name == "wo")
    assert o_proj.inputs[0].producer().metadata_props[INSERTED_BY_KEY] == "gated-attention"
    _exact(original, model, _feeds(original))
    assert not create_pass("gated-attention")(model).modified  # already gated: not gated twice


@pytest.mark.parametrize(("mode", "init_gate", "inputs"),
                         [("scratch", 0.5, "full"), ("finetune", 0.25, "full"), ("scratch", 0.9, "chunk")])
def test_gated_attention_matches_numpy(mode, init_gate, inputs):
    original, model, modified = _run("gated-attention", mode=mode, init_gate=init_gate, weight_std=0.3, seed=1,
                                     inputs=inputs)
    assert modified
    feeds = _feeds(original, seed=4)
    before = _capture(original, feeds, ["c", "x"])
    o_proj = next(n for n in model.graph if n.op_type == "MatMul" and n.inputs[1].name == "wo")
    gated_name = o_proj.inputs[0].name
    after = _capture(model, feeds, [gated_name])[gated_name]
    weight = model.graph.initializers[f"{GATE_PREFIX}0.weight"].const_value.numpy()
    bias = model.graph.initializers[f"{GATE_PREFIX}0.bias"].const_value.numpy()
    np.testing.assert_allclose(1 / (1 + np.exp(-bias)), init_gate, rtol=1e-6)
    if inputs == "full":
        logits = before["x"] @ weight + bias  # [N, S, heads]
    else:  # head i reads x[..., 4i:4i+4]
        logits = (before["x"].reshape(3, 5, 2, 4) * weight).sum(-1) + bias
    gate = 1 / (1 + np.exp(-logits))
    if mode == "finetune":
        gate = gate / init_gate
    heads = before["c"].reshape(3, 5, 2, 4) * gate[..., None]
    np.testing.assert_allclose(after, heads.reshape(3, 5, 8), atol=1e-5, rtol=1e-5)


def test_gated_attention_without_attention_does_nothing():
    _, model, modified = _run("gated-attention", text=CLASSIFIER)
    assert not modified and op_types(model) == ["Softmax"]


@pytest.mark.parametrize("settings", [{"mode": "x"}, {"init_gate": 1.0}, {"weight_std": -1.0}, {"inputs": "x"}])
def test_gated_attention_bad_settings(settings):
    with pytest.raises(UsageError, match="gated-attention"):
        create_pass("gated-attention", settings)


def test_rewrites_compose_and_discovery_still_sees_the_block():
    from graphopt.analysis import summarize

    original, model, _ = _run("clipped-softmax", gamma=0.0)
    assert create_pass("gated-attention")(model).modified
    _exact(original, model, _feeds(original))
    (block,) = summarize(model).attention_blocks
    assert (block.num_heads, block.head_size) == (2, 4)
    assert block.o_proj is not None and block.o_proj.weight == "wo"


def test_dynamic_length_needs_opset_15_and_says_so():
    text = ATTENTION.replace('opset_import: ["" : 18]', 'opset_import: ["" : 14]')
    _, model, modified = _run("clipped-softmax", text=text)
    assert not modified
    softmax = next(n for n in model.graph if n.op_type == "Softmax")
    rule, tracer = clipped_softmax_rule(dtypes=value_dtypes(model)), MatchingTracer()
    assert rule.try_rewrite(model, model.graph, softmax, tracer=tracer) is None
    assert "needs opset >= 15" in tracer.best_matches_map[rule][0].match_result.reason
    _, model, modified = _run("clipped-softmax", text=text, gamma=-0.05)  # a fixed gamma needs no Shape
    assert modified
