"""Objectives for architecture search: callables ``arch -> float`` that the search *minimises*.

An :class:`Objective` carries a name, the function and its sense; ``maximize=True`` objectives are
negated by :meth:`Objective.loss`, so that every search minimises. Sources:

``table:CSV:COLUMN[:max|min]``  a look-up in a CSV file whose first column holds architecture strings
                                of the space (benchmark tables such as NAS-Bench-201 accuracy or HW-NAS-Bench latency)
``bytes``, ``macs``, ``params`` the built ONNX graph's parameter bytes, multiply-accumulates or parameter count
                                (:func:`graphopt.analysis.summarize`)
``latency[:OPTION=V,...]``      onnxruntime latency (ms, median of ``repeats`` timed runs after ``warmup``) of the
                                built graph, measured by :func:`graphopt.bench.benchmark` in a worker process on
                                synthesised inputs of ``batch`` x ``sequence`` (or the ``feeds`` .npz) with
                                ``threads`` threads; defaults ``batch=1,sequence=128,threads=1,repeats=20,warmup=3``
``predictor:PATH[:max|min]``    a trained graphopt predictor (:func:`graphopt.predict.load_predictor`): its
                                architecture head for its own space, else its graph head on the built graph;
                                minimised unless ``:max``
``metric:NAME[:max|min]``       a training-free metric (:mod:`graphopt.nas.metrics`) of the built graph, seeded;
                                maximised unless ``:min``
``eval:DATA.npz[:METRIC]``      the built graph run by onnxruntime on an evaluation set: the graph's inputs, and
                                ``labels`` (``accuracy`` of the first output's argmax, maximised) or reference
                                outputs keyed by output name (``cosine``, the mean per-sample cosine similarity,
                                maximised; or ``mse``, minimised); :func:`save_eval_set` writes one
``py:MODULE:FUNCTION[:max|min]`` a user function ``f(path) -> float`` given the built graph's ONNX file (``MODULE``
                                an importable module or a ``.py`` file); minimised unless ``:max``

Every objective is picklable (process pools, Ray): models, predictors and data are loaded lazily where they
are used; the candidate's graph is built once per process and shared by its objectives.
:func:`parse_objective` turns the CLI's ``--objective`` text into an :class:`Objective`.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib
import importlib.util
import os
import tempfile
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from graphopt.errors import InputError, UsageError
from graphopt.nas.spaces import SearchSpace

__all__ = [
    "EVAL_METRICS",
    "Objective",
    "eval_objective",
    "graph_objective",
    "latency_objective",
    "metric_objective",
    "parse_objective",
    "predictor_objective",
    "python_objective",
    "save_eval_set",
    "table_objective",
]

_GRAPH_KINDS = ("bytes", "macs", "params")
EVAL_METRICS = ("accuracy", "cosine", "mse")
_LATENCY_DEFAULTS = {"batch": 1, "sequence": 128, "threads": 1, "repeats": 20, "warmup": 3}
_BUILT: list[Any] = [None, None, None]  # (space, arch, model): the last graph built in this process


def _build(space: SearchSpace, arch: Hashable) -> Any:
    """``space.build(arch, seed=0)``, reused by the next objective of the same candidate."""
    if _BUILT[0] is not space or _BUILT[1] != arch:
        _BUILT[:] = [space, arch, space.build(arch, seed=0)]
    return _BUILT[2]


class _Saved:
    """The candidate's graph as a file in a temporary folder (removed on exit)."""

    def __init__(self, space: SearchSpace, arch: Hashable) -> None:
        self.model = _build(space, arch)

    def __enter__(self) -> Path:
        import onnx_ir as ir

        self._tmp = tempfile.TemporaryDirectory(prefix="graphopt-objective-")
        path = Path(self._tmp.name) / "candidate.onnx"
        ir.save(self.model, path)
        return path

    def __exit__(self, *exc: object) -> None:
        self._tmp.cleanup()


class _Lazy:
    """Picklable callable whose loaded state (``_cache``) stays out of the pickle."""

    _cache: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_cache"}


@dataclasses.dataclass(frozen=True)
class Objective:
    """A named function of an architecture; ``maximize`` says which way is better."""

    name: str
    fn: Callable[[Any], float]
    maximize: bool = False

    def loss(self, arch: Hashable) -> float:
        """The value to minimise: ``fn(arch)``, negated when the objective is maximised."""
        value = float(self.fn(arch))
        return -value if self.maximize else value


