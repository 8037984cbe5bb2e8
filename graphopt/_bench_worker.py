"""The measuring side of :mod:`graphopt.bench`, run as ``python -m graphopt._bench_worker``.

Private protocol: a JSON object of settings arrives on stdin, one JSON object leaves on stdout
(``{"result": {...}}`` or ``{"error": {"type": ..., "message": ...}}``). Everything else the
process or the libraries it loads print goes to stderr: file descriptor 1 is redirected there
before anything heavy is imported, so that stray native output cannot corrupt the report.

The worker owns no statistics: it records raw per-run latencies and memory readings, and
:mod:`graphopt.bench` turns them into a report.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from typing import Any

from graphopt.errors import one_line

_MIB = float(1 << 20)


class _Memory:
    """RSS readings of this process, and its resident high-water mark.

    On Linux the kernel's high-water mark (``VmHWM`` in ``/proc/self/status``) can be reset to the
    current RSS by writing ``5`` to ``/proc/self/clear_refs``; a reset before a phase and a read
    after it give the exact peak RSS of that phase, transient allocations included. Elsewhere
    (or when the reset is refused) only ``getrusage`` ``ru_maxrss`` is left: it cannot be reset,
    and a process started by ``exec`` from a larger parent inherits the parent's value, so it only
    says something when it rises during a phase.
    """

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.resettable = self._reset_hwm()
        self.method = "VmHWM" if self.resettable else "samples+ru_maxrss"

    def rss(self) -> int:
        return int(self._process.memory_info().rss)

    def maxrss(self) -> int:
        try:
            import resource
        except ImportError:  # Windows
            return 0
        value = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        return value if sys.platform == "darwin" else value * 1024  # bytes on macOS, KiB elsewhere

    def start_phase(self) -> tuple[int, int]:
        """Reset the high-water mark (where possible); return (rss, ru_maxrss) now."""
        if self.resettable:
            self._reset_hwm()
        return self.rss(), self.maxrss()

    def phase_peak(self, start: tuple[int, int], *samples: int) -> int:
        """Highest RSS (bytes) seen since ``start_phase`` returned ``start``."""
        if self.resettable:
            hwm = self._read_hwm()
            if hwm is not None:
                return max(hwm, *samples, start[0])
        peak = max(start[0], *samples)
        maxrss = self.maxrss()
        if maxrss > start[1]:  # the lifetime maximum rose during the phase: that rise is this phase's
            peak = max(peak, maxrss)
        return peak

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        except OSError:
            return False
        return _Memory._read_hwm() is not None

    @staticmethod
    def _read_hwm() -> int | None:
        try:
            with open("/proc/self/status") as handle:
                for line in handle:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
        return None


class _WorkerError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _load_feeds(path: str) -> dict[str, Any]:
    import numpy as np

    from graphopt.errors import GraphoptError
    from graphopt.feeds import load_feeds

    try:
        feeds = load_feeds(path)
    except GraphoptError as exc:
        raise _WorkerError(type(exc).__name__, str(exc)) from exc
    return {name: np.ascontiguousarray(array) for name, array in feeds.items()}


def _batch_size(feeds: dict[str, Any]) -> int:
    """The common size of axis 0 (samples), or 1 when the feeds disagree or are all scalars."""
    leading = {array.shape[0] for array in feeds.values() if array.ndim}
    return leading.pop() if len(leading) == 1 else 1


def _run_failed(path: str, exc: Exception) -> _WorkerError:
    return _WorkerError(
        "InputError", f"{path}: onnxruntime could not run the model on these feeds: {one_line(exc)}"
    )


def _run_once(session: Any, feeds: dict[str, Any], path: str) -> None:
    try:
        session.run(None, feeds)
    except Exception as exc:  # onnxruntime raises its own exception types for bad feeds
        raise _run_failed(path, exc) from exc


def _prime_onnxruntime(provider: str | None, threads: int | None) -> None:
    """Create and run a throwaway session, so that onnxruntime's one-time set-up (its environment,
    kernel registries, provider libraries) is not charged to whichever model comes first."""
    import numpy as np
    import onnx_ir as ir

    from graphopt.runtime import make_session

    model = ir.from_onnx_text(
        '<ir_version: 10, opset_import: ["" : 17]> prime (float[1] x) => (float[1] y) { y = Identity(x) }'
    )
    session = make_session(model, provider=provider, threads=threads)
    session.run(None, {"x": np.zeros(1, dtype=np.float32)})
    del session


def measure(config: dict[str, Any]) -> dict[str, Any]:
    import numpy as np  # noqa: F401  (imported before the baseline reading, like everything else)
    import onnxruntime

    from graphopt.errors import GraphoptError
    from graphopt.runtime import make_session

    memory = _Memory()
    paths: list[str] = list(config["models"])
    names: list[str] = list(config.get("names") or paths)  # how the caller named the models
    warmup: int = config["warmup"]
    runs: int = config["runs"]
    max_runs: int = config["max_runs"]
    min_ns = int(config["min_seconds"] * 1e9)
    feeds = _load_feeds(config["feeds"])
    batch = config["batch_size"] or _batch_size(feeds)
    try:
        _prime_onnxruntime(config["provider"], config["threads"])
    except GraphoptError as exc:  # e.g. an unknown provider
        raise _WorkerError(type(exc).__name__, str(exc)) from exc
    gc.collect()
    baseline_rss = memory.rss()

    sessions = []
    models: list[dict[str, Any]] = []
    for path, name in zip(paths, names):
        # One phase per model: session creation, then its warm-up runs. The peak of the phase
        # minus the RSS just before it is the model's peak memory.
        gc.collect()
        start = memory.start_phase()
        t0 = time.perf_counter_ns()
        try:
            session = make_session(path, provider=config["provider"], threads=config["threads"])
        except GraphoptError as exc:
            raise _WorkerError(type(exc).__name__, f"{name}: {exc}") from exc
        session_ns = time.perf_counter_ns() - t0
        rss_created = memory.rss()
        for _ in range(warmup):
            _run_once(session, feeds, name)
        rss_warm = memory.rss()
        peak = memory.phase_peak(start, rss_created, rss_warm)
        sessions.append(session)
        models.append({
            "path": path,
            "providers": list(session.get_providers()),
            "session_ms": session_ns / 1e6,
            "session_rss_mib": (rss_created - start[0]) / _MIB,
            "warmup_rss_mib": (rss_warm - rss_created) / _MIB,
            "peak_mib": (peak - start[0]) / _MIB,
        })

    # Timed runs in whole rounds, every model once per round; the order rotates from round to
    # round (A B, B A, A B, ...; with three models A B C, B C A, C A B) so that no model always
    # runs first or after the same neighbour. At least ``runs`` rounds, more while all timed runs
    # together took less than ``min_seconds``, but no more than ``max_runs`` rounds.
    timings: list[list[int]] = [[] for _ in paths]
    totals = [0] * len(paths)
    order: list[int] = []
    start = memory.start_phase()
    perf = time.perf_counter_ns
    gc.collect()
    gc.disable()
    try:
        rounds = 0
        while rounds < runs or (rounds < max_runs and sum(totals) < min_ns):
            shift = rounds % len(sessions)
            for index in [*range(shift, len(sessions)), *range(shift)]:
                session = sessions[index]
                t0 = perf()
                try:
                    session.run(None, feeds)
                except Exception as exc:  # only reachable without warm-up runs
                    raise _run_failed(names[index], exc) from exc
                elapsed = perf() - t0
                timings[index].append(elapsed)
                totals[index] += elapsed
                order.append(index)
            rounds += 1
    finally:
        gc.enable()
    final_rss = memory.rss()
    timed_peak = memory.phase_peak(start, final_rss)
    for model, samples in zip(models, timings):
        model["latencies_ms"] = [ns / 1e6 for ns in samples]
    return {
        "models": models,
        "order": order,
        "batch_size": batch,
        "memory_method": memory.method,
        "baseline_rss_mib": baseline_rss / _MIB,
        "final_rss_mib": final_rss / _MIB,
        "timed_growth_mib": (timed_peak - start[0]) / _MIB,
        "ru_maxrss_mib": memory.maxrss() / _MIB,
        "onnxruntime": onnxruntime.__version__,
        "cpu_count": os.cpu_count(),
    }


def main() -> int:
    # Keep the real stdout for the report; send fd 1 (and Python's sys.stdout) to stderr.
    report = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        config = json.load(sys.stdin)
        payload: dict[str, Any] = {"result": measure(config)}
        status = 0
    except _WorkerError as exc:
        payload, status = {"error": {"type": exc.kind, "message": str(exc)}}, 3
    except MemoryError:
        payload, status = {"error": {"type": "CheckFailed", "message": "the benchmark ran out of memory"}}, 3
    except Exception as exc:
        payload = {"error": {"type": "CheckFailed", "message": f"{type(exc).__name__}: {one_line(exc)}"}}
        status = 3
    json.dump(payload, report)
    report.write("\n")
    report.flush()
    return status


if __name__ == "__main__":
    raise SystemExit(main())
