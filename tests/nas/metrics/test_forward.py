"""Forward metrics against direct computations on a tiny conv net, NB201 sanity, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graphopt.nas.metrics import score_model
from graphopt.nas.metrics.forward import naswot_score
from graphopt.nas.spaces import get_space, trainable_parameter_count
from tests.nas.metrics.conftest import reference


def test_nwot_matches_torch(tiny, batch):
    weights, forward = reference(tiny)
    relus: list[torch.Tensor] = []
    with torch.no_grad():
        forward(torch.from_numpy(batch[0]), weights, relus=relus)
    kernel = np.zeros((8, 8))
    for a in relus:
        c = (a.reshape(8, -1) > 0).double().numpy()
        kernel += c @ c.T + (1 - c) @ (1 - c).T
    expected = np.linalg.slogdet(kernel)[1]
    assert score_model(tiny, "naswot", data={"input": batch[0]}) == pytest.approx(expected, rel=1e-9)


def test_naswot_score_is_higher_for_distinct_codes():
    distinct = np.eye(4) * 10 + 1
    similar = np.ones((4, 4)) * 10 + np.eye(4)
    assert naswot_score(distinct) > naswot_score(similar)


def test_params_and_flops(tiny):
    assert score_model(tiny, "params") == pytest.approx(trainable_parameter_count(tiny) / 1e6)
    # conv1: 36 outputs x 4 ch x 27 MACs, conv2: 36 x 4 x 4, gemm 4 x 3: FLOPs = 2 MACs + elementwise extras
    macs = 36 * 4 * 27 + 36 * 4 * 4 + 4 * 3
    assert score_model(tiny, "flops") * 1e6 >= 2 * macs


def test_nb201_params_are_the_published_count():
    space = get_space("nb201")
    model = space.build((4, 0, 3, 1, 4, 3))
    assert score_model(model, "params") == pytest.approx(0.129306)  # nb201_zc_proxies.csv, same cell


def test_zen_deterministic_and_finite(tiny):
    a, b = score_model(tiny, "zen", seed=2), score_model(tiny, "zen", seed=2)
    assert a == b and np.isfinite(a)
    assert score_model(tiny, "zen", seed=3) != a


def test_nwot_ranks_a_cell_with_convs_above_an_empty_cell():
    space = get_space("nb201", channels=4, cells_per_stage=1, image_size=8)
    empty = score_model(space.build((1,) * 6), "nwot", batch_size=16)
    convs = score_model(space.build((2,) * 6), "nwot", batch_size=16)
    assert convs > empty
