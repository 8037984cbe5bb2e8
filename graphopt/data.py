"""Real text, offline: sentences from the docstrings of Python's standard library, and tokenisation
into feeds (``.npz`` contract: keys are graph input names, samples on axis 0).

The standard library's sources are parsed with :mod:`ast` (never imported), so the text is the
same on every machine with the same Python version and nothing is downloaded.
"""

from __future__ import annotations

import ast
import functools
import itertools
import math
import os
import random
import re
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from graphopt.errors import InputError, UsageError

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "DEFAULT_INPUT_NAMES", "natural_images", "split_sentences",
           "stdlib_sentences", "tokenize"]

DEFAULT_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")

#: CIFAR-10's per-channel mean and standard deviation (the normalisation NASLib applies)
CIFAR10_MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
CIFAR10_STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)

# Folders of the standard library that hold tests, third-party packages or demo scripts.
_SKIP_DIRS = frozenset({
    "site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "__pycache__",
    "ensurepip", "config-3", "tkinter", "venv",
})
# Candidate pools grow in steps of this many sentences, so that small requests with one seed
# draw from the same pool: stdlib_sentences(10) is a prefix of stdlib_sentences(500).
_POOL_STEP = 1000
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "Mr.", "Dr.", "No.", "approx.")
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")
_BAD = re.compile(r"[{}\[\]<>=|\\`@#$~^_*]|::|\.\.\.|https?:|\bTODO\b|\bXXX\b")


def stdlib_sentences(count: int, *, seed: int = 0, min_words: int = 5, max_words: int = 40) -> list[str]:
    """``count`` distinct English sentences from standard-library docstrings, shuffled by ``seed``.

    Deterministic for a given Python installation and arguments. Sentences start with a capital
    letter, end with ``.``, ``!`` or ``?``, have ``min_words`` to ``max_words`` words and no code
    (doctests, indented blocks, markup, identifiers with underscores).
    """
    if count < 1:
        raise UsageError(f"count must be positive, not {count}")
    if min_words < 1 or max_words < min_words:
        raise UsageError(f"need 1 <= min_words <= max_words, got {min_words} and {max_words}")
    target = _POOL_STEP * math.ceil(2 * count / _POOL_STEP)
    pool = _sentence_pool(target, seed, min_words, max_words)
    if len(pool) < count:
        raise UsageError(f"the standard library yields only {len(pool)} sentences of {min_words}-{max_words} "
                         f"words; asked for {count}")
    shuffled = list(pool)
    random.Random(seed).shuffle(shuffled)
    return shuffled[:count]


def natural_images(n: int, seed: int | np.random.Generator = 0, *, size: int = 32) -> np.ndarray:
    """``n`` natural images, ``n x 3 x size x size`` float32: crops of scikit-learn's two bundled sample
    photographs, each downscaled by a random factor of 2-6 (block means), randomly flipped left-right,
    normalised with CIFAR-10's statistics. Deterministic for an integer ``seed``; a generator is advanced."""
    if n < 1 or size < 1:
        raise UsageError(f"natural_images needs n >= 1 and size >= 1, got n={n}, size={size}")
    from sklearn.datasets import load_sample_images

    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    photos = [img.astype(np.float32) / 255.0 for img in load_sample_images().images]
    if size > min(min(p.shape[:2]) for p in photos) // 6:
        raise UsageError(f"natural_images: size {size} is too large for the bundled photographs")
    out = np.empty((n, 3, size, size), dtype=np.float32)
    for i in range(n):
        img = photos[int(rng.integers(len(photos)))]
        f = int(rng.integers(2, 7))
        h, w = img.shape[0] // f, img.shape[1] // f
        small = img[:h * f, :w * f].reshape(h, f, w, f, 3).mean(axis=(1, 3))
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        crop = small[y:y + size, x:x + size]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[i] = ((crop - CIFAR10_MEAN) / CIFAR10_STD).transpose(2, 0, 1)
    return out


def split_sentences(sentences: Sequence[str], fractions: Sequence[float]) -> list[list[str]]:
    """Split ``sentences`` in order into consecutive parts of the given ``fractions``
    (e.g. ``(0.8, 0.2)``); fractions summing to less than 1 leave the rest out."""
    if not fractions:
        raise UsageError("fractions must not be empty")
    if any(not 0 < f <= 1 for f in fractions):
        raise UsageError(f"fractions must lie in (0, 1], got {list(fractions)}")
    total = math.fsum(fractions)
    if total > 1 + 1e-9:
        raise UsageError(f"fractions sum to {total:g} > 1")
    n = len(sentences)
    bounds = [0]
    running = 0.0
    for f in fractions:
        running += f
        bounds.append(min(n, round(running * n)))
    if abs(total - 1) <= 1e-9:
        bounds[-1] = n
    return [list(sentences[a:b]) for a, b in itertools.pairwise(bounds)]


