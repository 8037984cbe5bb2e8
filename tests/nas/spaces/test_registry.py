"""The facade: every registered space resolves, round-trips its notation and has fixed-length one-hot vectors."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.errors import UsageError
from graphopt.nas.spaces import SPACES, SearchSpace, get_space


@pytest.mark.parametrize("name", sorted(SPACES))
def test_space_round_trips_samples(name: str) -> None:
    space = get_space(name)
    assert isinstance(space, SearchSpace) and space.name == name
    archs = space.sample(np.random.default_rng(0), 5)
    assert archs == space.sample(np.random.default_rng(0), 5)
    assert [space.parse(space.to_string(a)) for a in archs] == archs
    assert space.parse_many(["# a comment", "", *(space.to_string(a) for a in archs)]) == archs
    assert len({space.one_hot(a).shape for a in archs}) == 1


def test_unknown_space_and_bad_options() -> None:
    with pytest.raises(UsageError, match="unknown search space"):
        get_space("nb999")
    with pytest.raises(UsageError):
        get_space("nb201", channels=0)
    with pytest.raises(UsageError):
        get_space("transnas-micro", head="decoder")
