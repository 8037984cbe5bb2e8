"""Real MiniLM exports shared by the slow executor tests (exported once per session)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def minilm_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """all-MiniLM-L6-v2 exported with each exporter (``dynamo``, ``torchscript``)."""
    from graphopt.frontend import export_sentence_embedder, minilm_dir

    try:
        model_dir = minilm_dir()
    except Exception as exc:  # the optional demo package is missing
        pytest.skip(f"all-MiniLM-L6-v2 not installed: {exc}")
    folder = tmp_path_factory.mktemp("minilm")
    return {
        exporter: export_sentence_embedder(model_dir, folder / f"{exporter}.onnx", exporter=exporter, verify=False).path
        for exporter in ("dynamo", "torchscript")
    }


@pytest.fixture(scope="session")
def sentences_feeds() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Tokenised standard-library sentences: (train 48 x 64 tokens, held-out 16 x 64 tokens)."""
    from graphopt.data import stdlib_sentences, tokenize
    from graphopt.frontend import minilm_dir

    sentences = stdlib_sentences(64, seed=0)
    return tokenize(minilm_dir(), sentences[:48], sequence=64), tokenize(minilm_dir(), sentences[48:], sequence=64)
