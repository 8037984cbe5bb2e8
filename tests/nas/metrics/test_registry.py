"""The metric registry: descriptors, aliases, unknown names."""

from __future__ import annotations

import pytest

from graphopt.errors import UsageError
from graphopt.nas.metrics import METRICS, get_metric

EXPECTED = {"synflow", "snip", "grad_norm", "grasp", "fisher", "jacov", "nwot", "zen", "params", "flops"}


def test_every_metric_is_registered_and_documented():
    assert {m.name for m in METRICS.values()} >= EXPECTED
    for metric in METRICS.values():
        assert metric.doc
        assert not metric.needs_labels or metric.needs_data


def test_needs_are_declared():
    assert not get_metric("synflow").needs_data and get_metric("synflow").needs_gradients
    assert get_metric("snip").needs_labels
    assert get_metric("jacov").needs_data and not get_metric("jacov").needs_labels
    assert not get_metric("nwot").needs_gradients


@pytest.mark.parametrize(("alias", "name"), [("jacob_cov", "jacov"), ("naswot", "nwot"), ("zen-score", "zen"),
                                             ("SYNFLOW", "synflow")])
def test_aliases(alias, name):
    assert get_metric(alias).name == name


def test_unknown_metric_names_the_choices():
    with pytest.raises(UsageError, match=r"unknown metric 'nope'.*synflow"):
        get_metric("nope")
