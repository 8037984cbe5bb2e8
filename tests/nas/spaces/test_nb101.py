"""NAS-Bench-101: the 56-tuple notation, pruning, channel rules, and published parameter counts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from graphopt.errors import InputError
from graphopt.nas.spaces import get_space, trainable_parameter_count
from graphopt.nas.spaces.nb101 import NB101Space, prune, vertex_channels
from graphopt.predict import encode_graph, structural_features
from tests.nas.spaces._helpers import images, model_bytes, run_model

SPACE = NB101Space()

# the first cell of nb101_500_zc.json: vertex 5 has no way to the output and is pruned
DEAD_VERTEX = (
    (0, 1, 1, 1, 1, 0, 1),
    (0, 0, 0, 0, 0, 1, 1),
    (0, 0, 0, 0, 0, 0, 1),
    (0, 0, 0, 0, 1, 1, 0),
    (0, 0, 0, 0, 0, 1, 1),
    (0, 0, 0, 0, 0, 0, 0),
    (0, 0, 0, 0, 0, 0, 0),
)
DEAD_OPS = [0, 2, 2, 4, 4, 4, 1]


def _published(nasbench: Path) -> dict[str, dict[str, float]]:
    with open(nasbench / "nb101_500_zc.json") as f:
        data: dict[str, dict[str, float]] = json.load(f)["nasbench101"]["cifar10"]
    return data


def test_params_match_published(nasbench: Path) -> None:
    data = _published(nasbench)
    keys = sorted(data)
    picked = [keys[i] for i in np.random.default_rng(0).choice(len(keys), 20, replace=False)]
    assert len({data[k]["params"] for k in picked}) >= 10  # many different cell sizes
    for key in picked:
        arch = SPACE.parse(key)
        assert SPACE.to_string(arch) == key
        count = trainable_parameter_count(SPACE.build(arch))
        assert round(count / 1e6, 6) == pytest.approx(data[key]["params"], abs=1e-9), key


def test_prune_and_vertex_channels() -> None:
    matrix, ops = prune(np.array(DEAD_VERTEX), DEAD_OPS)  # type: ignore[misc]
    assert ops == [0, 2, 2, 4, 4, 1]
    assert matrix.shape == (6, 6) and int(matrix.sum()) == 9
    # three interior vertices feed the output: 128 = 43 + 43 + 42; vertex 3 takes its successor's width
    assert vertex_channels(matrix, 64, 128) == [64, 43, 43, 42, 42, 128]
    assert prune(np.triu(np.ones((7, 7), dtype=int), 1) * 0, DEAD_OPS) is None


def test_dead_vertices_do_not_change_the_cell() -> None:
    a = SPACE.from_matrix(np.array(DEAD_VERTEX), DEAD_OPS)
    b = SPACE.from_matrix(np.array(DEAD_VERTEX), [0, 2, 2, 4, 4, 3, 1])  # only the dead vertex's op differs
    assert a != b and SPACE.to_string(a) != SPACE.to_string(b)
    np.testing.assert_array_equal(SPACE.one_hot(a), SPACE.one_hot(b))
    assert encode_graph(SPACE.build(a)) == encode_graph(SPACE.build(b))
    assert SPACE.one_hot(a).shape == (21 + 15,)


def test_parse_rejects_invalid_cells() -> None:
    flat = [v for row in DEAD_VERTEX for v in row]
    cases = {
        "55 integers": str(tuple(flat + DEAD_OPS)[:-1]),
        "lower triangle": str(tuple([1, *flat[1:], *DEAD_OPS])),
        "bad op": str(tuple([*flat, 0, 2, 2, 5, 4, 4, 1])),
        "no input op": str(tuple([*flat, 2, 2, 2, 4, 4, 4, 1])),
        "disconnected": str(tuple([0] * 49 + DEAD_OPS)),
        "10 edges": str(tuple([int(j > i) for i in range(7) for j in range(7)] + DEAD_OPS)),
        "text": "resnet",
    }
    for why, text in cases.items():
        with pytest.raises(InputError):
            SPACE.parse(text)
            pytest.fail(why)


def test_sample_gives_valid_distinct_cells() -> None:
    archs = SPACE.sample(np.random.default_rng(1), 40)
    assert archs == SPACE.sample(np.random.default_rng(1), 40)
    assert len(set(archs)) == 40
    for arch in archs:
        assert SPACE.parse(SPACE.to_string(arch)) == arch
        assert int(SPACE.pruned(arch)[0].sum()) <= 9
    assert isinstance(get_space("nb101"), NB101Space)


def test_graph_runs_and_keeps_the_topology() -> None:
    arch = SPACE.from_matrix(np.array(DEAD_VERTEX), DEAD_OPS)
    model = SPACE.build(arch)
    ops = [n.op_type for n in model.graph]
    # per cell: 2 conv3x3 vertices + 2 max-pool vertices, 5 projections from the input (4 vertices + output)
    assert ops.count("Conv") == 1 + 9 * (2 + 5)
    assert ops.count("MaxPool") == 9 * 2 + 2
    assert ops.count("Concat") == 9 and ops.count("Slice") == 0
    (out,) = run_model(model, images())
    assert out.shape == (2, 10) and np.isfinite(out).all()


def test_truncation_where_widths_differ() -> None:
    # 0->1->2->out and 1->out, 0->out: vertex 2 gets 64 channels, vertex 1 65 (the remainder), so 1->2 truncates
    matrix = np.zeros((7, 7), dtype=int)
    for i, j in [(0, 1), (1, 2), (1, 6), (2, 6), (0, 6)]:
        matrix[i, j] = 1
    arch = SPACE.from_matrix(matrix, [0, 3, 4, 2, 2, 2, 1])
    small = NB101Space(stem_channels=129, stacks=1, cells_per_stack=1, image_size=8)
    model = small.build(arch)
    assert [n.op_type for n in model.graph].count("Slice") == 1
    (out,) = run_model(model, images(batch=1, size=8))
    assert out.shape == (1, 10) and np.isfinite(out).all()


def test_deterministic_build_encoding_and_features() -> None:
    arch = SPACE.sample(np.random.default_rng(2), 1)[0]
    assert model_bytes(SPACE.build(arch, seed=3)) == model_bytes(SPACE.build(arch, seed=3))
    assert encode_graph(SPACE.build(arch)) == encode_graph(SPACE.build(arch, seed=1))
    assert structural_features(SPACE.build(arch)) == structural_features(SPACE.build(arch))
