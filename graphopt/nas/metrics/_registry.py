"""The metric descriptor and registry: what each training-free metric needs and how it is computed."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

__all__ = ["METRICS", "Metric", "register"]


@dataclasses.dataclass(frozen=True)
class Metric:
    """A training-free metric: ``fn(ctx) -> float`` (``ctx`` a :class:`~graphopt.nas.metrics._context.MetricInput`),
    with what it needs: input data, labels, gradients. Higher is better for every metric."""

    name: str
    fn: Callable[[Any], float]
    needs_data: bool
    needs_labels: bool
    needs_gradients: bool
    doc: str


#: metric name -> descriptor (filled by :mod:`forward` and :mod:`grad` on import)
METRICS: dict[str, Metric] = {}


def register(name: str, *, data: bool, labels: bool, gradients: bool, aliases: tuple[str, ...] = ()
             ) -> Callable[[Callable[[Any], float]], Callable[[Any], float]]:
    """Register ``fn`` as metric ``name`` (and its aliases); the docstring's first line is its doc."""

    def wrap(fn: Callable[[Any], float]) -> Callable[[Any], float]:
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        for key in (name, *aliases):
            METRICS[key] = Metric(name, fn, data, labels, gradients, doc)
        return fn

    return wrap
