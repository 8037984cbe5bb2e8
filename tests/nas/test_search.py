"""Tests of graphopt.nas.search and graphopt.nas.objectives: toy problems with known fronts, NB201 with a
synthetic table, and (where /work/shared/data is present) the real NAS-Bench-201 tables."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import cast

import numpy as np
import pytest

from graphopt.errors import InputError, UsageError
from graphopt.nas.objectives import Objective, parse_objective, table_objective
from graphopt.nas.search import (
    ALGORITHMS,
    Encoding,
    encoding_for,
    hypervolume,
    load_checkpoint,
    pareto_mask,
    plot_front,
    search,
    write_front_json,
)
from graphopt.nas.spaces import get_space

DATA = Path("/work/shared/data/nasbench")
TOY = Encoding((6,) * 5)
WEIGHTS = np.array([3.0, 1.0, 2.0, 0.5, 1.0])


def _cost(arch: tuple[int, ...]) -> float:
    return float(np.dot(arch, WEIGHTS))


def _quality(arch: tuple[int, ...]) -> float:
    return float(np.sqrt(np.sum(arch)) + 0.1 * arch[1])


TOY_OBJECTIVES = [Objective("quality", _quality, maximize=True), Objective("cost", _cost)]


def _true_front_hv(objectives: list[Objective], ref: list[float]) -> float:
    table = np.array([[o.loss(a) for o in objectives] for a in itertools.product(range(6), repeat=5)])
    return hypervolume(table[pareto_mask(table)], ref)


def _losses(result) -> np.ndarray:
    return np.array([[-v if m else v for v, m in zip(r["values"], result.maximize)] for r in result.front_records()])


def test_pareto_mask_and_hypervolume_on_known_points() -> None:
    points = np.array([[1.0, 3.0], [2.0, 2.0], [2.0, 3.0], [3.0, 1.0], [1.0, 3.0]])
    assert pareto_mask(points).tolist() == [True, True, False, True, False]
    assert hypervolume(np.array([[0.5, 0.5]]), [1.0, 1.0]) == pytest.approx(0.25)
    assert hypervolume(np.array([[0.0, 0.5], [0.5, 0.0]]), [1.0, 1.0]) == pytest.approx(0.75)
    assert hypervolume(np.array([[2.0, 2.0]]), [1.0, 1.0]) == 0.0


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_search_respects_budget_and_returns_a_true_front(algorithm: str) -> None:
    result = search(TOY, TOY_OBJECTIVES, budget=40, algorithm=algorithm, seed=1, pop_size=8)
    genes = [tuple(r["genes"]) for r in result.records]
    assert len(genes) == 40 and len(set(genes)) == 40  # every query is new, the budget is exact
    for r in result.records:
        assert r["values"] == pytest.approx([_quality(tuple(r["genes"])), _cost(tuple(r["genes"]))])
    all_losses = np.array([[-r["values"][0], r["values"][1]] for r in result.records])
    expected = set(np.flatnonzero(pareto_mask(all_losses)).tolist())
    assert set(result.front) == expected
    again = search(TOY, TOY_OBJECTIVES, budget=40, algorithm=algorithm, seed=1, pop_size=8)
    assert again.records == result.records  # seeded: deterministic


@pytest.mark.slow
def test_guided_search_reaches_90_percent_of_true_hypervolume() -> None:
    ref = [0.0, 40.0]  # quality > 0 (negated < 0) and cost < 40 (the most is 37.5)
    true_hv = _true_front_hv(TOY_OBJECTIVES, ref)
    for algorithm, budget in (("nsga2", 150), ("linas", 80)):  # 2% and 1% of the 7,776 cells
        result = search(TOY, TOY_OBJECTIVES, budget=budget, algorithm=algorithm, seed=0, pop_size=10)
        assert hypervolume(_losses(result), ref) / true_hv >= 0.9, algorithm


def test_failures_are_recorded_and_left_out_of_the_front() -> None:
    def fragile(arch: tuple[int, ...]) -> float:
        if arch[0] == 5:
            raise RuntimeError("simulated\ncrash")
        return _cost(arch)

    objectives = [TOY_OBJECTIVES[0], Objective("cost", fragile)]
    result = search(TOY, objectives, budget=60, algorithm="nsga2", seed=0, pop_size=10)
    failed = [r for r in result.records if r["values"] is None]
    assert failed and all(r["genes"][0] == 5 and r["error"] == "RuntimeError: simulated crash" for r in failed)
    assert all(r["values"] is not None for r in result.front_records())


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_resume_from_checkpoint_replays_and_continues(tmp_path: Path, algorithm: str) -> None:
    ckpt = tmp_path / "checkpoint.json"
    search(TOY, TOY_OBJECTIVES, budget=15, algorithm=algorithm, seed=3, pop_size=6, checkpoint=ckpt)
    history = load_checkpoint(ckpt)
    assert len(history) == 15
    resumed = search(TOY, TOY_OBJECTIVES, budget=30, algorithm=algorithm, seed=3, pop_size=6, history=history)
    fresh = search(TOY, TOY_OBJECTIVES, budget=30, algorithm=algorithm, seed=3, pop_size=6)
    assert resumed.records == fresh.records


def test_load_checkpoint_rejects_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "c.json"
    bad.write_text('{"records": [{"arch": 1}]}')
    with pytest.raises(InputError, match="not a search checkpoint"):
        load_checkpoint(bad)


def test_bad_arguments_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="unknown algorithm"):
        search(TOY, TOY_OBJECTIVES, budget=5, algorithm="bogus")
    with pytest.raises(UsageError, match="budget"):
        search(TOY, TOY_OBJECTIVES, budget=0)
    with pytest.raises(UsageError, match="no integer encoding"):
        encoding_for(get_space("darts"))


def _synthetic_table(path: Path, archs: list[tuple[int, ...]]) -> Path:
    lines = ["arch,acc,lat"] + [f'"{a}",{sum(a) + 0.5 * a[2]},{np.dot(a, [1, 2, 3, 4, 5, 6])}' for a in archs]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_table_objective_on_nb201_synthetic_table(tmp_path: Path) -> None:
    space = get_space("nb201")
    # a partial table: the missing cells fail and are recorded
    archs = [cast(tuple[int, ...], a) for a in list(space.enumerate())[:3000:7]]
    csv_path = _synthetic_table(tmp_path / "t.csv", archs)
    acc = parse_objective(space, f"table:{csv_path}:acc:max")
    lat = parse_objective(space, f"table:{csv_path}:lat")
    assert acc.maximize and not lat.maximize and acc.loss(archs[5]) == -(sum(archs[5]) + 0.5 * archs[5][2])
    result = search(encoding_for(space), [acc, lat], budget=30, algorithm="random", seed=0)
    assert any(r["error"] and "not in t.csv" in r["error"] for r in result.records)
    with pytest.raises(InputError, match="no column 'nope'"):
        table_objective(space, csv_path, "nope")
    with pytest.raises(UsageError, match="bad objective"):
        parse_objective(space, "table:only")
    (tmp_path / "bad.csv").write_text('arch,acc\n"(0, 0, 0, 0, 0, 0)",high\n')
    with pytest.raises(InputError, match=r"bad\.csv:2"):
        table_objective(space, tmp_path / "bad.csv", "acc")


def test_writers_produce_json_and_png(tmp_path: Path) -> None:
    result = search(TOY, TOY_OBJECTIVES, budget=20, algorithm="random", seed=0)
    write_front_json(tmp_path / "front.json", result, seed=0)
    data = json.loads((tmp_path / "front.json").read_text())
    assert data["queries"] == 20 and len(data["front"]) == len(result.front) and data["seed"] == 0
    assert set(data["front"][0]) == {"arch", "quality", "cost"}
    plot_front(tmp_path / "front.png", result)
    assert (tmp_path / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["front.json", "front.png"]  # no temp files left


@pytest.mark.skipif(not (DATA / "nb201_hw_cifar10.csv").is_file(), reason="needs /work/shared/data/nasbench")
def test_real_nb201_tables_front_matches_the_tables() -> None:
    space = get_space("nb201")
    acc = table_objective(space, DATA / "nb201_val_acc.csv", "cifar10_valid", maximize=True)
    lat = table_objective(space, DATA / "nb201_hw_cifar10.csv", "edgegpu_latency")
    result = search(encoding_for(space), [acc, lat], budget=60, algorithm="nsga2", seed=0)
    assert len(result.records) == 60 and not any(r["error"] for r in result.records)
    for r in result.front_records():
        arch = space.parse(r["arch"])
        assert r["values"] == [acc.fn(arch), lat.fn(arch)]


def test_graph_objectives_order_cells_by_cost() -> None:
    space = get_space("nb201")
    light, heavy = (1,) * 6, (2,) * 6  # every edge 'none' against every edge a 3x3 convolution
    for kind in ("macs", "bytes", "params"):
        objective = parse_objective(space, kind)
        assert not objective.maximize and 0 < objective.fn(light) < objective.fn(heavy), kind