class _Table:
    """A picklable look-up ``arch -> float`` (process pools need picklable objectives)."""

    def __init__(self, space: SearchSpace, values: dict[str, float], source: str) -> None:
        self.space, self.values, self.source = space, values, source

    def __call__(self, arch: Hashable) -> float:
        key = self.space.to_string(arch)
        if key not in self.values:
            raise KeyError(f"{key} not in {self.source}")
        return self.values[key]


def table_objective(space: SearchSpace, path: str | Path, column: str, *, maximize: bool = False) -> Objective:
    """Look ``column`` up in the CSV at ``path``, keyed by its first column (architecture strings of ``space``).

    Raises :class:`InputError` for a missing or unreadable file, an unknown column, a key the space
    cannot parse or a value that is not a number.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    values: dict[str, float] = {}
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header or column not in header[1:]:
                raise InputError(f"{path}: no column {column!r} (columns: {', '.join((header or [])[1:])})")
            index = header.index(column)
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                try:
                    key = space.to_string(space.parse(row[0]))
                    values[key] = float(row[index])
                except (ValueError, IndexError) as exc:
                    raise InputError(f"{path}:{line}: bad row ({exc})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from exc
    if not values:
        raise InputError(f"{path}: no rows")
    return Objective(column, _Table(space, values, path.name), maximize)


class _Graph:
    """Build the architecture's ONNX graph and read one cost from its summary."""

    def __init__(self, space: SearchSpace, kind: str) -> None:
        self.space, self.kind = space, kind

    def __call__(self, arch: Hashable) -> float:
        from graphopt.analysis import summarize

        summary = summarize(_build(self.space, arch))
        if self.kind == "bytes":
            return float(summary.parameter_bytes)
        if self.kind == "params":
            return float(summary.parameter_count)
        return float(summary.macs)


def graph_objective(space: SearchSpace, kind: str) -> Objective:
    """``bytes``, ``macs`` or ``params`` of the graph ``space.build(arch, seed=0)`` (minimised)."""
    if kind not in _GRAPH_KINDS:
        raise UsageError(f"unknown graph objective {kind!r} (choose from {', '.join(_GRAPH_KINDS)})")
    return Objective(kind, _Graph(space, kind), False)


class _Latency:
    def __init__(self, space: SearchSpace, options: dict[str, int], feeds: Path | None) -> None:
        self.space, self.options, self.feeds = space, options, feeds

    def __call__(self, arch: Hashable) -> float:
        from graphopt.bench import benchmark
        from graphopt.feeds import input_specs, load_feeds, synthesize_feeds

        o = self.options
        with _Saved(self.space, arch) as path:
            specs = input_specs(_build(self.space, arch))
            feeds = (load_feeds(self.feeds, specs) if self.feeds else
                     synthesize_feeds(specs, batch=o["batch"], sequence=o["sequence"], seed=0))
            report = benchmark([path], feeds, threads=o["threads"], warmup=o["warmup"], runs=o["repeats"],
                               min_seconds=0.0, max_runs=o["repeats"])
        return float(report.models[0].median_ms)


def latency_objective(space: SearchSpace, *, batch: int = 1, sequence: int = 128, threads: int = 1,
                      repeats: int = 20, warmup: int = 3, feeds: str | Path | None = None) -> Objective:
    """``latency_ms``: median onnxruntime latency of the built graph (see the module docstring), minimised."""
    options = {"batch": batch, "sequence": sequence, "threads": threads, "repeats": repeats, "warmup": warmup}
    if min(batch, sequence, threads, repeats) < 1 or warmup < 0:
        raise UsageError(f"latency options must be positive (warmup >= 0), got {options}")
    if feeds is not None and not Path(feeds).is_file():
        raise InputError(f"{feeds}: no such file")
    return Objective("latency_ms", _Latency(space, options, Path(feeds) if feeds else None), False)


class _Predicted(_Lazy):
    def __init__(self, space: SearchSpace, path: Path) -> None:
        self.space, self.path = space, path

    def __call__(self, arch: Hashable) -> float:
        from graphopt.predict import load_predictor

        if self._cache is None:
            self._cache = load_predictor(self.path)
        predictor = self._cache
        if predictor.spec.space == self.space.name and "arch" in predictor.heads:
            return float(predictor.score_archs([arch]).mean[0])
        return float(predictor.score_models([_build(self.space, arch)]).mean[0])


def predictor_objective(space: SearchSpace, path: str | Path, *, maximize: bool = False) -> Objective:
    """A trained predictor's score (file checked now, loaded where it is used)."""
    from graphopt.predict import load_predictor

    fn = _Predicted(space, Path(path))
    fn._cache = load_predictor(path)  # raises InputError for a bad file
    return Objective(f"predictor:{Path(path).stem}", fn, maximize)


