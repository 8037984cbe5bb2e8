"""graphopt.data: standard-library sentences, splits and tokenisation into feeds."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from graphopt.data import CIFAR10_MEAN, CIFAR10_STD, natural_images, split_sentences, stdlib_sentences, tokenize
from graphopt.errors import InputError, UsageError
from graphopt.feeds import load_feeds, save_feeds


def test_stdlib_sentences_are_deterministic_and_distinct() -> None:
    first = stdlib_sentences(120, seed=0)
    assert first == stdlib_sentences(120, seed=0)
    assert len(first) == 120 and len(set(first)) == 120
    assert stdlib_sentences(30, seed=0) == first[:30]  # small requests share one pool
    other = stdlib_sentences(120, seed=1)
    assert other != first and len(set(other) & set(first)) < 60


def test_stdlib_sentences_are_prose() -> None:
    sentences = stdlib_sentences(300, seed=2, min_words=6, max_words=25)
    for sentence in sentences:
        assert 6 <= len(sentence.split()) <= 25, sentence
        assert sentence[0].isupper() and sentence[-1] in ".!?", sentence
        assert not re.search(r">>>|`|\n|\t|::|__|=", sentence), sentence
    # Real English from the docs, not identifiers: common words occur.
    words = {w.lower().strip(".,;:!?()") for s in sentences for w in s.split()}
    assert {"the", "is", "a", "of", "to"} <= words


def test_stdlib_sentences_rejects_bad_arguments() -> None:
    with pytest.raises(UsageError, match="count"):
        stdlib_sentences(0)
    with pytest.raises(UsageError, match="min_words"):
        stdlib_sentences(5, min_words=10, max_words=5)


def test_split_sentences() -> None:
    items = [f"s{i}" for i in range(10)]
    train, test = split_sentences(items, (0.8, 0.2))
    assert train == items[:8] and test == items[8:]
    a, b = split_sentences(items, (0.5, 0.25))
    assert a == items[:5] and b == items[5:8]
    parts = split_sentences(items, (1 / 3, 1 / 3, 1 / 3))
    assert [s for part in parts for s in part] == items
    with pytest.raises(UsageError, match="sum"):
        split_sentences(items, (0.8, 0.3))
    with pytest.raises(UsageError, match="fractions"):
        split_sentences(items, (0.5, -0.1))
    with pytest.raises(UsageError, match="empty"):
        split_sentences(items, ())


@pytest.fixture(scope="module")
def minilm() -> Path:
    pytest.importorskip("transformers")
    from graphopt.frontend import minilm_dir

    try:
        return minilm_dir()
    except UsageError as exc:
        pytest.skip(str(exc))


def test_tokenize_gives_int64_feeds_on_axis_0(minilm: Path, tmp_path: Path) -> None:
    sentences = stdlib_sentences(5, seed=4)
    long_sentence = " ".join(["word"] * 200) + "."
    feeds = tokenize(minilm, [*sentences, long_sentence], sequence=24)
    assert list(feeds) == ["input_ids", "attention_mask", "token_type_ids"]
    for array in feeds.values():
        assert array.dtype == np.int64 and array.shape == (6, 24)
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    assert (ids[:, 0] == 101).all()  # [CLS]
    assert mask[-1].all() and ids[-1, -1] == 102  # truncated to the sequence, ends with [SEP]
    assert set(np.unique(mask)) <= {0, 1} and not feeds["token_type_ids"].any()
    assert (ids[mask == 0] == 0).all()  # [PAD]
    path = save_feeds(feeds, tmp_path / "feeds.npz")
    loaded = load_feeds(path)
    assert all(np.array_equal(loaded[k], feeds[k]) for k in feeds)


def test_tokenize_input_names(minilm: Path) -> None:
    names = ("input_ids", "attention_mask")
    feeds = tokenize(minilm, ["One short sentence here."], sequence=8, input_names=names)
    assert list(feeds) == ["input_ids", "attention_mask"]
    with pytest.raises(UsageError, match="pixel_values"):
        tokenize(minilm, ["Hello there, general."], input_names=("pixel_values",))
    with pytest.raises(UsageError, match="no sentences"):
        tokenize(minilm, [])
    with pytest.raises(InputError, match="no such model directory"):
        tokenize(minilm / "missing", ["Some text for the model."])


def test_natural_images_are_deterministic_normalised_photo_crops() -> None:
    images = natural_images(16, 0)
    assert images.shape == (16, 3, 32, 32) and images.dtype == np.float32
    np.testing.assert_array_equal(images, natural_images(16, 0))
    assert not np.allclose(images, natural_images(16, 1))
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(natural_images(16, rng), images)  # a generator is advanced, not copied
    assert not np.allclose(natural_images(16, rng), images)
    pixels = images.transpose(1, 0, 2, 3).reshape(3, -1) * CIFAR10_STD[:, None] + CIFAR10_MEAN[:, None]
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6  # undoing CIFAR-10's normalisation gives [0, 1]
    # natural images: neighbouring pixels are strongly correlated (N(0, 1) noise would give ~0)
    left, right = images[..., :-1].ravel(), images[..., 1:].ravel()
    assert np.corrcoef(left, right)[0, 1] > 0.8
    assert natural_images(2, 0, size=16).shape == (2, 3, 16, 16)


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"n": 2, "size": 0}, {"n": 2, "size": 4000}])
def test_natural_images_reject_bad_sizes(kwargs) -> None:
    with pytest.raises(UsageError, match="natural_images"):
        natural_images(**kwargs)
