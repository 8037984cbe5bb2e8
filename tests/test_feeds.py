from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.errors import InputError, UsageError
from graphopt.feeds import (
    input_specs,
    iter_batches,
    load_feeds,
    parse_shape_overrides,
    save_feeds,
    synthesize_feeds,
)

TOKEN_MODEL = """
<ir_version: 8, opset_import: ["" : 18]>
g (int64[batch, seq] input_ids, int64[batch, seq] attention_mask) => (float[batch, seq, 4] y) <float[50, 4] table = {
0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2,
3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5,
6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6, 7, 8,
9, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1,
2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4,
5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6, 7,
8, 9}> {
  e = Gather(table, input_ids)
  m = Cast <to = 1> (attention_mask)
  axes = Constant <value = int64[1] {-1}> ()
  mu = Unsqueeze(m, axes)
  y = Mul(e, mu)
}
"""


def _token_model() -> ir.Model:
    return ir.from_onnx_text(TOKEN_MODEL)


def test_specs_find_vocabulary_bound() -> None:
    specs = {s.name: s for s in input_specs(_token_model())}
    assert specs["input_ids"].int_high == 50
    assert specs["input_ids"].shape == ("batch", "seq")
    assert specs["attention_mask"].int_high is None


def test_synthesized_token_ids_stay_in_range() -> None:
    feeds = synthesize_feeds(input_specs(_token_model()), shapes={"input_ids": (3, 7), "attention_mask": (3, 7)})
    assert feeds["input_ids"].shape == (3, 7) and feeds["input_ids"].dtype == np.int64
    assert feeds["input_ids"].min() >= 0 and feeds["input_ids"].max() < 50
    assert (feeds["attention_mask"] == 1).all()


def test_synthesized_dynamic_dims_default() -> None:
    feeds = synthesize_feeds(input_specs(_token_model()), batch=2, sequence=5)
    assert feeds["input_ids"].shape == (2, 5)


def test_shape_override_errors() -> None:
    with pytest.raises(UsageError, match="NAME=D1"):
        parse_shape_overrides(["input_ids"])
    with pytest.raises(UsageError, match="integers"):
        parse_shape_overrides(["x=a,b"])
    with pytest.raises(UsageError, match="unknown inputs"):
        synthesize_feeds(input_specs(_token_model()), shapes={"nope": (1,)})
    with pytest.raises(UsageError, match="rank"):
        synthesize_feeds(input_specs(_token_model()), shapes={"input_ids": (1, 2, 3)})


def test_load_feeds_validates(tmp_path: Path) -> None:
    specs = input_specs(_token_model())
    good = {"input_ids": np.zeros((4, 6), np.int32), "attention_mask": np.ones((4, 6), np.int64)}
    path = save_feeds(good, tmp_path / "f.npz")
    loaded = load_feeds(path, specs)
    assert loaded["input_ids"].dtype == np.int64  # safely cast
    save_feeds({"input_ids": good["input_ids"]}, tmp_path / "missing.npz")
    with pytest.raises(InputError, match="missing attention_mask"):
        load_feeds(tmp_path / "missing.npz", specs)
    save_feeds({**good, "extra": good["input_ids"]}, tmp_path / "extra.npz")
    with pytest.raises(InputError, match="unknown extra"):
        load_feeds(tmp_path / "extra.npz", specs)
    save_feeds({"input_ids": np.zeros((4,), np.int64), "attention_mask": good["attention_mask"]}, tmp_path / "r.npz")
    with pytest.raises(InputError, match="rank 2"):
        load_feeds(tmp_path / "r.npz", specs)
    save_feeds(
        {"input_ids": np.zeros((4, 6), np.float32), "attention_mask": good["attention_mask"]}, tmp_path / "t.npz"
    )
    with pytest.raises(InputError, match="dtype float32"):
        load_feeds(tmp_path / "t.npz", specs)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match=r"not a readable \.npz"):
        load_feeds(tmp_path / "junk.npz", specs)


def test_iter_batches() -> None:
    specs = input_specs(_token_model())
    feeds = {"input_ids": np.zeros((5, 3), np.int64), "attention_mask": np.ones((5, 3), np.int64)}
    sizes = [b["input_ids"].shape[0] for b in iter_batches(feeds, specs, batch_size=2)]
    assert sizes == [2, 2, 1]
    with pytest.raises(InputError, match="disagree"):
        list(iter_batches({"input_ids": feeds["input_ids"], "attention_mask": feeds["attention_mask"][:2]}, specs))
