"""Sentence embeddings of graph encodings from a small pretrained text encoder (all-MiniLM-L6-v2).

``TextEmbedder(pooling=...)`` turns ONNX-Net texts (:func:`graphopt.predict.encode_graph`) into
384-dim vectors with the frozen MiniLM (transformers + torch, mean pooling over tokens):

``lines``   every line (operator chain) with its tensor numbers removed (``T12`` -> ``T``) is
            embedded once and the text is the count-weighted mean of its distinct lines. Lines
            repeat within and across graphs, so with the cache this scores thousands of graphs a
            minute; what it loses is which chain feeds which.
``chunks``  the whole text is split into windows of at most 254 tokens, each embedded, and the
            text is the token-weighted mean of its windows (keeps topology; slow on big graphs).

Embeddings are cached by SHA-256 of the embedded string, in memory and, given ``cache_dir``, on
disk (one ``.npy`` per string, written atomically).
"""

from __future__ import annotations

import collections
import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from graphopt.errors import UsageError
from graphopt.predict._cache import write_cache_file

__all__ = ["POOLINGS", "TextEmbedder", "normalize_line"]

POOLINGS = ("lines", "chunks")
_TENSOR = re.compile(r"\bT\d+\b")
_WINDOW = 254  # tokens per chunk, leaving room for [CLS] and [SEP]


def normalize_line(line: str) -> str:
    """A line with its tensor numbers removed (``T12 --> Relu --> T13`` -> ``T --> Relu --> T``)."""
    return _TENSOR.sub("T", line)


class TextEmbedder:
    """Frozen MiniLM embeddings of encodings (see the module docstring)."""

    dim = 384

    def __init__(self, *, pooling: str = "lines", cache_dir: str | os.PathLike[str] | None = None,
                 batch_size: int = 32, model_dir: str | os.PathLike[str] | None = None) -> None:
        if pooling not in POOLINGS:
            raise UsageError(f"unknown pooling {pooling!r} (choose from {', '.join(POOLINGS)})")
        self.pooling = pooling
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.batch_size = batch_size
        self.model_dir = model_dir
        self._memory: dict[str, np.ndarray] = {}
        self._model: Any = None
        self._tokenizer: Any = None

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One row per text, ``(len(texts), 384)`` float32."""
        if self.pooling == "lines":
            bags = [collections.Counter(normalize_line(line) for line in text.splitlines() if line.strip())
                    for text in texts]
            vectors = self._strings(sorted({line for bag in bags for line in bag}))
            rows = []
            for bag in bags:
                if not bag:
                    rows.append(np.zeros(self.dim, np.float32))
                    continue
                weights = np.array(list(bag.values()), np.float32)
                rows.append((np.stack([vectors[line] for line in bag]) * weights[:, None]).sum(0) / weights.sum())
            return np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)
        return np.stack([self._chunked(text) for text in texts]) if texts else np.zeros((0, self.dim), np.float32)

    # -- chunks ----------------------------------------------------------------------------------

    def _chunked(self, text: str) -> np.ndarray:
        key = "chunks:" + text
        cached = self._cached(key)
        if cached is not None:
            return cached
        self._load()
        ids = self._tokenizer(text, add_special_tokens=False)["input_ids"] or [self._tokenizer.unk_token_id]
        windows = [ids[i:i + _WINDOW] for i in range(0, len(ids), _WINDOW)]
        weights = np.array([len(w) for w in windows], np.float32)
        vectors = np.concatenate([self._forward_ids(windows[i:i + self.batch_size])
                                  for i in range(0, len(windows), self.batch_size)])
        vector = (vectors * weights[:, None]).sum(0) / weights.sum()
        self._store(key, vector)
        return vector

    # -- strings ---------------------------------------------------------------------------------

    def _strings(self, strings: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        missing = []
        for s in strings:
            vector = self._cached("line:" + s)
            if vector is None:
                missing.append(s)
            else:
                found[s] = vector
        for i in range(0, len(missing), self.batch_size):
            batch = missing[i:i + self.batch_size]
            self._load()
            encoded = self._tokenizer(batch, add_special_tokens=False, truncation=True, max_length=_WINDOW)
            for s, vector in zip(batch, self._forward_ids(encoded["input_ids"])):
                self._store("line:" + s, vector)
                found[s] = vector
        return found

    # -- the encoder -----------------------------------------------------------------------------

    def _load(self) -> None:
        if self._model is not None:
            return
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:
            raise UsageError("text embeddings need transformers and torch: pip install 'graphopt[torch]'") from exc
        from graphopt.frontend import minilm_dir

        directory = self.model_dir or minilm_dir()
        self._tokenizer = AutoTokenizer.from_pretrained(directory)
        self._model = AutoModel.from_pretrained(directory).eval()

    def _forward_ids(self, windows: Sequence[Sequence[int]]) -> np.ndarray:
        """Mean-pooled last hidden states of token-id windows (special tokens added here)."""
        import torch

        tok = self._tokenizer
        rows = [[tok.cls_token_id, *w, tok.sep_token_id] for w in windows]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        with torch.inference_mode():
            hidden = self._model(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return ((hidden * m).sum(1) / m.sum(1)).numpy().astype(np.float32)

    # -- cache -----------------------------------------------------------------------------------

    def _path(self, key: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()}.npy"

    def _cached(self, key: str) -> np.ndarray | None:
        if key in self._memory:
            return self._memory[key]
        path = self._path(key)
        if path is not None and path.is_file():
            try:
                vector = np.load(path)
            except (OSError, ValueError):
                return None
            if vector.shape == (self.dim,):
                self._memory[key] = vector
                return vector
        return None

    def _store(self, key: str, vector: np.ndarray) -> None:
        self._memory[key] = vector
        path = self._path(key)
        if path is None:
            return
        write_cache_file(path, lambda handle: np.save(handle, vector), binary=True)
