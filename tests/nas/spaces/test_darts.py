"""DARTS / NAS-Bench-301: genotype notation and the CIFAR network checked against DARTS_V2's published size."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.errors import InputError
from graphopt.nas.spaces import get_space, trainable_parameter_count
from graphopt.nas.spaces.darts import DARTS_V2, DARTS_V2_TEXT, DartsSpace
from graphopt.predict import encode_graph, structural_features
from tests.nas.spaces._helpers import images, model_bytes, run_model

SPACE = DartsSpace()


def test_darts_v2_has_the_published_size() -> None:
    count = trainable_parameter_count(SPACE.build(DARTS_V2))
    # DARTS (Liu et al., 2019), Table 1: DARTS (second order) 3.3M parameters on CIFAR-10 (C=36, 20 cells);
    # the reference training log prints "param size = 3.349342MB"
    assert round(count / 1e6, 1) == 3.3
    assert count == 3_349_342


def test_notation_round_trip_and_canonical_order() -> None:
    assert SPACE.parse(SPACE.to_string(DARTS_V2)) == DARTS_V2
    # the published reduce cell lists node 1's edges as (skip, 2), (max_pool, 1): kept sorted by state
    assert DARTS_V2[1][2:4] == (("max_pool_3x3", 1), ("skip_connect", 2))
    assert SPACE.parse(DARTS_V2_TEXT.replace("[2, 3, 4, 5]", "range(2, 6)")) == DARTS_V2


@pytest.mark.parametrize("text", [
    "resnet",
    DARTS_V2_TEXT.replace("('sep_conv_3x3', 0)", "('conv_9x9', 0)", 1),
    DARTS_V2_TEXT.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 5)"),
    DARTS_V2_TEXT.replace("('sep_conv_3x3', 1), ('sep_conv_3x3', 0)", "('sep_conv_3x3', 0), ('sep_conv_3x3', 0)"),
    DARTS_V2_TEXT.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=[2, 3]"),
    DARTS_V2_TEXT.replace(", ('max_pool_3x3', 1)], reduce_concat", "], reduce_concat"),
])
def test_parse_rejects_malformed(text: str) -> None:
    with pytest.raises(InputError):
        SPACE.parse(text)


def test_sample_and_one_hot() -> None:
    archs = SPACE.sample(np.random.default_rng(0), 20)
    assert archs == SPACE.sample(np.random.default_rng(0), 20) and len(set(archs)) == 20
    for arch in archs:
        assert SPACE.parse(SPACE.to_string(arch)) == arch
        vec = SPACE.one_hot(arch)
        assert vec.shape == (196,) and vec.sum() == 16
    assert isinstance(get_space("darts"), DartsSpace)


def test_graph_structure_runs_and_is_deterministic() -> None:
    small = DartsSpace(channels=8, layers=5)
    model = small.build(DARTS_V2, seed=1)
    ops = [n.op_type for n in model.graph]
    # reductions at cells 1 and 3: one Concat per cell, plus the factorized reduce that preprocesses the cell
    # after each reduction (the reduce cell's skips read node 0, stride 1: identities)
    assert ops.count("Concat") == 5 + 2
    assert ops.count("MaxPool") == 2 * 5
    # normal cells: 5 sep convs (4 convs each), 1 dil conv (2), 2 preprocessing convs (3 for the factorized reduce)
    assert ops.count("Conv") == 1 + 3 * (5 * 4 + 2 + 2) + 2 + 2 * 2
    assert model_bytes(model) == model_bytes(small.build(DARTS_V2, seed=1))
    (out,) = run_model(model, images())
    assert out.shape == (2, 10) and np.isfinite(out).all()
    text = encode_graph(model)
    assert text == encode_graph(small.build(DARTS_V2, seed=2))
    assert "Conv(_, Param[8,1,3,3])[dilations=(2,2), group=8" in text  # the dilated depthwise conv of dil_conv_3x3
    assert structural_features(model) == structural_features(small.build(DARTS_V2))
