"""BERT-style encoder space: notation, the real op structure, and MiniLM's size and outputs."""

from __future__ import annotations

from typing import cast

import numpy as np
import pytest

from graphopt.errors import InputError
from graphopt.nas.spaces import get_space, trainable_parameter_count
from graphopt.nas.spaces.bert import BertSpace
from graphopt.predict import encode_graph, structural_features
from tests.nas.spaces._helpers import model_bytes, run_model

SPACE = BertSpace()
SMALL = BertSpace(vocab_size=100, max_positions=16)


def _feeds(batch: int = 2, seq: int = 7, vocab: int = 100) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(0).integers(0, vocab, (batch, seq))
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[-1, seq // 2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_notation_and_space() -> None:
    assert SPACE.parse("L6-H384-A12-I1536") == (6, 12, 384, 1536)
    assert SPACE.to_string((6, 12, 384, 1536)) == "L6-H384-A12-I1536"
    archs = cast("list[tuple[int, int, int, int]]", list(SPACE.enumerate()))
    assert len(archs) == len(set(archs)) and all(hidden % heads == 0 for _, heads, hidden, _ in archs)
    sampled = SPACE.sample(np.random.default_rng(0), 10)
    assert sampled == SPACE.sample(np.random.default_rng(0), 10) and set(sampled) <= set(archs)
    assert SPACE.one_hot((6, 12, 384, 1536)).sum() == 4
    for text in ["L6-H384-A7-I1536", "L0-H384-A12-I1536", "6-384-12-1536"]:
        with pytest.raises(InputError):
            SPACE.parse(text)
    assert isinstance(get_space("bert"), BertSpace)


def test_minilm_sized_arch_has_minilm_parameters() -> None:
    safetensors = pytest.importorskip("safetensors")
    from graphopt.errors import UsageError
    from graphopt.frontend import minilm_dir

    try:
        checkpoint = minilm_dir() / "model.safetensors"
    except UsageError:
        pytest.skip("all-MiniLM-L6-v2 is not installed")
    with safetensors.safe_open(str(checkpoint), "np") as f:
        shapes = {name: f.get_slice(name).get_shape() for name in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    # the real checkpoint's parameters, less the pooler (the sentence embedder does not use it); 22,565,376
    expected = sum(int(np.prod(dims)) for name, dims in shapes.items() if not name.startswith("pooler")
                   and not name.endswith("position_ids"))
    model = SPACE.build(SPACE.parse("L6-H384-A12-I1536"))
    assert trainable_parameter_count(model) == expected == 22_565_376


def test_analysis_finds_the_blocks_and_the_graph_runs() -> None:
    arch = (3, 4, 64, 96)
    model = SMALL.build(arch)
    features = structural_features(model)
    assert features["attention_blocks"] == 3 and features["mlp_blocks"] == 3 and features["op_Softmax"] == 3
    assert features == structural_features(SMALL.build(arch))
    (out,) = run_model(model, _feeds())
    assert out.shape == (2, 7, 64) and np.isfinite(out).all()
    # LayerNorm at the end: each token's features have mean 0 and variance 1
    np.testing.assert_allclose(out.mean(-1), 0, atol=1e-5)
    assert model_bytes(model) == model_bytes(SMALL.build(arch))
    assert encode_graph(model) == encode_graph(SMALL.build(arch, seed=3))


def test_mask_hides_padded_tokens() -> None:
    model = SMALL.build((2, 2, 32, 64))
    feeds = _feeds()
    (a,) = run_model(model, feeds)
    changed = {k: v.copy() for k, v in feeds.items()}
    changed["input_ids"][-1, 5:] = (changed["input_ids"][-1, 5:] + 1) % 100  # tokens under mask 0
    (b,) = run_model(model, changed)
    np.testing.assert_allclose(a[-1, :3], b[-1, :3], atol=1e-5)  # unmasked tokens do not see the change
    assert not np.allclose(a[-1, 5:], b[-1, 5:])
