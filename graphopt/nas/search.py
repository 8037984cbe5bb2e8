"""Multi-objective architecture search under a budget of real queries.

Architectures are integer vectors (an :class:`Encoding`: NAS-Bench-201 is 6 genes in 0..4); objectives
(:class:`graphopt.nas.objectives.Objective`) are minimised, maximised ones negated. Three algorithms
spend at most ``budget`` real evaluations (a repeated architecture is answered from the cache):

``random``  uniform samples of the space
``nsga2``   pymoo's NSGA-II, driven ask/tell so that it stops at the budget
``linas``   predictor in the loop (LINAS): evaluate a random start, fit one gradient-boosting predictor per
            objective on one-hot genes, run an inner NSGA-II on the predictions, evaluate the unseen part of
            the predicted front, repeat

Candidates are evaluated a batch at a time (a population, a LINAS step) by a
:class:`graphopt.nas.backends.Backend`: in this process by default, or in a process pool or on Ray; the
records are kept in the order the algorithm asked for them, so a seeded search gives the same history on
every backend. A candidate whose objective raises (or whose worker dies) is recorded with its error and
left out of the front. ``history`` (the records of a checkpoint) pre-fills the cache: a seeded run resumed
from its checkpoint replays the same path and pays only for what it had not evaluated yet.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from graphopt.errors import InputError, UsageError
from graphopt.nas.backends import Backend, SerialBackend
from graphopt.nas.objectives import Objective

__all__ = [
    "ALGORITHMS",
    "Encoding",
    "SearchResult",
    "encoding_for",
    "hypervolume",
    "load_checkpoint",
    "pareto_mask",
    "plot_front",
    "search",
    "write_front_json",
]

log = logging.getLogger(__name__)

ALGORITHMS = ("nsga2", "random", "linas")
_FAILED = 1e30  # loss given to failed candidates inside NSGA-II (finite: crowding distances stay defined)


@dataclasses.dataclass(frozen=True)
class Encoding:
    """``choices[i]`` options for gene ``i``; ``decode`` maps a gene tuple to an architecture, ``label`` to text.

    ``canonical`` maps genes to one representative of the genes that decode to the same architecture (the
    cache key: a network is paid for once); ``size`` is the number of distinct architectures (default: the
    product of ``choices``).
    """

    choices: tuple[int, ...]
    decode: Callable[[tuple[int, ...]], Hashable] = tuple
    label: Callable[[Hashable], str] = str
    canonical: Callable[[tuple[int, ...]], tuple[int, ...]] = tuple
    size: int | None = None

    def key(self, genes: Sequence[int] | np.ndarray) -> tuple[int, ...]:
        """The cache key of ``genes``: canonical, plain ints."""
        return tuple(int(g) for g in self.canonical(tuple(int(g) for g in genes)))

    def features(self, genes: np.ndarray) -> np.ndarray:
        """One-hot features of gene rows ``(n, len(choices))``."""
        genes = np.atleast_2d(genes)
        return np.concatenate([genes[:, [i]] == np.arange(c) for i, c in enumerate(self.choices)], axis=1).astype(
            np.float32
        )


def encoding_for(space: Any) -> Encoding:
    """The integer encoding of a space: ``nb201`` (tuples of op indices) or one with integer genes of its own
    (``gene_choices``, ``decode``, ``canonical_genes``, ``size``: the ``subnet`` space)."""
    if getattr(space, "name", None) == "nb201" or type(space).__name__ == "NB201Space":
        from graphopt.nas.spaces.nb201 import OPS

        return Encoding((len(OPS),) * 6, tuple, space.to_string)
    if hasattr(space, "gene_choices") and hasattr(space, "decode"):
        return Encoding(tuple(space.gene_choices), space.decode, space.to_string,
                        getattr(space, "canonical_genes", tuple), getattr(space, "size", None))
    raise UsageError(f"search has no integer encoding for space {type(space).__name__} (supported: nb201, subnet)")


@dataclasses.dataclass
class SearchResult:
    """Every real query in order (``records``) and the indices of the non-dominated successful ones."""

    objectives: list[str]
    maximize: list[bool]
    records: list[dict[str, Any]]
    front: list[int]

    def front_records(self) -> list[dict[str, Any]]:
        return [self.records[i] for i in self.front]


class _Evaluator:
    """Real queries with a cache, a budget, recorded failures and an optional JSON checkpoint."""

    def __init__(self, encoding: Encoding, objectives: Sequence[Objective], budget: int, *,
                 history: Sequence[dict[str, Any]] = (), checkpoint: Path | None = None,
                 progress: Callable[[int, int], None] | None = None, backend: Backend | None = None) -> None:
        self.encoding, self.objectives, self.budget = encoding, list(objectives), budget
        self.backend = backend if backend is not None else SerialBackend(self.objectives)
        self.records: list[dict[str, Any]] = []
        self.cache: dict[tuple[int, ...], np.ndarray] = {}
        self.checkpoint, self.progress = checkpoint, progress
        for record in history:
            self._store(record)

    @property
    def remaining(self) -> int:
        return self.budget - len(self.records)

    def _store(self, record: dict[str, Any]) -> np.ndarray:
        genes = tuple(int(g) for g in record["genes"])
        values = record.get("values")
        loss = np.full(len(self.objectives), _FAILED)
        if values is not None:
            loss = np.array([-v if o.maximize else v for v, o in zip(values, self.objectives)], dtype=float)
        self.records.append(record)
        self.cache[genes] = loss
        return loss

    def __call__(self, genes: Sequence[int]) -> np.ndarray | None:
        """Losses of ``genes`` (cached, or one real query); ``None`` once the budget is spent."""
        return self.batch([genes])[0]

    def batch(self, rows: Sequence[Sequence[int]] | np.ndarray) -> list[np.ndarray | None]:
        """Losses of each gene row: cached, or real queries of the new ones (in order, on the backend, as far
        as the budget goes); ``None`` for a new one past the budget."""
        keys = [self.encoding.key(row) for row in rows]
        new = list(dict.fromkeys(k for k in keys if k not in self.cache))[: max(self.remaining, 0)]
        archs = [self.encoding.decode(k) for k in new]
        for key, arch, outcome in zip(new, archs, self.backend.imap(archs)):
            record = {"arch": self.encoding.label(arch), "genes": list(key), "values": outcome.values,
                      "error": outcome.error}
            if outcome.error is not None:
                log.info("candidate %s failed: %s", record["arch"], outcome.error)
            self._store(record)
            if self.checkpoint is not None:
                _write_atomic(self.checkpoint, json.dumps({"records": self.records}))
            if self.progress is not None:
                self.progress(len(self.records), self.budget)
        return [self.cache.get(k) for k in keys]

    def result(self) -> SearchResult:
        ok = [i for i, r in enumerate(self.records) if r["values"] is not None]
        losses = np.array([self.cache[tuple(self.records[i]["genes"])] for i in ok]).reshape(len(ok), -1)
        front = [ok[i] for i in np.flatnonzero(pareto_mask(losses))] if ok else []
        return SearchResult([o.name for o in self.objectives], [o.maximize for o in self.objectives],
                            self.records, front)


def pareto_mask(losses: np.ndarray) -> np.ndarray:
    """Rows of ``losses`` (minimised) that no other row dominates; of duplicate rows the first is kept."""
    losses = np.asarray(losses, dtype=float)
    keep = np.ones(len(losses), dtype=bool)
    for i, row in enumerate(losses):
        dominated = np.all(losses <= row, axis=1) & np.any(losses < row, axis=1)
        earlier_same = np.all(losses[:i] == row, axis=1)
        keep[i] = not dominated.any() and not earlier_same.any()
    return keep


def hypervolume(losses: np.ndarray, ref: Sequence[float]) -> float:
    """Hypervolume (pymoo) of minimised ``losses`` with reference point ``ref``; 0 for no point."""
    from pymoo.indicators.hv import HV

    losses = np.asarray(losses, dtype=float).reshape(-1, len(ref))
    inside = losses[np.all(losses < np.asarray(ref), axis=1)]
    return float(HV(ref_point=np.asarray(ref, dtype=float))(inside)) if len(inside) else 0.0


def search(encoding: Encoding, objectives: Sequence[Objective], *, budget: int, algorithm: str = "nsga2",
           seed: int = 0, pop_size: int = 20, history: Sequence[dict[str, Any]] = (),
           checkpoint: str | Path | None = None, progress: Callable[[int, int], None] | None = None,
           backend: Backend | None = None) -> SearchResult:
    """Search with ``algorithm`` (one of :data:`ALGORITHMS`) for at most ``budget`` real queries, evaluated on
    ``backend`` (default: in this process; :func:`graphopt.nas.backends.create_backend` for a pool or Ray,
    made for the same ``objectives``; the caller closes it)."""
    if algorithm not in ALGORITHMS:
        raise UsageError(f"unknown algorithm {algorithm!r} (choose from {', '.join(ALGORITHMS)})")
    if budget < 1 or pop_size < 2:
        raise UsageError("budget must be >= 1 and pop_size >= 2")
    if not objectives:
        raise UsageError("give at least one objective")
    ev = _Evaluator(encoding, objectives, budget, history=history,
                    checkpoint=Path(checkpoint) if checkpoint else None, progress=progress, backend=backend)
    rng = np.random.default_rng(seed)
    if algorithm == "random":
        _random(ev, rng)
    elif algorithm == "nsga2":
        _nsga2(ev, seed, pop_size)
    else:
        _linas(ev, rng, seed, pop_size)
    return ev.result()


def _space_size(encoding: Encoding) -> int:
    return encoding.size if encoding.size is not None else int(np.prod([float(c) for c in encoding.choices]))


def _random(ev: _Evaluator, rng: np.random.Generator, count: int | None = None) -> None:
    target = len(ev.records) + (ev.remaining if count is None else min(count, ev.remaining))
    target = min(target, len(ev.records) + _space_size(ev.encoding) - len(ev.cache))
    high = np.array(ev.encoding.choices)
    rows: dict[tuple[int, ...], None] = {}
    while len(ev.records) + len(rows) < target:  # the draws a one-at-a-time loop would make, as one batch
        genes = ev.encoding.key(rng.integers(0, high))
        if genes not in ev.cache:
            rows[genes] = None
    ev.batch(list(rows))


def _nsga(n_var: int, high: np.ndarray, n_obj: int, pop_size: int) -> tuple[Any, Any]:
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.problem import Problem
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair
    from pymoo.operators.sampling.rnd import IntegerRandomSampling

    problem = Problem(n_var=n_var, n_obj=n_obj, xl=np.zeros(n_var), xu=high - 1, vtype=int)
    algo = NSGA2(pop_size=pop_size, sampling=IntegerRandomSampling(),
                 crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
                 mutation=PM(eta=20, vtype=float, repair=RoundingRepair()), eliminate_duplicates=True)
    return problem, algo


def _nsga2(ev: _Evaluator, seed: int, pop_size: int, stall: int = 30) -> None:
    from pymoo.core.evaluator import Evaluator
    from pymoo.problems.static import StaticProblem

    high = np.array(ev.encoding.choices)
    problem, algo = _nsga(len(high), high, len(ev.objectives), pop_size)
    algo.setup(problem, seed=seed, termination=("n_gen", 10**9))
    idle = 0
    while ev.remaining > 0 and len(ev.cache) < _space_size(ev.encoding) and idle < stall:
        before = len(ev.records)
        pop = algo.ask()
        losses = ev.batch(pop.get("X").astype(int))
        if any(loss is None for loss in losses):
            break  # budget spent in the middle of a generation
        Evaluator().eval(StaticProblem(problem, F=np.array(losses)), pop)
        algo.tell(infills=pop)
        idle = idle + 1 if len(ev.records) == before else 0


def _predicted_problem() -> Any:
    """A pymoo problem class whose objectives are the predictors' outputs on one-hot genes."""
    from pymoo.core.problem import Problem

    class _Predicted(Problem):  # type: ignore[misc]
        def __init__(self, enc: Encoding, models: list[Any], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.enc, self.models = enc, models

        def _evaluate(self, genes: np.ndarray, out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
            feats = self.enc.features(genes.astype(int))
            out["F"] = np.column_stack([m.predict(feats) for m in self.models])

    return _Predicted


def _linas(ev: _Evaluator, rng: np.random.Generator, seed: int, pop_size: int, inner_gens: int = 25) -> None:
    from pymoo.optimize import minimize
    from sklearn.ensemble import GradientBoostingRegressor

    _Predicted = _predicted_problem()
    enc, high = ev.encoding, np.array(ev.encoding.choices)
    size = _space_size(enc)
    visited: dict[tuple[int, ...], np.ndarray] = {}  # what this run has asked for, in order (replays a checkpoint)

    def visit(rows: Sequence[tuple[int, ...]]) -> bool:
        """Evaluate ``rows`` as one batch; False once the budget stops it."""
        for genes, loss in zip(rows, ev.batch(rows)):
            if loss is None:
                return False
            visited[genes] = loss
        return True

    def explore(count: int) -> bool:
        target = min(len(visited) + count, size)
        rows: dict[tuple[int, ...], None] = {}
        while len(visited) + len(rows) < target:
            genes = enc.key(rng.integers(0, high))
            if genes not in visited:
                rows[genes] = None
        return visit(list(rows))

    explore(max(10, ev.budget // 5))
    batch = max(5, ev.budget // 20)
    step = 0
    while ev.remaining > 0 and len(visited) < size:
        done = [(g, loss) for g, loss in visited.items() if loss[0] < _FAILED]
        if len(done) < 2:
            explore(batch)
            continue
        x = enc.features(np.array([g for g, _ in done]))
        y = np.array([loss for _, loss in done])
        models = [GradientBoostingRegressor(n_estimators=100, max_depth=3, random_state=seed).fit(x, y[:, j])
                  for j in range(y.shape[1])]

        template, algo = _nsga(len(high), high, y.shape[1], max(pop_size, 2 * batch))
        problem = _Predicted(enc, models, n_var=template.n_var, n_obj=template.n_obj, xl=template.xl, xu=template.xu,
                             vtype=int)
        res = minimize(problem, algo, ("n_gen", inner_gens), seed=seed + step, verbose=False)
        step += 1
        front = np.atleast_2d(res.X).astype(int)
        predicted = np.column_stack([m.predict(enc.features(front)) for m in models])
        order = np.lexsort(predicted.T[::-1])  # by the first objective, ties by the next
        fresh = list(dict.fromkeys(t for t in (enc.key(front[i]) for i in order) if t not in visited))
        if not visit(fresh[:batch]):
            return
        if len(fresh) < batch:  # the predicted front is already known: explore instead
            explore(batch - len(fresh))


def load_checkpoint(path: str | Path) -> list[dict[str, Any]]:
    """The records of a checkpoint written by :func:`search` (``InputError`` if unreadable)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        records = data["records"]
        for r in records:
            if not isinstance(r["genes"], list) or ("values" not in r):
                raise ValueError("record without genes or values")
        return list(records)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a search checkpoint ({exc})") from exc


def _umask_mode(tmp: str) -> None:
    """Give a ``mkstemp`` file (0600) the mode a plain ``open`` would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        _umask_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_front_json(path: str | Path, result: SearchResult, **extra: Any) -> None:
    """The front (architectures and objective values), query and failure counts, atomically."""
    data = {
        "objectives": [{"name": n, "maximize": m} for n, m in zip(result.objectives, result.maximize)],
        "queries": len(result.records),
        "failures": sum(r["values"] is None for r in result.records),
        "front": [{"arch": r["arch"], **dict(zip(result.objectives, r["values"]))} for r in result.front_records()],
        "failed": [{"arch": r["arch"], "error": r.get("error")} for r in result.records if r["values"] is None],
        **extra,
    }
    _write_atomic(Path(path), json.dumps(data, indent=2))


def plot_front(path: str | Path, result: SearchResult, title: str = "") -> None:
    """A PNG of every successful query and the front over the first two objectives (one: values by query)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in result.records if r["values"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if len(result.objectives) >= 2:
        ax.scatter([r["values"][0] for r in ok], [r["values"][1] for r in ok], s=10, c="0.7", label="evaluated")
        front = sorted((r["values"][0], r["values"][1]) for r in result.front_records())
        ax.plot(*zip(*front), "o-", c="C3", label="Pareto front") if front else None
        ax.set_xlabel(result.objectives[0])
        ax.set_ylabel(result.objectives[1])
    else:
        ax.plot([r["values"][0] for r in ok], ".", c="0.5")
        ax.set_xlabel("query")
        ax.set_ylabel(result.objectives[0])
    ax.set_title(title or f"{len(result.records)} queries, {len(result.front)} on the front")
    ax.legend(loc="best") if len(result.objectives) >= 2 else None
    fig.tight_layout()
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100)
        _umask_mode(tmp)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
