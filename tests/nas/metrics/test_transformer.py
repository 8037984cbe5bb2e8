"""Transformer metrics (hidden_cov, act_dist, syn_div, syn_sal, head_imp, attn_conf) on the BERT space and
MiniLM: checked against onnxruntime and against gate gradients, finite, deterministic, order-consistent."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch

from graphopt.errors import InputError
from graphopt.nas.metrics import get_metric, score_model, score_model_all
from graphopt.nas.metrics.forward import naswot_score
from graphopt.nas.metrics.grad import jacobian_score
from graphopt.nas.spaces.bert import BertSpace
from tests.nas.metrics.conftest import tiny_model

METRICS = ("hidden_cov", "act_dist", "syn_div", "syn_sal", "head_imp", "attn_conf")
SPACE = BertSpace(vocab_size=120, max_positions=16)
ARCH = (2, 4, 64, 96)  # layers, heads, hidden, mlp


def _feeds(n: int = 6, seq: int = 12, seed: int = 0, pad: bool = True) -> dict[str, np.ndarray]:
    """Token ids with a padded tail of varying length per sample."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 120, size=(n, seq), dtype=np.int64)
    mask = np.ones((n, seq), dtype=np.int64)
    if pad:
        for i in range(n):
            mask[i, seq - i:] = 0
    return {"input_ids": np.where(mask == 1, ids, 0), "attention_mask": mask}


def _ort(model: ir.Model, feeds: dict[str, np.ndarray], extra: list[ir.Value]) -> list[np.ndarray]:
    from graphopt.runtime import make_session

    for value in extra:
        value.type = ir.TensorType(ir.DataType.FLOAT)
        model.graph.outputs.append(value)
    session = make_session(model)
    return session.run(None, feeds)  # type: ignore[no-any-return]


def test_registered_with_needs():
    for name in METRICS:
        metric = get_metric(name)
        assert metric.name == name and metric.doc
        assert metric.needs_data and not metric.needs_labels
    assert {n for n in METRICS if get_metric(n).needs_gradients} == {"syn_div", "syn_sal", "head_imp"}
    assert get_metric("attention_confidence").name == "attn_conf"


def test_finite_deterministic_and_order_consistent():
    model = SPACE.build(ARCH)
    feeds = _feeds()
    first = score_model_all(model, METRICS, data=feeds, seed=1)
    again = score_model_all(SPACE.build(ARCH), list(reversed(METRICS)), data=feeds, seed=1)
    assert all(np.isfinite(v) for v in first.values())
    assert first == again
    for name in ("act_dist", "head_imp"):
        assert score_model(SPACE.build(ARCH), name, data=feeds, seed=1) == first[name]
    other_seed = score_model_all(model, ["head_imp", "attn_conf"], data=feeds, seed=2)
    assert other_seed["head_imp"] != first["head_imp"]  # r ~ N(0, 1) follows the seed
    assert other_seed["attn_conf"] == first["attn_conf"]  # a forward metric on the same data and weights


def test_hidden_cov_and_act_dist_match_onnxruntime():
    model = SPACE.build(ARCH)
    feeds = _feeds()
    erf_inputs = [v for node in model.graph if node.op_type == "Erf" and (v := node.inputs[0]) is not None]
    assert len(erf_inputs) == ARCH[0]
    hidden, *pre = _ort(model, feeds, erf_inputs)
    mask = feeds["attention_mask"].astype(np.float64)
    expected_cov = jacobian_score((hidden * mask[:, :, None]).reshape(len(hidden), -1).astype(np.float64))
    kernel = np.zeros((6, 6))
    for a in pre:
        code = (a > 0).astype(np.float64) * mask[:, :, None]
        rest = (a <= 0).astype(np.float64) * mask[:, :, None]
        kernel += code.reshape(6, -1) @ code.reshape(6, -1).T + rest.reshape(6, -1) @ rest.reshape(6, -1).T
    got = score_model_all(SPACE.build(ARCH), ["hidden_cov", "act_dist"], data=feeds)
    assert got["hidden_cov"] == pytest.approx(expected_cov, rel=1e-4)
    assert got["act_dist"] == pytest.approx(naswot_score(kernel), rel=1e-6)


def test_padding_is_ignored():
    feeds = _feeds()
    other = {k: v.copy() for k, v in feeds.items()}
    other["input_ids"][feeds["attention_mask"] == 0] = 7  # other tokens where nothing may look
    a = score_model_all(SPACE.build(ARCH), METRICS, data=feeds)
    b = score_model_all(SPACE.build(ARCH), METRICS, data=other)
    for name in METRICS:
        assert a[name] == pytest.approx(b[name], rel=1e-5), name