class _Metric:
    def __init__(self, space: SearchSpace, name: str, seed: int, batch_size: int) -> None:
        self.space, self.name, self.seed, self.batch_size = space, name, seed, batch_size

    def __call__(self, arch: Hashable) -> float:
        from graphopt.nas.metrics import score_model

        return score_model(_build(self.space, arch), self.name, seed=self.seed, batch_size=self.batch_size)


def metric_objective(space: SearchSpace, name: str, *, maximize: bool = True, seed: int = 0,
                     batch_size: int = 16) -> Objective:
    """A training-free metric of the built graph (higher is better: maximised by default)."""
    from graphopt.nas.metrics import get_metric

    get_metric(name)
    return Objective(name, _Metric(space, name, seed, batch_size), maximize)


class _Eval(_Lazy):
    def __init__(self, space: SearchSpace, path: Path, metric: str, batch_size: int) -> None:
        self.space, self.path, self.metric, self.batch_size = space, path, metric, batch_size

    def __call__(self, arch: Hashable) -> float:
        from graphopt.feeds import input_specs, iter_batches, validate_feeds
        from graphopt.runtime import make_session

        if self._cache is None:
            self._cache = _read_npz(self.path)
        data: dict[str, np.ndarray] = self._cache
        model = _build(self.space, arch)
        specs = input_specs(model)
        missing = [s.name for s in specs if s.name not in data]
        if missing:
            raise InputError(f"{self.path.name}: no array for the graph input(s) {', '.join(missing)}")
        feeds = validate_feeds({s.name: data[s.name] for s in specs}, specs, source=self.path.name)
        names = [v.name for v in model.graph.outputs]
        if self.metric == "accuracy":
            target, index = data["labels"], 0
        else:
            keys = [n for n in names if n in data]
            if not keys:
                raise InputError(f"{self.path.name}: no reference array for the outputs {', '.join(map(str, names))}")
            target, index = data[keys[0]], names.index(keys[0])
        session = make_session(model)
        out = np.concatenate([session.run([names[index]], batch)[0] for batch in
                              iter_batches(feeds, specs, self.batch_size)], axis=0)
        if len(out) != len(target):
            raise InputError(f"{self.path.name}: {len(target)} targets for {len(out)} outputs")
        if self.metric == "accuracy":
            return float(np.mean(np.argmax(out.reshape(len(out), -1), axis=-1) == target.reshape(-1)))
        a, b = out.reshape(len(out), -1).astype(np.float64), target.reshape(len(target), -1).astype(np.float64)
        if self.metric == "mse":
            return float(np.mean((a - b) ** 2))
        norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        return float(np.mean(np.sum(a * b, axis=1) / norms))


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    from graphopt.feeds import load_feeds

    return dict(load_feeds(path))


def eval_objective(space: SearchSpace, path: str | Path, metric: str | None = None, *,
                   batch_size: int = 32) -> Objective:
    """An evaluation set's ``accuracy`` (with ``labels``), ``cosine`` or ``mse`` (against reference outputs)."""
    path = Path(path)
    data = _read_npz(path)
    metric = metric or ("accuracy" if "labels" in data else "cosine")
    if metric not in EVAL_METRICS:
        raise UsageError(f"unknown evaluation metric {metric!r} (choose from {', '.join(EVAL_METRICS)})")
    if metric == "accuracy" and "labels" not in data:
        raise InputError(f"{path}: accuracy needs a 'labels' array")
    if metric != "accuracy" and len(set(data) - {"labels"}) < 2:
        raise InputError(f"{path}: {metric} needs the graph's inputs and reference outputs keyed by output name")
    fn = _Eval(space, path, metric, batch_size)
    fn._cache = data
    return Objective(f"eval_{metric}", fn, metric != "mse")


def save_eval_set(path: str | Path, inputs: Mapping[str, np.ndarray], *, labels: np.ndarray | None = None,
                  reference: Any = None, batch_size: int = 32) -> Path:
    """Write an evaluation set for ``eval:``: ``inputs`` (samples on axis 0), and ``labels`` and/or the
    outputs of the ``reference`` model (an ``onnx_ir.Model`` or a path) on them, keyed by output name."""
    from graphopt._io import load_model
    from graphopt.feeds import input_specs, iter_batches, save_feeds
    from graphopt.runtime import make_session

    arrays = {k: np.asarray(v) for k, v in inputs.items()}
    if labels is not None:
        arrays["labels"] = np.asarray(labels)
    if reference is not None:
        model = reference if not isinstance(reference, (str, os.PathLike)) else load_model(reference)
        specs = input_specs(model)
        session = make_session(model)
        names = [str(v.name) for v in model.graph.outputs]
        runs = [session.run(names, b) for b in iter_batches({s.name: arrays[s.name] for s in specs}, specs, batch_size)]
        arrays.update({n: np.concatenate([r[i] for r in runs], axis=0) for i, n in enumerate(names)})
    return save_feeds(arrays, path)


