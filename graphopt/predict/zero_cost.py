"""Zero-cost features: graphopt's own training-free metrics of a graph, as predictor inputs.

``zero_cost_features(model)`` scores one image-classification graph (one input ``N x 3 x H x W``)
with :func:`graphopt.nas.metrics.score_model_all` on one fixed batch of natural images
(:func:`graphopt.data.natural_images`, CIFAR-10-normalised; labels uniform over 10 classes), the
batch ``bench/zero_cost_nb201.py --inputs photos`` uses: ``batch`` images drawn with
``numpy.random.default_rng(seed)``, then the labels from the same generator. Natural images, not
N(0, 1) noise, are what make jacov and nwot track accuracy. The metrics are :data:`ZC_METRICS`
(synflow, jacov, nwot); together 1-2 s per NAS-Bench-201 cell, run on one CPU thread.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError

__all__ = ["ZC_METRICS", "ZeroCostResult", "ZeroCostSpec", "zero_cost_features", "zero_cost_transform"]

ZC_METRICS = ("synflow", "jacov", "nwot")


@dataclasses.dataclass(frozen=True)
class ZeroCostSpec:
    """Which metrics, on how many images, with which seed (the images, labels and the metrics' own draws)."""

    metrics: tuple[str, ...] = ZC_METRICS
    batch: int = 32
    seed: int = 0
    inputs: str = "photos-v1"  # names the image generator, so that cached values change with it

    def key(self) -> str:
        """A string naming everything that changes the values (for caches)."""
        return f"{','.join(self.metrics)}|{self.batch}|{self.seed}|{self.inputs}"


@dataclasses.dataclass(frozen=True)
class ZeroCostResult:
    """Raw metric values in ``spec.metrics`` order and the seconds they took together."""

    values: np.ndarray
    seconds: float


def zero_cost_features(model: ir.Model, spec: ZeroCostSpec = ZeroCostSpec()) -> ZeroCostResult:
    """Score ``model`` under ``spec.metrics`` on natural images. Raises :class:`InputError` for a graph
    that does not take one ``N x 3 x H x W`` image input."""
    from graphopt.nas.metrics import score_model_all

    inputs = model.graph.inputs
    dims = list(inputs[0].shape) if len(inputs) == 1 and inputs[0].shape is not None else []
    if len(dims) != 4 or dims[1] != 3 or not isinstance(dims[2], int) or dims[2] != dims[3]:
        raise InputError("zero-cost features need a graph with one N x 3 x H x H image input, "
                         f"got {[(v.name, v.shape) for v in inputs]}")
    images, labels = (a.copy() for a in _batch(spec.batch, spec.seed, int(dims[2])))
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small graphs and batches: one thread is fastest, spinning threads stall when busy
    start = time.perf_counter()
    try:  # cells whose output ignores the input give nwot = -inf (numpy warns on the way): expected here
        with np.errstate(invalid="ignore", divide="ignore"):
            scores = score_model_all(model, list(spec.metrics), data={str(inputs[0].name): images}, labels=labels,
                                     seed=spec.seed)
    finally:
        torch.set_num_threads(threads)
    return ZeroCostResult(np.array([scores[m] for m in spec.metrics], np.float64), time.perf_counter() - start)


def zero_cost_transform(values: np.ndarray) -> np.ndarray:
    """Predictor inputs from raw values: ``sign(x) log1p(|x|)``, non-finite values mapped to finite ones
    (NaN to 0, +-inf to +-1e3), so that scale-sensitive models see comparable columns."""
    raw = np.asarray(values, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        out = np.sign(raw) * np.log1p(np.abs(raw))
    return np.nan_to_num(out, nan=0.0, posinf=1e3, neginf=-1e3)


@functools.lru_cache(maxsize=4)
def _batch(n: int, seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    from graphopt.data import natural_images

    rng = np.random.default_rng(seed)
    images = natural_images(n, rng, size=size)
    return images, rng.integers(0, 10, size=n)
