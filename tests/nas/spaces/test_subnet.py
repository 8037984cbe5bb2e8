"""The sub-network space: genes, notation, enumeration and graphs cut from a small BERT and a small CNN."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.analysis import summarize
from graphopt.errors import InputError, UsageError
from graphopt.feeds import input_specs, synthesize_feeds
from graphopt.nas.search import encoding_for
from graphopt.nas.spaces import get_space
from graphopt.nas.spaces.bert import BertSpace
from graphopt.nas.spaces.subnet import SubnetSpace
from graphopt.runtime import make_session


@pytest.fixture(scope="module")
def bert_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-layer BERT encoder (4 heads of 8, MLP 64, vocabulary 100) built as Hugging Face exports it."""
    path = tmp_path_factory.mktemp("subnet") / "bert.onnx"
    ir.save(BertSpace(vocab_size=100, max_positions=64).build((3, 4, 32, 64), seed=1), path)
    return path


@pytest.fixture(scope="module")
def cnn_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.rewrites.prune._toy import toy_cnn

    path = tmp_path_factory.mktemp("subnet") / "cnn.onnx"
    ir.save(toy_cnn(), path)
    return path


def _run(model: ir.Model) -> np.ndarray:
    feeds = synthesize_feeds(input_specs(model), batch=2, sequence=8, seed=0)
    return np.asarray(make_session(model).run(None, feeds)[0])


def test_genes_decode_to_the_architecture_the_built_graph_has(bert_path: Path) -> None:
    space = get_space("subnet", model_path=bert_path, layer_choices=(1, 2, 3))
    assert isinstance(space, SubnetSpace) and space.kind == "transformer"
    assert space.layer_units == [(4, 64)] * 3
    assert space.gene_choices == (3,) + (4,) * 3 + (4,) * 3
    genes = (1, 0, 1, 3, 3, 2, 0)  # two layers; fractions 0.25/0.5/1 of heads, 1/0.75/0.25 of the MLP
    arch = space.decode(genes)
    kept = [i for i, _, _ in arch]  # type: ignore[attr-defined]
    assert len(kept) == 2 and kept == sorted(kept)
    expect = {0: (1, 64), 1: (2, 48), 2: (4, 16)}
    assert arch == tuple((i, *expect[i]) for i in kept)
    model = space.build(arch)
    summary = summarize(model, shapes={"input_ids": (1, 8), "attention_mask": (1, 8)})
    assert [b.num_heads for b in summary.attention_blocks] == [expect[i][0] for i in kept]
    assert [b.hidden_size for b in summary.mlp_blocks] == [expect[i][1] for i in kept]
    assert _run(model).shape == (2, 8, 32)
    assert model.metadata_props["graphopt.nas.arch"] == space.to_string(arch)


def test_first_keeps_the_leading_layers_for_weight_shared_supernets(bert_path: Path) -> None:
    space = SubnetSpace(bert_path, layer_choices=(1, 2, 3), importance="first")
    assert [i for i, _, _ in space.decode((1, 3, 3, 3, 3, 3, 3))] == [0, 1]  # type: ignore[attr-defined]
    assert [i for i, _, _ in space.uniform(layers=1)] == [0]  # type: ignore[attr-defined]
    assert _run(space.build(space.uniform(layers=2, heads=0.5, mlp=0.5))).shape == (2, 8, 32)


def test_whole_network_is_the_source_and_notation_round_trips(bert_path: Path) -> None:
    space = SubnetSpace(bert_path)
    whole = space.uniform()
    assert space.to_string(whole) == "L0-A4-I64|L1-A4-I64|L2-A4-I64"
    np.testing.assert_allclose(_run(space.build(whole)), _run(ir.load(bert_path)), atol=1e-6)
    archs = space.sample(np.random.default_rng(0), 8)
    assert archs == space.sample(np.random.default_rng(0), 8)
    assert [space.parse(space.to_string(a)) for a in archs] == archs
    assert len({space.one_hot(a).shape for a in archs}) == 1
    assert space.to_string(space.parse("L1-A3-I10")) == "L1-A3-I10"  # off-grid sizes parse too