class _Python(_Lazy):
    def __init__(self, space: SearchSpace, module: str, function: str) -> None:
        self.space, self.module, self.function = space, module, function

    def resolve(self) -> Callable[[str], float]:
        if self._cache is None:
            if self.module.endswith(".py"):
                spec = importlib.util.spec_from_file_location(Path(self.module).stem, self.module)
                if spec is None or spec.loader is None:
                    raise ImportError(f"cannot load {self.module}")
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            else:
                module = importlib.import_module(self.module)
            fn = getattr(module, self.function, None)
            if not callable(fn):
                raise AttributeError(f"{self.module} has no function {self.function!r}")
            self._cache = fn
        return self._cache  # type: ignore[no-any-return]

    def __call__(self, arch: Hashable) -> float:
        fn = self.resolve()
        with _Saved(self.space, arch) as path:
            return float(fn(str(path)))


def python_objective(space: SearchSpace, module: str, function: str, *, maximize: bool = False) -> Objective:
    """``function(path) -> float`` of ``module`` (importable name or ``.py`` file) on the built graph's file."""
    if module.endswith(".py"):
        if not Path(module).is_file():
            raise InputError(f"{module}: no such file")
        module = str(Path(module).resolve())
    fn = _Python(space, module, function)
    try:
        fn.resolve()
    except (ImportError, AttributeError, SyntaxError) as exc:
        raise UsageError(f"py:{module}:{function}: {' '.join(str(exc).split())[:200]}") from None
    return Objective(function, fn, maximize)


def _sense(parts: list[str], default: str) -> bool:
    """Pop a trailing ``max``/``min`` off ``parts``; True for max."""
    sense = parts.pop() if len(parts) > 1 and parts[-1] in ("max", "min") else default
    return sense == "max"


def _latency_options(text: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, eq, value = item.partition("=")
        if not eq or (key not in _LATENCY_DEFAULTS and key != "feeds"):
            raise UsageError(f"bad latency option {item!r} (options: {', '.join([*_LATENCY_DEFAULTS, 'feeds'])})")
        try:
            options[key] = value if key == "feeds" else int(value)
        except ValueError:
            raise UsageError(f"latency option {key} must be an integer, got {value!r}") from None
    return options


def parse_objective(space: SearchSpace, text: str) -> Objective:
    """An objective from its CLI text: ``table:``, ``bytes``/``macs``/``params``, ``latency``, ``predictor:``,
    ``metric:``, ``eval:`` or ``py:`` (see the module docstring)."""
    kind, _, rest = text.partition(":")
    if text in _GRAPH_KINDS:
        return graph_objective(space, text)
    if kind == "latency":
        return latency_objective(space, **_latency_options(rest))
    if kind in ("predictor", "metric", "py") and rest:
        parts = rest.split(":")
        maximize = _sense(parts, "max" if kind == "metric" else "min")
        if kind == "predictor":
            return predictor_objective(space, ":".join(parts), maximize=maximize)
        if kind == "metric":
            return metric_objective(space, ":".join(parts), maximize=maximize)
        if len(parts) < 2 or not all(parts):
            raise UsageError(f"bad objective {text!r} (expected py:MODULE:FUNCTION[:max|min])")
        return python_objective(space, ":".join(parts[:-1]), parts[-1], maximize=maximize)
    if kind == "eval" and rest:
        path, _, metric = rest.rpartition(":") if rest.rsplit(":", 1)[-1] in EVAL_METRICS else (rest, "", "")
        return eval_objective(space, path, metric or None)
    if not text.startswith("table:"):
        raise UsageError(f"bad objective {text!r} (expected table:CSV:COLUMN[:max|min], bytes, macs, params, "
                         "latency[:k=v,...], predictor:PATH, metric:NAME, eval:DATA.npz[:metric] or "
                         "py:MODULE:FUNCTION)")
    parts = text[len("table:"):].split(":")
    sense = "min"
    if len(parts) >= 3 and parts[-1] in ("max", "min"):
        sense = parts.pop()
    if len(parts) < 2 or not parts[-1] or not parts[0]:
        raise UsageError(f"bad objective {text!r} (expected table:CSV:COLUMN[:max|min])")
    column = parts.pop()
    return table_objective(space, ":".join(parts), column, maximize=sense == "max")
