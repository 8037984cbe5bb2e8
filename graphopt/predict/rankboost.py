"""Gradient-boosted trees fitted to a pairwise ranking loss, and the ``ens`` ensemble built on them.

``rankgbm`` boosts regression trees on RankNet's loss weighted by the target gap (LambdaRank
style): for every pair ``targets[i] > targets[j]`` with weight ``w_ij = |targets[i] - targets[j]|``
(normalised to mean 1), the loss ``w_ij log(1 + exp(-(f_i - f_j)))``. Each round fits a depth-3
tree by one Newton step (gradient over hessian, weighted by the hessian) on a row subsample of at
most ``batch`` rows, so a round costs ``O(batch^2)`` whatever the training size. Scores carry no
units; each member is mapped to the target's units by a least-squares line on the training set.
Weighting pairs by the gap keeps the few large mistakes (a dead cell ranked above a good one)
costly while still ordering close cells, which plain squared error on the targets does not.

``ens`` pools ``gbm``, ``mlp`` (hidden 128, weight decay 1e-2) and ``rankgbm`` members: three
learners with different losses whose errors are only partly shared.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graphopt.predict.models import PooledModel, RankMLP, RegressionModel, TreeModel, _fit_line

__all__ = ["EnsembleModel", "RankBoostModel"]


class RankBoostModel(RegressionModel):
    """Boosted depth-``depth`` trees on the gap-weighted pairwise logistic loss, one booster per member."""

    kind = "rankgbm"

    def __init__(self, *, members: int = 5, seed: int = 0, rounds: int = 300, learning_rate: float = 0.1,
                 depth: int = 3, subsample: float = 0.8, batch: int = 256) -> None:
        super().__init__(members=members, seed=seed)
        self.rounds, self.learning_rate, self.depth = rounds, learning_rate, depth
        self.subsample, self.batch = subsample, batch
        self.trees: list[list[Any]] = []
        self.lines = np.zeros((0, 2))

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        self.trees = []
        lines = []
        for k in range(self.members):
            trees, scores = self._boost(X, y, np.random.default_rng([self.seed, k]))
            self.trees.append(trees)
            lines.append(_fit_line(scores, y))
        self.lines = np.asarray(lines)

    def _boost(self, X: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[list[Any], np.ndarray]:
        from sklearn.tree import DecisionTreeRegressor

        n = len(y)
        take = max(2, min(self.batch, round(self.subsample * n)))
        scores = np.zeros(n)
        trees = []
        for _ in range(self.rounds):
            rows = rng.choice(n, size=take, replace=False)
            grad, hess = _pairwise_newton(scores[rows], y[rows])
            if not hess.any():  # all targets equal in this draw: nothing to order
                continue
            tree = DecisionTreeRegressor(max_depth=self.depth, random_state=int(rng.integers(1 << 31)))
            tree.fit(X[rows], grad / (hess + 1e-12), sample_weight=hess + 1e-12)
            trees.append(tree)
            scores += self.learning_rate * tree.predict(X)
        return trees, scores

    def _raw(self, trees: list[Any], X: np.ndarray) -> np.ndarray:
        total = np.zeros(len(X))
        for tree in trees:
            total += tree.predict(X)
        return self.learning_rate * total

    def member_predictions(self, X: np.ndarray) -> np.ndarray:
        return np.stack([a * self._raw(trees, X) + b for trees, (a, b) in zip(self.trees, self.lines)])

    def state(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "learning_rate": self.learning_rate, "depth": self.depth,
                "subsample": self.subsample, "batch": self.batch, "lines": self.lines, "trees": self.trees}

    def _load(self, state: dict[str, Any]) -> None:
        self.rounds, self.depth, self.batch = int(state["rounds"]), int(state["depth"]), int(state["batch"])
        self.learning_rate, self.subsample = float(state["learning_rate"]), float(state["subsample"])
        self.lines = np.asarray(state["lines"])
        self.trees = [list(trees) for trees in state["trees"]]


def _pairwise_newton(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Negative gradient and diagonal hessian of the gap-weighted pairwise logistic loss at ``scores``."""
    gap = y[:, None] - y[None, :]
    weight = np.where(gap > 0, gap, 0.0)
    mean = weight[weight > 0].mean() if (weight > 0).any() else 1.0
    weight /= mean
    wrong = 1.0 / (1.0 + np.exp(np.clip(scores[:, None] - scores[None, :], -50, 50)))  # P(pair misordered)
    pull = weight * wrong
    curve = pull * (1.0 - wrong)
    return pull.sum(axis=1) - pull.sum(axis=0), curve.sum(axis=1) + curve.sum(axis=0)


class EnsembleModel(PooledModel):
    """``gbm``, ``mlp`` (hidden 128, weight decay 1e-2) and ``rankgbm`` members pooled."""

    kind = "ens"

    def __init__(self, *, members: int = 5, seed: int = 0, epochs: int = 300, rounds: int = 300) -> None:
        super().__init__(members=members, seed=seed)
        self.parts = [
            TreeModel("gbm", members=members, seed=seed),
            RankMLP(members=members, seed=seed, epochs=epochs, hidden=128, weight_decay=1e-2),
            RankBoostModel(members=members, seed=seed, rounds=rounds),
        ]
