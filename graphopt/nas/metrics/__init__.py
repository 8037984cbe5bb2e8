"""Training-free (zero-cost) metrics of ONNX graphs: ``score_model(model, "synflow")``.

Gradient metrics (:mod:`~graphopt.nas.metrics.grad`: synflow, snip, grad_norm, grasp, fisher, jacov)
run through the differentiable executor with BatchNormalization on batch statistics, as the published
proxies were computed; forward metrics (:mod:`~graphopt.nas.metrics.forward`: params, flops, nwot, zen)
need no gradients; transformer metrics (:mod:`~graphopt.nas.metrics.transformer`: hidden_cov, act_dist,
syn_div, syn_sal, head_imp, attn_conf, after Serianni & Kalita 2023) share one forward and one backward
pass over the attention and MLP blocks :mod:`graphopt.analysis` finds. :data:`METRICS` maps each name
(and alias: ``jacob_cov``, ``naswot``, ``zen-score``) to a :class:`Metric` saying whether it needs data,
labels, gradients. Without ``data``, a batch of ``batch_size`` samples is synthesised from the graph's
inputs (floats ~ N(0, 1), seeded), and labels are drawn uniformly from the first output's classes;
every score is deterministic for a seed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError, UsageError
from graphopt.nas.metrics import forward, grad, transformer  # noqa: F401  (fills the registry)
from graphopt.nas.metrics._context import MetricInput
from graphopt.nas.metrics._registry import METRICS, Metric

__all__ = ["METRICS", "Metric", "get_metric", "make_input", "score_model", "score_model_all"]


def get_metric(name: str) -> Metric:
    """The metric called ``name`` (or an alias)."""
    metric = METRICS.get(name.strip().lower())
    if metric is None:
        raise UsageError(f"unknown metric {name!r} (choose from {', '.join(sorted(METRICS))})")
    return metric


def make_input(model: ir.Model, *, data: Mapping[str, np.ndarray] | None = None,
               labels: np.ndarray | None = None, seed: int = 0, batch_size: int = 64) -> MetricInput:
    """The batch a metric sees: ``data`` (validated against the graph's inputs) or synthesised feeds,
    and ``labels`` or seeded uniform labels over the first output's last dimension."""
    from graphopt.feeds import input_specs, synthesize_feeds, validate_feeds

    specs = input_specs(model)
    if data is None:
        feeds = synthesize_feeds(specs, batch=batch_size, seed=seed)
    else:
        feeds = validate_feeds(data, specs, source="metric data")
    sizes = {int(v.shape[0]) for v in feeds.values() if np.ndim(v)}
    if len(sizes) != 1:
        raise InputError("metric data: every input needs the same number of samples on axis 0")
    n = sizes.pop()
    if labels is None:
        classes = _classes(model)
        labels = np.random.default_rng(seed + 1).integers(0, classes, size=n) if classes else None
    else:
        labels = np.asarray(labels)
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise InputError(f"metric labels must be {n} integer class indices")
    return MetricInput(model, dict(feeds), labels, seed)


def score_model(model: ir.Model, metric: str, *, data: Mapping[str, np.ndarray] | None = None,
                labels: np.ndarray | None = None, seed: int = 0, batch_size: int = 64) -> float:
    """The score of ``model`` under ``metric`` (higher is better), deterministic for ``seed``."""
    spec = get_metric(metric)
    return float(spec.fn(make_input(model, data=data, labels=labels, seed=seed, batch_size=batch_size)))


def score_model_all(model: ir.Model, metrics: Sequence[str], *, data: Mapping[str, np.ndarray] | None = None,
                    labels: np.ndarray | None = None, seed: int = 0, batch_size: int = 64,
                    timings: dict[str, float] | None = None) -> dict[str, float]:
    """Several metrics of ``model`` on one input, sharing work; the same values as :func:`score_model`.
    ``timings``, if given, receives seconds per metric."""
    specs = [get_metric(m) for m in metrics]
    ctx = make_input(model, data=data, labels=labels, seed=seed, batch_size=batch_size)
    out = {}
    for name, spec in zip(metrics, specs):
        start = time.perf_counter()
        out[name] = float(spec.fn(ctx))
        if timings is not None:
            timings[name] = time.perf_counter() - start
    return out


def _classes(model: ir.Model) -> int | None:
    out = model.graph.outputs[0]
    if out.shape is None or not len(out.shape):
        return None
    last = out.shape[-1]
    return last if isinstance(last, int) and last > 0 else None
