"""Attention discovery on exports of tiny Hugging Face models and on fused contrib ops.

Every block must come with its heads, head size, KV heads, Q/K/V/O projections, Softmax, mask path,
residual ``Add`` and layer input; identity rewrites of real exports must be exact in onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.analysis import summarize
from graphopt.analysis._attention import find_attention
from tests.rewrites.test_attention import ATTENTION

# kind, exporter -> (heads, head size, kv heads, fused QKV, has a mask)
_EXPECTED = {
    "bert": (2, 16, 2, False, True),
    "gpt2": (2, 16, 2, True, True),
    "llama": (4, 8, 2, False, True),  # grouped-query attention with rotary embeddings
    "vit": (2, 16, 2, False, False),  # the dynamo export adds a (zero) bias from SDPA's decomposition: a mask path
}
_EXPORTS = [(kind, "torchscript") for kind in _EXPECTED] + [("llama", "dynamo"), ("vit", "dynamo")]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("transformers")
    from tests._models import export_tiny_hf_model

    folder = tmp_path_factory.mktemp("hf")
    cache: dict[tuple[str, str], Path] = {}

    def get(kind: str, exporter: str) -> Path:
        if (kind, exporter) not in cache:
            export_tiny_hf_model(kind, folder, exporter=exporter)
            cache[kind, exporter] = folder / f"{kind}-{exporter}.onnx"
        return cache[kind, exporter]

    return get


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "exporter"), _EXPORTS)
def test_hugging_face_blocks(exported, kind, exporter):
    heads, head, kv_heads, fused, masked = _EXPECTED[kind]
    summary = summarize(ir.load(exported(kind, exporter)))
    assert len(summary.attention_blocks) == 2, summary.notes
    for block in summary.attention_blocks:
        assert (block.num_heads, block.head_size, block.kv_heads, block.qkv_fused) == (heads, head, kv_heads, fused)
        assert None not in (block.q_proj, block.k_proj, block.v_proj, block.o_proj)
        assert block.softmax == block.node and block.residual and block.layer_input
        assert (block.mask is not None) == (masked or exporter == "dynamo")
    assert summary.notes == ()


@pytest.mark.slow
def test_identity_rewrites_of_a_gqa_rope_export_are_exact(exported):
    from graphopt.analysis._outliers import outlier_statistics
    from graphopt.feeds import input_specs, synthesize_feeds
    from graphopt.passes import create_pass
    from graphopt.verify import verify_models

    path = exported("llama", "torchscript")
    original, model = ir.load(path), ir.load(path)
    steps = [("clipped-softmax", {"gamma": 0.0}), ("gated-attention", {}),
             ("lora", {"targets": ("q", "k")}), ("nola", {"targets": ("v", "mlp")}), ("bitdelta", {"targets": ("o",)})]
    for name, settings in steps:
        assert create_pass(name, settings)(model).modified, name
    feeds = synthesize_feeds(input_specs(original), seed=0)
    report = verify_models(original, model, feeds, atol=0.0, rtol=0.0, signature=original)
    assert report.passed and report.outputs[0].max_abs == 0.0
    assert create_pass("merge-adapters")(model).modified
    report = verify_models(original, model, feeds, atol=0.0, rtol=0.0, signature=original)
    assert report.passed and report.outputs[0].max_abs == 0.0
    layers, notes = outlier_statistics(model, feeds)
    assert [o.layer for o in layers] == [0, 1] and notes == []
    assert all(o.max_abs > 0 and o.kurtosis >= 1.0 and o.tokens == 2 * 16 for o in layers)


def test_mask_residual_and_layer_input_of_a_text_graph():
    model = ir.from_onnx_text(ATTENTION)
    located: list[dict] = []
    (block,) = find_attention(model.graph, [], located=located)
    assert (block.mask, block.layer_input) == ("mask", "x")
    assert located[0]["node"].op_type == "Softmax" and located[0]["o"].inputs[1].name == "wo"
    residual = next(iter(located[0]["o"].outputs[0].uses()))[0]
    assert residual.op_type == "Add" and residual.name == block.residual


def _values(n: int, seed: int) -> str:
    return ", ".join(f"{v:.3f}" for v in np.random.default_rng(seed).normal(0, 0.3, n))


FUSED = f"""
<ir_version: 8, opset_import: ["" : 18, "com.microsoft" : 1]>
g (float[2, 5, 8] x, int32[2, 5] mask) => (float[2, 5, 8] y)
    <float[8, 24] w = {{{_values(192, 1)}}}, float[24] b = {{{_values(24, 2)}}},
     float[8, 8] wo = {{{_values(64, 3)}}}> {{
  a = com.microsoft.Attention <num_heads = 2> (x, w, b, mask)
  o = MatMul(a, wo)
  y = Add(x, o)
}}
"""


def test_fused_contrib_attention_mask_and_residual():
    summary = summarize(ir.from_onnx_text(FUSED))
    (block,) = summary.attention_blocks
    assert (block.kind, block.num_heads, block.head_size, block.qkv_fused) == ("com.microsoft.Attention", 2, 4, True)
    assert (block.mask, block.layer_input, block.softmax) == ("mask", "x", None)
    assert block.o_proj is not None and block.o_proj.weight == "wo" and block.residual is not None


def test_fused_attention_gets_gates_and_clipped_softmax_skips_it():
    from graphopt.passes import create_pass
    from graphopt.rewrites._markers import GATE_PREFIX

    model = ir.from_onnx_text(FUSED)
    assert not create_pass("clipped-softmax")(model).modified  # no Softmax to clip inside a fused kernel
    assert create_pass("gated-attention")(model).modified
    assert f"{GATE_PREFIX}0.weight" in model.graph.initializers


def test_the_analysis_knows_the_rewrites_marker():
    from graphopt.analysis import _attention
    from graphopt.rewrites import _markers

    assert _attention.INSERTED_BY_KEY == _markers.INSERTED_BY_KEY