def test_canonical_genes_give_one_key_per_network(bert_path: Path) -> None:
    # 0.25 and 0.3 of 4 heads both keep 1: duplicates that the canonical genes merge
    space = SubnetSpace(bert_path, head_fractions=(0.25, 0.3, 1.0), mlp_fractions=(0.5, 1.0))
    archs = list(space.enumerate())
    assert len(archs) == space.size == len({space.to_string(a) for a in archs})
    assert space.size == 2 * 2 * (1 + 4 + 16)  # layers kept: 1, 2 or 3; per layer 2 head and 2 MLP sizes
    enc = encoding_for(space)
    assert enc.size == space.size
    one_layer: Any = space.decode((0,) * 7)  # one layer kept: the most important
    top = int(one_layer[0][0])
    variant = [0, 2, 2, 2, 1, 1, 1]
    variant[1 + top], variant[4 + top] = 1, 0  # 0.3 of the heads (1, as 0.25 gives) and half the MLP
    assert enc.key(variant) == enc.key((0,) * 7) and space.decode(variant) == space.decode((0,) * 7)
    variant[4 + top] = 1
    assert enc.key(variant) != enc.key((0,) * 7)


def test_space_pickles_without_its_model(bert_path: Path) -> None:
    space = SubnetSpace(bert_path, layer_choices=(2, 3))
    arch = space.uniform(layers=2, heads=0.5)
    copy = pickle.loads(pickle.dumps(space))
    assert copy._state is None and len(pickle.dumps(space)) < 2000
    assert copy.to_string(arch) == space.to_string(arch)
    np.testing.assert_array_equal(_run(copy.build(arch)), _run(space.build(arch)))


def test_activation_importance_reads_the_calibration_data(bert_path: Path, tmp_path: Path) -> None:
    from graphopt.feeds import save_feeds

    calib = save_feeds(synthesize_feeds(input_specs(ir.load(bert_path)), batch=8, sequence=8, seed=0),
                       tmp_path / "calib.npz")
    space = SubnetSpace(bert_path, importance="activation", calibration=calib)
    arch = space.uniform(layers=2, heads=0.5, mlp=0.5)
    assert len(arch) == 2  # type: ignore[arg-type]
    assert _run(space.build(arch)).shape == (2, 8, 32)
    copy = pickle.loads(pickle.dumps(space))  # the worker reloads model and calibration data
    np.testing.assert_array_equal(_run(copy.build(arch)), _run(space.build(arch)))


def test_cnn_channels_per_stage(cnn_path: Path) -> None:
    space = SubnetSpace(cnn_path, channel_fractions=(0.25, 0.5, 1.0))
    assert space.kind == "cnn" and space.gene_choices == (3, 3)
    arch = space.decode((0, 1))
    assert space.to_string(arch) == "C2-C4" and space.parse("C2-C4") == arch
    model = space.build(arch)
    out = make_session(model).run(None, {"x": np.zeros((2, 3, 8, 8), dtype=np.float32)})[0]
    assert out.shape == (2, 5)
    assert len(list(space.enumerate())) == space.size == 9


def test_bad_input(bert_path: Path, cnn_path: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--model"):
        get_space("subnet")
    with pytest.raises(InputError, match="no such file"):
        SubnetSpace(tmp_path / "missing.onnx")
    with pytest.raises(UsageError, match="layer choices"):
        SubnetSpace(bert_path, layer_choices=(0, 4))
    with pytest.raises(UsageError, match="fractions"):
        SubnetSpace(bert_path, head_fractions=(0.0, 0.5))
    with pytest.raises(UsageError, match="calibration"):
        SubnetSpace(bert_path, importance="activation")
    space = SubnetSpace(bert_path)
    for text, message in (("L0-A5-I64", "heads must be in"), ("L2-A1-I1|L1-A1-I1", "ascending"),
                          ("L7-A1-I1", "not in"), ("nonsense", "not a sub-network"), ("C2-C4", "not a sub-network")):
        with pytest.raises(InputError, match=message):
            space.parse(text)
    with pytest.raises(InputError, match="1 channel counts for 2"):
        SubnetSpace(cnn_path).parse("C2")
