"""The facade: shared work gives the same scores, synthesised inputs are seeded, bad data is refused."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.errors import InputError
from graphopt.nas.metrics import make_input, score_model, score_model_all

SHARED = ["jacov", "nwot", "snip", "grad_norm", "synflow", "params"]


def test_score_model_all_equals_one_at_a_time(tiny, batch):
    data, labels = {"input": batch[0]}, batch[1]
    timings: dict[str, float] = {}
    together = score_model_all(tiny, SHARED, data=data, labels=labels, timings=timings)
    assert together == {m: pytest.approx(score_model(tiny, m, data=data, labels=labels), rel=1e-6) for m in SHARED}
    assert set(timings) == set(SHARED)


def test_synthesised_inputs_are_seeded(tiny):
    a, b, c = make_input(tiny, seed=1, batch_size=5), make_input(tiny, seed=1, batch_size=5), make_input(tiny, seed=2)
    np.testing.assert_array_equal(a.feeds["input"], b.feeds["input"])
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.feeds["input"].shape == (5, 3, 6, 6) and a.labels.max() < 3
    assert not np.array_equal(a.feeds["input"][:5], c.feeds["input"][:5])


def test_bad_data_is_an_input_error(tiny):
    with pytest.raises(InputError):
        make_input(tiny, data={"other": np.zeros((2, 3, 6, 6), np.float32)})
    with pytest.raises(InputError, match="integer class indices"):
        make_input(tiny, data={"input": np.zeros((2, 3, 6, 6), np.float32)}, labels=np.array([0.5, 1.0]))