def tokenize(
    model_dir: str | os.PathLike[str],
    sentences: Sequence[str],
    *,
    sequence: int = 128,
    input_names: Sequence[str] = DEFAULT_INPUT_NAMES,
) -> dict[str, np.ndarray]:
    """Tokenise ``sentences`` with the model's tokenizer into int64 ``[len(sentences), sequence]``
    arrays keyed by ``input_names`` (padded to ``sequence``, longer sentences truncated).

    ``token_type_ids`` is filled with zeros when the tokenizer does not produce it. Save the
    result with :func:`graphopt.feeds.save_feeds`.
    """
    if not sentences:
        raise UsageError("no sentences to tokenize")
    if sequence < 2:
        raise UsageError(f"sequence must be at least 2, not {sequence}")
    if isinstance(sentences, str):
        raise UsageError("sentences must be a list of strings, not one string")
    tokenizer = _tokenizer(str(Path(model_dir).resolve()))
    encoded = tokenizer(
        list(sentences), padding="max_length", truncation=True, max_length=sequence, return_tensors="np"
    )
    feeds: dict[str, np.ndarray] = {}
    for name in input_names:
        if name in encoded:
            feeds[name] = np.asarray(encoded[name], dtype=np.int64)
        elif name == "token_type_ids":
            feeds[name] = np.zeros((len(sentences), sequence), dtype=np.int64)
        else:
            raise UsageError(f"the tokenizer does not produce {name!r}; it gives {', '.join(encoded)}")
    return feeds


@functools.lru_cache(maxsize=4)
def _tokenizer(model_dir: str) -> Any:
    directory = Path(model_dir)
    if not directory.is_dir():
        raise InputError(f"{directory}: no such model directory")
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise UsageError("transformers is not installed: pip install 'graphopt[torch]'") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{directory}: cannot load a tokenizer ({reason})") from exc
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# ---------------------------------------------------------------------------------------------
# Docstring harvesting


@functools.lru_cache(maxsize=8)
def _sentence_pool(target: int, seed: int, min_words: int, max_words: int) -> tuple[str, ...]:
    """At least ``target`` distinct sentences (fewer if the library runs out), read from the
    standard library's modules in an order fixed by ``seed``."""
    files = _stdlib_files()
    random.Random(seed).shuffle(files)
    seen: dict[str, None] = {}
    for path in files:
        for sentence in _file_sentences(path):
            if min_words <= len(sentence.split()) <= max_words:
                seen.setdefault(sentence, None)
        if len(seen) >= target:
            break
    return tuple(seen)


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise InputError(f"{root}: the standard library's sources are not installed")
    found: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith((".", "config-")))
        found.extend(Path(folder) / n for n in sorted(names) if n.endswith(".py"))
    return sorted(found)


def _file_sentences(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield from _docstring_sentences(doc)


def _docstring_sentences(doc: str) -> Iterator[str]:
    for paragraph in re.split(r"\n\s*\n", doc):
        lines = paragraph.splitlines()
        if not lines or any(line[:1].isspace() or line.lstrip().startswith((">>>", "...")) for line in lines):
            continue  # code, argument lists, literal blocks
        text = " ".join(line.strip() for line in lines)
        pieces: list[str] = []
        for piece in _SPLIT.split(text):
            if pieces and pieces[-1].endswith(_ABBREVIATIONS):
                pieces[-1] += " " + piece
            else:
                pieces.append(piece)
        for sentence in pieces:
            if _is_prose(sentence):
                yield sentence


def _is_prose(sentence: str) -> bool:
    if not sentence[:1].isupper() or sentence[-1] not in ".!?" or len(sentence) > 400:
        return False
    if _BAD.search(sentence) or sentence.count("(") != sentence.count(")"):
        return False
    if sentence.count('"') % 2 or "'" in sentence.replace("'s ", "").replace("n't", "").replace("'s.", ""):
        return False
    visible = sentence.replace(" ", "")
    letters = sum(ch.isalpha() for ch in visible)
    return letters >= 0.8 * len(visible)
