"""MiniLM embeddings of encodings: line normalisation, pooling and the disk cache."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.errors import UsageError
from graphopt.predict.embed import TextEmbedder, normalize_line


def test_normalize_line_drops_tensor_numbers_only():
    line = "Add(T12, In1) --> Relu --> T3:1x4, Out2"
    assert normalize_line(line) == "Add(T, In1) --> Relu --> T:1x4, Out2"


def test_unknown_pooling():
    with pytest.raises(UsageError, match="unknown pooling"):
        TextEmbedder(pooling="max")


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["lines", "chunks"])
def test_embeddings_are_cached_and_tell_graphs_apart(tmp_path, pooling):
    pytest.importorskip("transformers")
    texts = [
        "In1 --> Conv --> Relu --> T1\nT1 --> MaxPool --> Out1",
        "In1 --> Conv --> Relu --> T7\nT7 --> MaxPool --> Out1",  # same up to tensor numbers
        "In1 --> MatMul --> Softmax --> MatMul --> Out1",
    ]
    embedder = TextEmbedder(pooling=pooling, cache_dir=tmp_path)
    vectors = embedder.embed(texts)
    assert vectors.shape == (3, 384) and np.isfinite(vectors).all()
    if pooling == "lines":
        np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)
    assert np.linalg.norm(vectors[0] - vectors[2]) > 0.1
    assert list(tmp_path.glob("*.npy"))
    cached = TextEmbedder(pooling=pooling, cache_dir=tmp_path)
    cached._load = None  # type: ignore[assignment,method-assign]  # the model must not be needed again
    np.testing.assert_allclose(cached.embed(texts), vectors, atol=1e-6)
