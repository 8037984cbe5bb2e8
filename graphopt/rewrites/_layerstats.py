"""Second-order statistics of MatMul inputs, captured with onnxruntime from calibration data.

For an input ``x`` of a MatMul (any leading shape, last axis ``K``) the rows ``x_t`` (one per
token) are accumulated, batch by batch, into ``H = sum_t x_t x_tᵀ`` (``[K, K]``, float64) and
``a = sum_t |x_t|`` (``[K]``). ``H`` is the (unnormalised) Hessian of the layer reconstruction
error ``||X W - X Ŵ||²`` that GPTQ uses; ``a / count`` is the mean activation magnitude per
input channel that AWQ scales by. Padding tokens do not count: when the calibration feeds hold a
2-D ``*mask*`` input and an activation's leading axes are ``[batch, sequence]``, rows whose mask
is 0 are dropped.

Calibration data is an ``.npz`` keyed by graph input name with samples on axis 0 (the feeds
contract); :func:`load_calibration` reads and checks it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError

__all__ = ["InputStats", "collect_input_stats", "layer_error", "load_calibration"]


@dataclasses.dataclass
class InputStats:
    """Accumulated statistics of one activation (rows = tokens, columns = the ``K`` channels)."""

    hessian: np.ndarray
    abs_sum: np.ndarray
    count: int = 0
    cache: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)
    """Results derived from the statistics (e.g. GPTQ's inverse-Hessian factor), shared by the weights of one input."""

    @property
    def mean_abs(self) -> np.ndarray:
        """Mean ``|x|`` per channel."""
        return self.abs_sum / max(self.count, 1)

    @property
    def second_moment(self) -> np.ndarray:
        """``H / count``: the mean of ``x xᵀ``."""
        return self.hessian / max(self.count, 1)

    def add(self, rows: np.ndarray) -> None:
        x = rows.astype(np.float32, copy=False)
        self.hessian += (x.T @ x).astype(np.float64)  # float32 products, float64 running sum
        self.abs_sum += np.abs(x).sum(axis=0, dtype=np.float64)
        self.count += x.shape[0]


def load_calibration(path: str | os.PathLike[str], model: ir.Model) -> dict[str, np.ndarray]:
    """Read a calibration ``.npz`` and check it against the model's inputs."""
    from graphopt.feeds import input_specs, load_feeds

    return load_feeds(path, input_specs(model))


def collect_input_stats(
    model: ir.Model,
    feeds: Mapping[str, np.ndarray],
    names: Sequence[str],
    *,
    batch_size: int = 8,
    max_samples: int | None = None,
) -> dict[str, InputStats]:
    """:class:`InputStats` of each named activation over ``feeds`` (at most ``max_samples`` samples)."""
    from graphopt.calibration import iter_activations

    if max_samples is not None:
        feeds = {k: v[:max_samples] for k, v in feeds.items()}
    counts = {v.shape[0] for v in feeds.values() if v.ndim}
    if counts == {0}:
        raise InputError("calibration data holds no samples")
    masks = [v for k, v in feeds.items() if "mask" in k.lower() and v.ndim == 2 and np.issubdtype(v.dtype, np.integer)]
    mask = masks[0] if masks else None
    stats: dict[str, InputStats] = {}
    start = 0
    for batch in iter_activations(model, feeds, list(dict.fromkeys(names)), batch_size=batch_size):
        rows_in_batch = next(iter(batch.values())).shape[0] if batch else 0
        batch_mask = mask[start : start + rows_in_batch] if mask is not None else None
        start += rows_in_batch
        for name, array in batch.items():
            x = np.asarray(array)
            if x.ndim == 0:
                continue
            if batch_mask is not None and x.ndim == 3 and x.shape[:2] == batch_mask.shape:
                rows = x[batch_mask != 0]
            else:
                rows = x.reshape(-1, x.shape[-1])
            if name not in stats:
                k = rows.shape[-1]
                stats[name] = InputStats(np.zeros((k, k)), np.zeros(k))
            stats[name].add(rows)
    return stats


def layer_error(w: np.ndarray, w_hat: np.ndarray, hessian: np.ndarray) -> float:
    """``||X W - X Ŵ||_F² = tr((W - Ŵ)ᵀ H (W - Ŵ))`` for ``H = XᵀX``."""
    d = np.asarray(w, dtype=np.float64) - np.asarray(w_hat, dtype=np.float64)
    return float(np.sum(d * (hessian @ d)))
