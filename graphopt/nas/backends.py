"""Where a search evaluates its candidates: in this process, in a local process pool, or on a Ray cluster.

A backend is made for one list of objectives (:class:`graphopt.nas.objectives.Objective`, picklable) and
answers :meth:`Backend.imap`: the :class:`Outcome` of each architecture of a batch, *in the order given*,
whatever order the workers finish in, so that a seeded search records the same history on every backend.
A candidate whose objective raises gets an ``Outcome`` with the error text; a worker that dies (a crash
in onnxruntime) costs only the candidate that killed it:

``serial``  one candidate after the other in this process (``--workers 1``)
``local``   a :class:`concurrent.futures.ProcessPoolExecutor` of ``workers`` spawned processes (default
            ``min(4, cpus)``); the objectives are sent once per worker. If the pool breaks, the pending
            candidates are rerun one at a time in a fresh pool, so the culprit is found and recorded
``ray``     Ray tasks (``pip install 'graphopt[ray]'``): ``address`` joins a running cluster (``auto``, or
            ``ray://host:10001``), without it a local Ray instance is started (and shut down at
            :meth:`Backend.close`). Every node needs graphopt and the objectives' files (models, tables)

Measured objectives (latency) share the machine with the other workers: measure with ``--workers 1``
where the numbers matter.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import os
from collections.abc import Hashable, Iterator, Sequence
from typing import Any

from graphopt.errors import UsageError

__all__ = ["BACKENDS", "Backend", "Outcome", "create_backend", "default_workers", "evaluate"]

log = logging.getLogger(__name__)

BACKENDS = ("local", "ray")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """The objective values of one candidate, or why it has none."""

    values: list[float] | None
    error: str | None = None


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]


def evaluate(objectives: Sequence[Any], arch: Hashable) -> Outcome:
    """Every objective of ``arch`` (``objective.fn(arch)``); an exception becomes the outcome's error."""
    try:
        return Outcome([float(o.fn(arch)) for o in objectives])
    except Exception as exc:  # one candidate's failure is recorded, never fatal
        return Outcome(None, _error_text(exc))


def default_workers() -> int:
    """``min(4, cpus)``: the default size of the local pool."""
    return max(1, min(4, os.cpu_count() or 1))


class Backend(abc.ABC):
    """Evaluates batches of architectures against fixed objectives; a context manager (closes itself)."""

    name = ""

    def __init__(self, objectives: Sequence[Any]) -> None:
        self.objectives = list(objectives)

    @abc.abstractmethod
    def imap(self, archs: Sequence[Hashable]) -> Iterator[Outcome]:
        """The outcome of each of ``archs``, in their order."""

    def close(self) -> None:  # noqa: B027  (nothing to release by default)
        """Release workers (idempotent)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SerialBackend(Backend):
    """Evaluate in this process, one candidate after the other."""

    name = "serial"

    def imap(self, archs: Sequence[Hashable]) -> Iterator[Outcome]:
        for arch in archs:
            yield evaluate(self.objectives, arch)


_WORKER_OBJECTIVES: list[Any] = []


def _init_worker(objectives: list[Any]) -> None:
    _WORKER_OBJECTIVES[:] = objectives


def _evaluate_in_worker(arch: Hashable) -> Outcome:
    return evaluate(_WORKER_OBJECTIVES, arch)


class ProcessPoolBackend(Backend):
    """Evaluate in ``workers`` spawned processes (the objectives must be picklable)."""

    name = "local"

    def __init__(self, objectives: Sequence[Any], workers: int) -> None:
        super().__init__(objectives)
        import pickle

        if workers < 1:
            raise UsageError(f"workers must be >= 1, got {workers}")
        try:
            pickle.dumps(self.objectives)
        except Exception as exc:
            raise UsageError(f"objectives must be picklable for a process pool ({_error_text(exc)}); "
                             "use one worker") from exc
        self.workers = workers
        self._pool: Any = None

    def _executor(self, workers: int) -> Any:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(self.objectives,))

    def imap(self, archs: Sequence[Hashable]) -> Iterator[Outcome]:
        from concurrent.futures.process import BrokenProcessPool

        archs = list(archs)
        if not archs:
            return
        if self._pool is None:
            self._pool = self._executor(self.workers)
        futures = [self._pool.submit(_evaluate_in_worker, arch) for arch in archs]
        for i, future in enumerate(futures):
            try:
                yield future.result()
            except BrokenProcessPool:
                log.warning("a worker process died; rerunning %d pending candidate(s) one at a time",
                            len(archs) - i)
                self.close()
                yield from self._isolated(archs[i:])
                return

    def _isolated(self, archs: Sequence[Hashable]) -> Iterator[Outcome]:
        """Each of ``archs`` alone in a one-process pool: a crash is pinned on the candidate that caused it."""
        from concurrent.futures.process import BrokenProcessPool

        for arch in archs:
            pool = self._executor(1)
            try:
                yield pool.submit(_evaluate_in_worker, arch).result()
            except BrokenProcessPool:
                yield Outcome(None, "WorkerCrashed: the worker process died while evaluating this candidate")
            finally:
                pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("the ray backend needs Ray: pip install 'graphopt[ray]'") from None
    return ray


def _ray_evaluate(objectives: list[Any], arch: Hashable) -> Outcome:
    return evaluate(objectives, arch)


class RayBackend(Backend):
    """Evaluate as Ray tasks (one CPU each) on the cluster at ``address``, or on a local Ray instance."""

    name = "ray"

    def __init__(self, objectives: Sequence[Any], address: str | None = None, **init_options: Any) -> None:
        super().__init__(objectives)
        ray = self._ray = _import_ray()
        self._owns = not ray.is_initialized()
        if self._owns:
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, **init_options}
            if address is None:  # a local instance: its workers import graphopt from where this process does
                root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
                path = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
                options.setdefault("runtime_env", {"env_vars": {"PYTHONPATH": path}})
            try:
                ray.init(address=address, **options)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise UsageError(f"cannot start or reach Ray at {address or 'a local instance'}: "
                                 f"{' '.join(str(exc).split())[:200]}") from None
        self._objectives_ref = ray.put(self.objectives)
        self._task = ray.remote(num_cpus=1, max_retries=0)(_ray_evaluate)

    def imap(self, archs: Sequence[Hashable]) -> Iterator[Outcome]:
        refs = [self._task.remote(self._objectives_ref, arch) for arch in archs]
        for ref in refs:
            try:
                yield self._ray.get(ref)
            except Exception as exc:  # a dead worker or a lost node: this candidate fails, the search goes on
                yield Outcome(None, _error_text(exc))

    def close(self) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns = False


def create_backend(objectives: Sequence[Any], name: str = "local", *, workers: int | None = None,
                   address: str | None = None, **ray_options: Any) -> Backend:
    """``local`` with ``workers`` processes (``None``: :func:`default_workers`; 1: serial in this process),
    or ``ray`` (``address``, and ``ray.init`` options such as ``num_cpus``)."""
    if name not in BACKENDS:
        raise UsageError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    if name == "ray":
        if workers is not None:
            raise UsageError("--workers is for the local backend; Ray uses the cluster's CPUs")
        return RayBackend(objectives, address, **ray_options)
    if address is not None:
        raise UsageError("--address is for the ray backend")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise UsageError(f"workers must be >= 1, got {workers}")
    return SerialBackend(objectives) if workers == 1 else ProcessPoolBackend(objectives, workers)
