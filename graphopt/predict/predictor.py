"""A trained predictor: a feature spec plus fitted ensemble heads, scoring architectures or ONNX files.

A predictor trained on a space's architectures with ``onehot`` among its features also fits a
second head on the graph-derived groups alone, so that it can score any ONNX file zero-shot; a
predictor trained on ONNX files has only that head and scores a space's architectures through
their ONNX graphs. Scores are in the target's units (higher accuracy, lower latency, as
trained); ``std`` is the spread over ensemble members.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from graphopt.errors import UsageError
from graphopt.predict.dataset import FeatureSpec, Featurizer
from graphopt.predict.models import RegressionModel, create_model

__all__ = ["Predictor", "Scores", "train_predictor"]


@dataclasses.dataclass(frozen=True)
class Scores:
    """Predicted target (``mean``) and its uncertainty (``std``), one entry per input."""

    mean: np.ndarray
    std: np.ndarray


class Predictor:
    """Heads ``"arch"`` (all of ``spec.groups``, space architectures only) and ``"graph"``
    (graph-derived groups, any ONNX graph); at least one of them."""

    def __init__(self, spec: FeatureSpec, heads: dict[str, RegressionModel], info: dict[str, Any] | None = None,
                 *, cache_dir: str | os.PathLike[str] | None = None) -> None:
        if not heads:
            raise UsageError("a predictor needs at least one head")
        self.spec = spec
        self.heads = heads
        self.info = dict(info or {})
        self.cache_dir = cache_dir
        self._featurizers: dict[str, Featurizer] = {}

    def featurizer(self, head: str) -> Featurizer:
        if head not in self._featurizers:
            spec = self.spec if head == "arch" else self.spec.graph_only()
            assert spec is not None
            if "zc" in spec.groups:
                self._check_zero_cost()
            self._featurizers[head] = Featurizer(spec, cache_dir=self.cache_dir)
        return self._featurizers[head]

    def _check_zero_cost(self) -> None:
        """Refuse to score with ``zc`` features computed differently from those the heads were fitted on."""
        from graphopt.predict.zero_cost import ZeroCostSpec

        trained, now = self.info.get("zero_cost"), ZeroCostSpec().key()
        if trained is not None and trained != now:
            raise UsageError(f"this predictor's zc features were computed as {trained!r}, this graphopt computes "
                             f"{now!r}: retrain the predictor")

    def score_archs(self, archs: Sequence[Hashable | str], *, space: str | None = None) -> Scores:
        """Scores of architectures of ``space`` (default: the training space)."""
        space = space or self.spec.space
        if space is None:
            raise UsageError("give the search space of the architectures (--space)")
        if "arch" in self.heads and space == self.spec.space:
            X = self.featurizer("arch").archs(archs)
            return Scores(*self.heads["arch"].predict(X))
        graph_spec = self.spec.graph_only()
        if "graph" not in self.heads or graph_spec is None:
            raise UsageError(f"this predictor has no graph-level head and was trained on space {self.spec.space!r}, "
                             f"not {space!r}")
        if "zc" in graph_spec.groups:
            self._check_zero_cost()
        featurizer = Featurizer(dataclasses.replace(graph_spec, space=space), cache_dir=self.cache_dir)
        return Scores(*self.heads["graph"].predict(featurizer.archs(archs)))

    def score_models(self, models: Sequence[ir.Model | str | os.PathLike[str]]) -> Scores:
        """Scores of ONNX models (objects or paths), through the graph-level head."""
        if "graph" not in self.heads:
            raise UsageError(f"this predictor reads only one-hot features of space {self.spec.space!r}: score "
                             f"architectures with --space {self.spec.space} --archs FILE")
        return Scores(*self.heads["graph"].predict(self.featurizer("graph").models(models)))


def train_predictor(items: Sequence[Hashable | str] | Sequence[ir.Model | str | os.PathLike[str]],
                    targets: Sequence[float] | np.ndarray, *, spec: FeatureSpec, model: str = "mlp",
                    members: int = 5, seed: int = 0, graph_head: bool = True,
                    cache_dir: str | os.PathLike[str] | None = None,
                    info: dict[str, Any] | None = None) -> Predictor:
    """Fit a predictor on architectures of ``spec.space`` (or ONNX models when ``spec.space`` is None).

    With ``graph_head`` (and ``onehot`` in a space spec) a second head on the graph-derived groups is
    fitted too. ``info`` is stored with the predictor; training sizes and times are added to it.
    """
    y = np.asarray(targets, dtype=np.float64)
    heads: dict[str, RegressionModel] = {}
    record = dict(info or {})
    started = time.perf_counter()
    featurizer = Featurizer(spec, cache_dir=cache_dir)
    X = featurizer.archs(items) if spec.space else featurizer.models(items)  # type: ignore[arg-type]
    record["featurize_s"] = round(time.perf_counter() - started, 3)
    if "zc" in spec.groups:  # which metrics and images made the zc features
        from graphopt.predict.zero_cost import ZeroCostSpec

        record["zero_cost"] = ZeroCostSpec().key()
    if featurizer.zero_cost_seconds:  # zc features: their cost per item (computed now or read from the cache)
        record["zero_cost_s_per_item"] = round(float(np.median(list(featurizer.zero_cost_seconds.values()))), 3)
    fit_started = time.perf_counter()
    if spec.space is not None and "onehot" in spec.groups:
        heads["arch"] = create_model(model, members=members, seed=seed).fit(X, y)
        graph_spec = spec.graph_only()
        if graph_head and graph_spec is not None:
            columns = X.shape[1] - _onehot_width(featurizer, items[0])
            heads["graph"] = create_model(model, members=members, seed=seed).fit(X[:, -columns:], y)
    else:
        heads["graph"] = create_model(model, members=members, seed=seed).fit(X, y)
    record.update(model=model, members=members, seed=seed, train_size=len(y),
                  fit_s=round(time.perf_counter() - fit_started, 3), features=X.shape[1])
    predictor = Predictor(spec, heads, record, cache_dir=cache_dir)
    predictor._featurizers["arch" if "arch" in heads else "graph"] = featurizer
    return predictor


def _onehot_width(featurizer: Featurizer, item: Any) -> int:
    space = featurizer._space_obj
    arch = space.parse(item) if isinstance(item, str) else item
    return int(np.asarray(space.one_hot(arch)).size)
