"""Benchmarking: latency, throughput, session-creation time and peak memory of ONNX models.

Measurements run in a fresh Python process (:mod:`graphopt._bench_worker`), never in the caller's:
the caller's own memory, threads and warm caches stay out of the numbers, and a model that
crashes onnxruntime or never finishes costs an error, not the caller. The worker creates one
onnxruntime session per model, warms each up, then runs the models in alternation, rotating
the order each round (A B, B A, A B, ...), so that noise on a busy machine hits all of them alike
and no model always runs first; with two or more models each round gives a ratio (model / first
model) and the report summarises those ratios.

Peak memory (``ModelBench.peak_mib``) is the largest increase of the worker's resident set size
(RSS) over its value just before the model's session is created, reached while the session is
created and while its warm-up runs execute: the memory that loading and running this model
needs on top of what the worker (and the sessions of the models before it) already held. On
Linux it comes from the kernel's RSS high-water mark (``VmHWM``), reset at the start of each
model's phase, so transient peaks count; elsewhere it falls back to RSS readings at the ends
of the phase and to ``getrusage`` ``ru_maxrss`` where that rose during the phase (a lower
bound; ``BenchReport.memory_method`` says which). See :class:`ModelBench` for the other
memory fields.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from graphopt.errors import (
    CheckFailed,
    GraphoptError,
    InputError,
    InvalidModelError,
    UnsupportedError,
    UsageError,
)

__all__ = ["BenchReport", "LatencyRatio", "ModelBench", "benchmark"]

logger = logging.getLogger(__name__)

_ERRORS: dict[str, type[GraphoptError]] = {
    cls.__name__: cls for cls in (InputError, InvalidModelError, UnsupportedError, UsageError, CheckFailed)
}


@dataclasses.dataclass(frozen=True)
class ModelBench:
    """One model's measurements. Latencies are wall-clock milliseconds of ``session.run``
    (all outputs fetched) on the whole feed batch; memory is in MiB of the worker's RSS.

    - ``peak_mib``: peak RSS while creating the session and running the warm-up, minus the RSS
      just before the session was created (see the module docstring).
    - ``session_rss_mib``: RSS right after session creation minus RSS right before (what the live
      session keeps: weights, optimised graph, initial buffers).
    - ``warmup_rss_mib``: RSS after the warm-up runs minus RSS after session creation (arena and
      buffers the session keeps once it has run).
    """

    path: str
    runs: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    throughput: float
    session_ms: float
    peak_mib: float
    session_rss_mib: float
    warmup_rss_mib: float
    providers: tuple[str, ...]
    latencies_ms: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["providers"] = list(self.providers)
        data["latencies_ms"] = list(self.latencies_ms)
        return data


@dataclasses.dataclass(frozen=True)
class LatencyRatio:
    """Latency of ``models[model]`` over ``models[baseline]``, one ratio per alternating round
    (both runs of a round are adjacent in time), summarised by median, p10 and p90."""

    model: int
    baseline: int
    median: float
    p10: float
    p90: float
    ratios: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["ratios"] = list(self.ratios)
        return data


@dataclasses.dataclass(frozen=True)
class BenchReport:
    """Everything one :func:`benchmark` call measured.

    ``run_order`` lists the model index of every timed run in the order they ran (``0 1 1 0 0 1 ...``).
    ``baseline_rss_mib`` is the worker's RSS before any session existed; ``final_rss_mib`` its RSS
    after the timed runs; ``timed_growth_mib`` its peak RSS during the timed runs minus its RSS
    before them (near 0 unless runs keep allocating); ``ru_maxrss_mib`` is ``getrusage``'s lifetime
    maximum, reported as read: on Linux a process started by ``exec`` inherits its parent's value,
    so it can exceed anything the worker itself used.
    """

    models: tuple[ModelBench, ...]
    ratios: tuple[LatencyRatio, ...]
    batch_size: int
    warmup: int
    rounds: int
    run_order: tuple[int, ...]
    threads: int | None
    provider: str | None
    memory_method: str
    baseline_rss_mib: float
    final_rss_mib: float
    timed_growth_mib: float
    ru_maxrss_mib: float
    onnxruntime: str
    cpu_count: int | None
    wall_s: float

    @property
    def ratio(self) -> LatencyRatio | None:
        """The second model against the first (the ``--vs`` comparison), if there are two."""
        return self.ratios[0] if self.ratios else None

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["models"] = [m.to_dict() for m in self.models]
        data["ratios"] = [r.to_dict() for r in self.ratios]
        data["run_order"] = list(self.run_order)
        return data


def benchmark(
    models: Sequence[str | os.PathLike[str]],
    feeds: Mapping[str, np.ndarray] | str | os.PathLike[str],
    *,
    threads: int | None = None,
    provider: str | None = None,
    warmup: int = 5,
    runs: int = 30,
    min_seconds: float = 0.5,
    max_runs: int = 1000,
    batch_size: int | None = None,
    timeout: float | None = 600.0,
) -> BenchReport:
    """Measure ``models`` (ONNX files) on ``feeds`` in a separate worker process.

    ``feeds`` is a mapping of input name to array, or the path of an ``.npz``; every run feeds
    the whole batch to each model. Each model gets ``warmup`` untimed runs, then the models run
    in alternation for at least ``runs`` rounds, and for more rounds (up to ``max_runs``) while
    all timed runs together took less than ``min_seconds``. ``threads=None`` keeps
    onnxruntime's default thread pool; ``provider`` as in :func:`graphopt.runtime.make_session`.
    Throughput is ``batch_size`` (default: the feeds' common axis-0 size) over the median
    latency. The whole worker run is limited to ``timeout`` seconds.

    Raises :class:`InputError` (or a subclass) when a model or the feeds are rejected,
    :class:`UsageError` for bad settings, :class:`CheckFailed` when the worker crashes or times out.
    """
    paths = [Path(m) for m in models]
    if not paths:
        raise UsageError("benchmark needs at least one model")
    _check_settings(threads=threads, warmup=warmup, runs=runs, min_seconds=min_seconds, max_runs=max_runs,
                    batch_size=batch_size, timeout=timeout)
    for path in paths:
        if not path.is_file():
            raise InputError(f"{path}: no such file")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="graphopt-bench-") as tmp:
        if isinstance(feeds, Mapping):
            feed_path = Path(tmp) / "feeds.npz"
            arrays: dict[str, Any] = {name: np.asarray(array) for name, array in feeds.items()}
            np.savez(feed_path, **arrays)
        else:
            feed_path = Path(feeds)
            if not feed_path.is_file():
                raise InputError(f"{feed_path}: no such file")
        config = {
            "models": [str(p.resolve()) for p in paths],
            "names": [str(p) for p in paths],
            "feeds": str(feed_path.resolve()),
            "threads": threads,
            "provider": provider,
            "warmup": warmup,
            "runs": runs,
            "min_seconds": min_seconds,
            "max_runs": max(max_runs, runs),
            "batch_size": batch_size,
        }
        raw = _run_worker(config, timeout)
    # Report the paths as the caller gave them.
    for entry, path in zip(raw["models"], paths):
        entry["path"] = str(path)
    return _build_report(raw, warmup=warmup, threads=threads, provider=provider,
                         wall_s=time.perf_counter() - started)


def _check_settings(*, threads: int | None, warmup: int, runs: int, min_seconds: float, max_runs: int,
                    batch_size: int | None, timeout: float | None) -> None:
    if threads is not None and threads < 1:
        raise UsageError(f"threads must be at least 1 (or None for onnxruntime's default), got {threads}")
    if warmup < 0:
        raise UsageError(f"warmup must be 0 or more, got {warmup}")
    if runs < 1:
        raise UsageError(f"runs must be at least 1, got {runs}")
    if max_runs < 1:
        raise UsageError(f"max_runs must be at least 1, got {max_runs}")
    if min_seconds < 0:
        raise UsageError(f"min_seconds must be 0 or more, got {min_seconds}")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, got {batch_size}")
    if timeout is not None and timeout <= 0:
        raise UsageError(f"timeout must be positive, got {timeout}")


def _worker_command() -> list[str]:
    return [sys.executable, "-m", "graphopt._bench_worker"]


def _worker_env() -> dict[str, str]:
    """The caller's environment, with this graphopt first on the path (works from a source tree)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    return env


def _run_worker(config: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    logger.info("benchmarking %d model(s) in a worker process", len(config["models"]))
    try:
        proc = subprocess.run(
            _worker_command(), input=json.dumps(config), capture_output=True, text=True,
            timeout=timeout, env=_worker_env(), check=False,
        )
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"the benchmark did not finish within {timeout:g} s (the worker was stopped); "
                          "allow more time or fewer runs") from None
    except OSError as exc:
        raise CheckFailed(f"cannot start the benchmark worker: {exc.strerror or exc}") from exc
    if proc.stderr.strip():
        logger.debug("benchmark worker stderr:\n%s", proc.stderr.rstrip())
    payload = _parse_payload(proc.stdout)
    if payload is not None and "result" in payload:
        return dict(payload["result"])
    if payload is not None and "error" in payload:
        error = payload["error"]
        raise _ERRORS.get(str(error.get("type")), CheckFailed)(str(error.get("message", "unknown error")))
    raise CheckFailed(_crash_message(proc.returncode, proc.stderr))


def _parse_payload(stdout: str) -> dict[str, Any] | None:
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        return None
    try:
        payload = json.loads(lines[-1])
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _crash_message(returncode: int, stderr: str) -> str:
    if returncode < 0:
        try:
            how = f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"was killed by signal {-returncode}"
        if returncode == -signal.SIGKILL:
            how += " (out of memory?)"
    else:
        how = f"exited with status {returncode} without a report"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    detail = f": {lines[-1][:300]}" if lines else ""
    return f"the benchmark worker {how}{detail}"


def _build_report(raw: dict[str, Any], *, warmup: int, threads: int | None, provider: str | None,
                  wall_s: float) -> BenchReport:
    batch = int(raw["batch_size"])
    models = []
    for entry in raw["models"]:
        samples = np.asarray(entry["latencies_ms"], dtype=np.float64)
        median = float(np.median(samples))
        models.append(ModelBench(
            path=entry["path"],
            runs=int(samples.size),
            median_ms=median,
            p90_ms=float(np.percentile(samples, 90)),
            mean_ms=float(samples.mean()),
            min_ms=float(samples.min()),
            throughput=batch / (median / 1e3) if median > 0 else float("inf"),
            session_ms=float(entry["session_ms"]),
            peak_mib=float(entry["peak_mib"]),
            session_rss_mib=float(entry["session_rss_mib"]),
            warmup_rss_mib=float(entry["warmup_rss_mib"]),
            providers=tuple(entry["providers"]),
            latencies_ms=tuple(float(x) for x in samples),
        ))
    ratios = []
    base = np.asarray(models[0].latencies_ms) if models else np.empty(0)
    for index, model in enumerate(models[1:], start=1):
        per_round = np.asarray(model.latencies_ms) / np.maximum(base, 1e-9)
        ratios.append(LatencyRatio(
            model=index,
            baseline=0,
            median=float(np.median(per_round)),
            p10=float(np.percentile(per_round, 10)),
            p90=float(np.percentile(per_round, 90)),
            ratios=tuple(float(x) for x in per_round),
        ))
    return BenchReport(
        models=tuple(models),
        ratios=tuple(ratios),
        batch_size=batch,
        warmup=warmup,
        rounds=models[0].runs if models else 0,
        run_order=tuple(int(i) for i in raw["order"]),
        threads=threads,
        provider=provider,
        memory_method=str(raw["memory_method"]),
        baseline_rss_mib=float(raw["baseline_rss_mib"]),
        final_rss_mib=float(raw["final_rss_mib"]),
        timed_growth_mib=float(raw["timed_growth_mib"]),
        ru_maxrss_mib=float(raw["ru_maxrss_mib"]),
        onnxruntime=str(raw["onnxruntime"]),
        cpu_count=raw.get("cpu_count"),
        wall_s=wall_s,
    )