def test_head_importance_is_the_gate_gradient():
    """With one sample, ``head_imp = sum_h |dR/dxi_h|`` for a gate ``xi_h = 1`` on each head's output: the
    gated-attention pass (zero gate weights, fine-tuning mode) gives ``xi_h = 2 sigmoid(b_h)``, so
    ``dR/db_h = dR/dxi_h / 2``."""
    from graphopt.executor import TorchExecutor
    from graphopt.passes import create_pass

    feeds = {k: v[:1] for k, v in _feeds(seed=3).items()}
    gated = SPACE.build(ARCH)
    assert create_pass("gated-attention")(gated).modified
    executor = TorchExecutor(gated, trainable="gates")
    out = executor({k: torch.from_numpy(v) for k, v in feeds.items()})[executor.output_names[0]]
    seed = 4
    r = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 7), dtype=torch.float64).float()
    mask = torch.from_numpy(feeds["attention_mask"]).float()[:, :, None]
    (out * r * mask).sum().backward()
    biases = [p for name, p in executor.named_trainable_parameters() if name.endswith("bias")]
    assert len(biases) == ARCH[0]
    expected = sum(float(2 * p.grad.abs().sum()) for p in biases if p.grad is not None)
    assert score_model(SPACE.build(ARCH), "head_imp", data=feeds, seed=seed) == pytest.approx(expected, rel=1e-4)


def test_attention_confidence_bounds():
    feeds = _feeds(pad=False)
    heads = ARCH[0] * ARCH[1]
    value = score_model(SPACE.build(ARCH), "attn_conf", data=feeds)
    assert heads / 12 <= value <= heads  # mean max probability over 12 keys lies in [1/12, 1]


def test_metrics_without_attention_say_why():
    model = tiny_model()
    data = {"input": np.random.default_rng(0).standard_normal((4, 3, 6, 6), dtype=np.float32)}
    assert np.isfinite(score_model(model, "act_dist", data=data))  # Relu codes need no attention
    for name in ("attn_conf", "head_imp", "syn_div"):
        with pytest.raises(InputError, match=name):
            score_model(tiny_model(), name, data=data)


def test_cli_scores_bert_architectures(tmp_path, capsys):
    import json

    from graphopt.cli import main

    archs = tmp_path / "archs.txt"
    archs.write_text("L2-H64-A4-I96\nL1-H32-A2-I64\n")
    assert main(["score", "--metric", "attn_conf,syn_sal", "--space", "bert", "--archs", str(archs), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and all(set(r) == {"attn_conf", "syn_sal"} for r in rows)
    assert rows[0]["attn_conf"] > rows[1]["attn_conf"]  # 8 heads against 2
    conv = tmp_path / "conv.onnx"
    ir.save(tiny_model(), conv)
    assert main(["score", "--metric", "head_imp", str(conv)]) == 2
    assert "head_imp" in capsys.readouterr().err


@pytest.mark.slow
def test_minilm_trained_heads_are_more_confident(tmp_path):
    """The pretrained all-MiniLM-L6-v2 on real sentences: every metric finite and deterministic, and
    its trained heads more confident than the same architecture freshly initialised."""
    from graphopt._io import load_model
    from graphopt.data import stdlib_sentences, tokenize
    from graphopt.errors import UsageError
    from graphopt.frontend import export_sentence_embedder, minilm_dir

    try:
        directory = minilm_dir()
    except UsageError:
        pytest.skip("all-MiniLM-L6-v2 is not installed")
    path = export_sentence_embedder(directory, tmp_path / "minilm.onnx", verify=False).path
    feeds = tokenize(directory, stdlib_sentences(8, seed=5), sequence=32,
                     input_names=("input_ids", "attention_mask", "token_type_ids"))
    trained = score_model_all(load_model(path), METRICS, data=feeds)
    assert all(np.isfinite(v) for v in trained.values())
    assert score_model_all(load_model(path), ["head_imp", "act_dist"], data=feeds) == {
        k: trained[k] for k in ("head_imp", "act_dist")}
    fresh = BertSpace().build((6, 12, 384, 1536))
    untrained = score_model(fresh, "attn_conf", data={k: feeds[k] for k in ("input_ids", "attention_mask")})
    assert trained["attn_conf"] > untrained * 1.5
