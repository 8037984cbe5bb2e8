"""Helpers shared by the benchmark scripts in ``bench/``: progress lines, machine facts,
atomic writes, model statistics and the comparison of latency-ratio ranges."""

from __future__ import annotations

import collections
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

_START = time.perf_counter()


def log(message: str) -> None:
    """One progress line on stderr, stamped with the seconds since the script started."""
    print(f"[{time.perf_counter() - _START:7.1f}s] {message}", file=sys.stderr, flush=True)


def elapsed() -> float:
    return time.perf_counter() - _START


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Keep chatty tools (printing to Python's stdout) out of the report printed on stdout."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def package_version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # not installed, or installed without metadata
        return None


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def git_state() -> dict[str, Any]:
    """The commit the benchmark ran on and whether the working tree had changes."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": head, "dirty": bool(dirty)}


def machine_info() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": {
            name: package_version(name)
            for name in ("graphopt", "onnxruntime", "onnx", "onnxscript", "onnx-ir", "onnxsim", "torch",
                         "transformers", "numpy")
        },
        "git": git_state(),
        "graphopt_sources_sha256": sources_digest(ROOT / "graphopt"),
    }


def sources_digest(folder: Path) -> str:
    """One sha256 over the package's Python sources (others edit them while benchmarks run)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def model_stats(path: Path) -> dict[str, Any]:
    """Node count (all graphs, subgraphs included), operator histogram and file size."""
    import onnx_ir as ir

    model = ir.load(path)
    ops: collections.Counter[str] = collections.Counter()
    for node in model.graph.all_nodes():
        ops[f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type] += 1
    size = path.stat().st_size
    data = path.with_name(path.name + ".data")
    if data.exists():
        size += data.stat().st_size
    return {"nodes": sum(ops.values()), "bytes": size, "ops": dict(sorted(ops.items()))}


def percentiles(values: Sequence[float]) -> dict[str, float]:
    import numpy as np

    array = np.asarray(values, dtype=np.float64)
    return {
        "median": float(np.median(array)),
        "p10": float(np.percentile(array, 10)),
        "p90": float(np.percentile(array, 90)),
    }


def ranges_overlap(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    """Whether the p10-p90 ranges of two ratio summaries overlap."""
    return a["p10"] <= b["p90"] and b["p10"] <= a["p90"]
