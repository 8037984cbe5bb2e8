"""Latency targets measured on this machine: onnxruntime median latency of each model, in ms.

Models whose inputs have the same names, shapes and types are timed in one
:func:`graphopt.bench.benchmark` worker, in alternation (so that drift hits them alike); each
other signature gets its own worker. Inputs are synthesised (batch ``batch``, sequences 16).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["measure_arch_latency", "measure_latency"]


def measure_latency(models: Sequence[str | os.PathLike[str]], *, batch: int = 1, threads: int = 1,
                    runs: int = 20) -> np.ndarray:
    """Median latency in ms of each ONNX file, in input order."""
    from graphopt._io import load_model
    from graphopt.bench import benchmark
    from graphopt.feeds import input_specs, synthesize_feeds

    groups: dict[tuple, list[int]] = {}
    feeds_of: dict[tuple, dict[str, np.ndarray]] = {}
    for k, path in enumerate(models):
        feeds = synthesize_feeds(input_specs(load_model(path)), batch=batch)
        key = tuple((name, a.shape, str(a.dtype)) for name, a in sorted(feeds.items()))
        groups.setdefault(key, []).append(k)
        feeds_of.setdefault(key, feeds)
    result = np.zeros(len(models))
    for key, members in groups.items():
        report = benchmark([models[k] for k in members], feeds_of[key], threads=threads, warmup=3, runs=runs,
                           min_seconds=0.2, max_runs=runs)
        for k, entry in zip(members, report.models):
            result[k] = entry.median_ms
    return result


def measure_arch_latency(space: str, archs: Sequence[Hashable | str], *, batch: int = 1, threads: int = 1,
                         runs: int = 20) -> np.ndarray:
    """Median latency in ms of each architecture's ONNX graph (built with seed 0), in input order."""
    import onnx_ir as ir

    from graphopt.nas.spaces import get_space

    built = get_space(space)
    with tempfile.TemporaryDirectory(prefix="graphopt-latency-") as tmp:
        paths = []
        for k, arch in enumerate(archs):
            paths.append(Path(tmp) / f"{k}.onnx")
            ir.save(built.build(built.parse(arch) if isinstance(arch, str) else arch), paths[-1])
        return measure_latency(paths, batch=batch, threads=threads, runs=runs)
