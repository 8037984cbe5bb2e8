"""Evaluation backends: the same records in process, in a process pool and on Ray; failures recorded, not fatal."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from graphopt.errors import UsageError
from graphopt.nas.backends import Outcome, ProcessPoolBackend, SerialBackend, create_backend, default_workers
from graphopt.nas.objectives import Objective
from graphopt.nas.search import Encoding, search

TOY = Encoding((5,) * 4)


def cost(arch: tuple[int, ...]) -> float:
    return float(np.dot(arch, [3.0, 1.0, 2.0, 0.5]))


def quality(arch: tuple[int, ...]) -> float:
    if arch[0] == 4 and arch[1] == 0:
        raise ValueError(f"no quality for {arch}")
    return float(np.sqrt(np.sum(arch)) + 0.1 * arch[1])


def crash(arch: tuple[int, ...]) -> float:
    if arch == (4, 4, 4, 4):
        os._exit(3)  # a worker that dies, as a crash in native code would
    return cost(arch)


OBJECTIVES = [Objective("quality", quality, maximize=True), Objective("cost", cost)]


def test_pool_gives_the_records_of_the_serial_search() -> None:
    with ProcessPoolBackend(OBJECTIVES, workers=2) as pool:
        for algorithm, budget in (("nsga2", 24), ("linas", 15)):  # a population at a time; LINAS batches
            serial = search(TOY, OBJECTIVES, budget=budget, algorithm=algorithm, seed=2, pop_size=8)
            pooled = search(TOY, OBJECTIVES, budget=budget, algorithm=algorithm, seed=2, pop_size=8, backend=pool)
            assert pooled.records == serial.records and pooled.front == serial.front, algorithm
            failed = [r for r in pooled.records if r["values"] is None]
            assert all(r["error"].startswith("ValueError: no quality for (4, 0") for r in failed)
            assert len(serial.records) == budget
        assert any(r["values"] is None for r in pooled.records)  # the failing corner was reached


@pytest.mark.slow
def test_dead_worker_fails_only_its_candidate() -> None:
    archs = [(0, 0, 0, 1), (1, 2, 3, 4), (4, 4, 4, 4)]
    with ProcessPoolBackend([Objective("cost", crash)], workers=2) as pool:
        outcomes = list(pool.imap(archs))
        assert [o.values for o in outcomes] == [[cost(archs[0])], [cost(archs[1])], None]
        assert outcomes[2].error is not None and "worker process died" in outcomes[2].error
        assert list(pool.imap([(1, 1, 1, 1)])) == [Outcome([cost((1, 1, 1, 1))])]  # the pool is back


def test_create_backend_choices_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(create_backend(OBJECTIVES, workers=1), SerialBackend)
    assert 1 <= default_workers() <= 4
    with create_backend(OBJECTIVES, workers=2) as pool:
        assert isinstance(pool, ProcessPoolBackend) and pool.workers == 2
    with pytest.raises(UsageError, match="unknown backend"):
        create_backend(OBJECTIVES, "dask")
    with pytest.raises(UsageError, match="workers must be >= 1"):
        create_backend(OBJECTIVES, workers=0)
    with pytest.raises(UsageError, match="--address is for the ray backend"):
        create_backend(OBJECTIVES, address="auto")
    with pytest.raises(UsageError, match="picklable"):
        create_backend([Objective("lambda", lambda a: 1.0)], workers=2)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(UsageError, match=r"pip install 'graphopt\[ray\]'"):
        create_backend(OBJECTIVES, "ray")


@pytest.mark.slow
def test_ray_gives_the_records_of_the_serial_search() -> None:
    ray = pytest.importorskip("ray")
    serial = search(TOY, OBJECTIVES, budget=24, algorithm="nsga2", seed=5, pop_size=8)
    with create_backend(OBJECTIVES, "ray", num_cpus=2) as backend:
        assert ray.is_initialized()
        remote = search(TOY, OBJECTIVES, budget=24, algorithm="nsga2", seed=5, pop_size=8, backend=backend)
        crashed = list(create_backend([Objective("cost", crash)], "ray").imap([(4, 4, 4, 4), (0, 1, 2, 3)]))
    assert not ray.is_initialized()  # the backend that started Ray shut it down
    assert remote.records == serial.records
    assert crashed[0].values is None and crashed[0].error and crashed[1] == Outcome([cost((0, 1, 2, 3))])
