"""Regressors behind predictors: ensembles whose spread is the uncertainty search can use.

Every model maps a feature matrix to ``(mean, std)`` in the target's units, ``std`` being the
spread over ensemble members:

``forest``  scikit-learn random forest; members are its trees.
``gbm``     gradient boosting (squared error, depth 4, row subsampling), one booster per seed.
``ridge``   ridge regression on standardised features, one per bootstrap sample.
``mlp``     a two-hidden-layer MLP trained with the pairwise ranking loss
            (:func:`graphopt.predict.ranking.pairwise_logistic_loss`), one per seed; each member's
            scores are mapped to the target's units by a least-squares line fitted on the training set.
``mix``     ``gbm`` and ``mlp`` together: each member of both counts as one member.
``rankgbm`` trees boosted on a gap-weighted pairwise ranking loss (:mod:`graphopt.predict.rankboost`).
``ens``     ``gbm``, ``mlp`` and ``rankgbm`` members pooled (:mod:`graphopt.predict.rankboost`).

Models hold their state as plain arrays (``state()`` / ``from_state()``), except the tree models,
whose fitted scikit-learn objects are pickled by :mod:`graphopt.predict.persistence`.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import numpy as np

from graphopt.errors import UsageError

__all__ = ["MODEL_KINDS", "RegressionModel", "create_model", "model_from_state"]

MODEL_KINDS = ("forest", "gbm", "ridge", "mlp", "mix", "rankgbm", "ens")


class RegressionModel(abc.ABC):
    """An ensemble regressor: ``fit(X, y)``, ``predict(X) -> (mean, std)``."""

    kind: ClassVar[str] = ""

    def __init__(self, *, members: int = 5, seed: int = 0) -> None:
        if members < 1:
            raise UsageError(f"an ensemble needs at least one member, got {members}")
        self.members = members
        self.seed = seed

    def fit(self, X: np.ndarray, y: np.ndarray) -> RegressionModel:
        X, y = _check_xy(X, y)
        self._fit(X, y)
        return self

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and spread (standard deviation over members) of the members' predictions."""
        table = self.member_predictions(np.asarray(X, dtype=np.float64))
        return table.mean(axis=0), table.std(axis=0)

    @abc.abstractmethod
    def member_predictions(self, X: np.ndarray) -> np.ndarray:
        """One row per ensemble member, in the target's units."""

    @abc.abstractmethod
    def _fit(self, X: np.ndarray, y: np.ndarray) -> None: ...

    @abc.abstractmethod
    def state(self) -> dict[str, Any]:
        """Everything needed to rebuild the fitted model (arrays, numbers, strings, pickled objects)."""

    @abc.abstractmethod
    def _load(self, state: dict[str, Any]) -> None: ...


class _Standardizer:
    def __init__(self, mean: np.ndarray, scale: np.ndarray) -> None:
        self.mean, self.scale = mean, scale

    @classmethod
    def fit(cls, X: np.ndarray) -> _Standardizer:
        scale = X.std(axis=0)
        return cls(X.mean(axis=0), np.where(scale > 1e-12, scale, 1.0))

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean) / self.scale


class TreeModel(RegressionModel):
    """``forest`` (trees of one random forest) or ``gbm`` (one booster per seed)."""

    def __init__(self, kind: str, *, members: int = 5, seed: int = 0) -> None:
        super().__init__(members=members, seed=seed)
        self.kind = kind  # type: ignore[misc]
        self.estimators: list[Any] = []

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor

        if self.kind == "forest":
            forest = RandomForestRegressor(n_estimators=max(100, self.members), random_state=self.seed, n_jobs=1)
            self.estimators = [forest.fit(X, y)]
        else:
            self.estimators = [
                GradientBoostingRegressor(
                    n_estimators=300, max_depth=4, learning_rate=0.05, subsample=0.8, random_state=self.seed + k
                ).fit(X, y)
                for k in range(self.members)
            ]

    def member_predictions(self, X: np.ndarray) -> np.ndarray:
        if self.kind == "forest":
            return np.stack([tree.predict(X) for tree in self.estimators[0].estimators_])
        return np.stack([est.predict(X) for est in self.estimators])

    def state(self) -> dict[str, Any]:
        return {"estimators": self.estimators}

    def _load(self, state: dict[str, Any]) -> None:
        self.estimators = list(state["estimators"])


class RidgeModel(RegressionModel):
    """Ridge regression on standardised features, one fit per bootstrap sample."""

    kind = "ridge"

    def __init__(self, *, members: int = 5, seed: int = 0, alpha: float = 1.0) -> None:
        super().__init__(members=members, seed=seed)
        self.alpha = alpha
        self.coef = np.zeros((0, 0))
        self.intercept = np.zeros(0)
        self.scaler = _Standardizer(np.zeros(0), np.ones(0))

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        self.scaler = _Standardizer.fit(X)
        Z = self.scaler(X)
        rng = np.random.default_rng(self.seed)
        coefs, intercepts = [], []
        for k in range(self.members):
            rows = np.arange(len(y)) if k == 0 else rng.integers(0, len(y), len(y))
            Zk, yk = Z[rows], y[rows]
            mu = yk.mean()
            A = Zk.T @ Zk + self.alpha * np.eye(Z.shape[1])
            coefs.append(np.linalg.solve(A, Zk.T @ (yk - mu)))
            intercepts.append(mu)
        self.coef, self.intercept = np.stack(coefs), np.asarray(intercepts)

    def member_predictions(self, X: np.ndarray) -> np.ndarray:
        return self.coef @ self.scaler(X).T + self.intercept[:, None]

    def state(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "coef": self.coef, "intercept": self.intercept,
                "x_mean": self.scaler.mean, "x_scale": self.scaler.scale}

    def _load(self, state: dict[str, Any]) -> None:
        self.alpha = float(state["alpha"])
        self.coef, self.intercept = np.asarray(state["coef"]), np.asarray(state["intercept"])
        self.scaler = _Standardizer(np.asarray(state["x_mean"]), np.asarray(state["x_scale"]))


class RankMLP(RegressionModel):
    """MLPs (``in -> hidden -> hidden -> 1``, ReLU) trained with the pairwise ranking loss over all
    pairs of a batch (the whole set up to ``batch`` samples, else a random ``batch`` each step)."""

    kind = "mlp"

    def __init__(self, *, members: int = 5, seed: int = 0, hidden: int = 64, epochs: int = 300,
                 lr: float = 3e-3, weight_decay: float = 1e-3, batch: int = 256) -> None:
        super().__init__(members=members, seed=seed)
        self.batch = batch
        self.hidden, self.epochs, self.lr, self.weight_decay = hidden, epochs, lr, weight_decay
        self.weights: list[list[np.ndarray]] = []
        self.lines = np.zeros((0, 2))
        self.scaler = _Standardizer(np.zeros(0), np.ones(0))

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        import torch

        self.scaler = _Standardizer.fit(X)
        inputs = torch.tensor(self.scaler(X), dtype=torch.float32)
        targets = torch.tensor(y, dtype=torch.float32)
        self.weights = []
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny full-batch steps: more threads only add overhead
        try:
            self.lines = np.asarray([self._fit_member(k, inputs, targets, y) for k in range(self.members)])
        finally:
            torch.set_num_threads(threads)

    def _fit_member(self, k: int, inputs: Any, targets: Any, y: np.ndarray) -> tuple[float, float]:
        import torch

        from graphopt.predict.ranking import pairwise_logistic_loss

        torch.manual_seed(self.seed * 1000 + k)
        net = self._net(inputs.shape[1])
        optimizer = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        generator = torch.Generator().manual_seed(self.seed * 1000 + k)
        for _ in range(self.epochs):
            rows = torch.randperm(len(y), generator=generator)[: self.batch] if len(y) > self.batch else slice(None)
            loss = pairwise_logistic_loss(net(inputs[rows]).squeeze(-1), targets[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        self.weights.append([p.detach().numpy().astype(np.float32).copy() for p in net.parameters()])
        return _fit_line(self._forward(self.weights[-1], inputs.numpy().astype(np.float64)), y)

    def _net(self, width: int) -> Any:
        import torch

        return torch.nn.Sequential(
            torch.nn.Linear(width, self.hidden), torch.nn.ReLU(),
            torch.nn.Linear(self.hidden, self.hidden), torch.nn.ReLU(),
            torch.nn.Linear(self.hidden, 1),
        )  # fmt: skip

    @staticmethod
    def _forward(weights: list[np.ndarray], Z: np.ndarray) -> np.ndarray:
        """The MLP in numpy: scoring needs no torch."""
        w1, b1, w2, b2, w3, b3 = weights
        h = np.maximum(Z @ w1.T + b1, 0.0)
        h = np.maximum(h @ w2.T + b2, 0.0)
        return (h @ w3.T + b3)[:, 0]

    def member_predictions(self, X: np.ndarray) -> np.ndarray:
        Z = self.scaler(X)
        return np.stack([a * self._forward(w, Z) + b for w, (a, b) in zip(self.weights, self.lines)])

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"hidden": self.hidden, "epochs": self.epochs, "lr": self.lr,
                                 "weight_decay": self.weight_decay, "batch": self.batch, "lines": self.lines,
                                 "x_mean": self.scaler.mean, "x_scale": self.scaler.scale}
        for k, weights in enumerate(self.weights):
            for i, array in enumerate(weights):
                state[f"member{k}.{i}"] = array
        return state

    def _load(self, state: dict[str, Any]) -> None:
        self.hidden, self.epochs = int(state["hidden"]), int(state["epochs"])
        self.lr, self.weight_decay = float(state["lr"]), float(state["weight_decay"])
        self.batch = int(state["batch"])
        self.lines = np.asarray(state["lines"])
        self.scaler = _Standardizer(np.asarray(state["x_mean"]), np.asarray(state["x_scale"]))
        self.weights = [[np.asarray(state[f"member{k}.{i}"]) for i in range(6)] for k in range(len(self.lines))]


class PooledModel(RegressionModel):
    """The members of several models (``parts``, set by subclasses) pooled into one ensemble."""

    parts: list[RegressionModel]

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        for part in self.parts:
            part._fit(X, y)

    def member_predictions(self, X: np.ndarray) -> np.ndarray:
        return np.concatenate([part.member_predictions(X) for part in self.parts])

    def state(self) -> dict[str, Any]:
        return {f"{part.kind}.{key}": value for part in self.parts for key, value in part.state().items()}

    def _load(self, state: dict[str, Any]) -> None:
        for part in self.parts:
            prefix = f"{part.kind}."
            part._load({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})


class MixModel(PooledModel):
    """``gbm`` and ``mlp`` members pooled."""

    kind = "mix"

    def __init__(self, *, members: int = 5, seed: int = 0, epochs: int = 300) -> None:
        super().__init__(members=members, seed=seed)
        self.parts = [TreeModel("gbm", members=members, seed=seed), RankMLP(members=members, seed=seed, epochs=epochs)]


def create_model(kind: str, *, members: int = 5, seed: int = 0, epochs: int = 300) -> RegressionModel:
    """A new, unfitted model of ``kind`` (one of :data:`MODEL_KINDS`); ``epochs`` for the MLPs."""
    if kind in ("forest", "gbm"):
        return TreeModel(kind, members=members, seed=seed)
    if kind == "ridge":
        return RidgeModel(members=members, seed=seed)
    if kind == "mlp":
        return RankMLP(members=members, seed=seed, epochs=epochs)
    if kind == "mix":
        return MixModel(members=members, seed=seed, epochs=epochs)
    if kind in ("rankgbm", "ens"):
        from graphopt.predict.rankboost import EnsembleModel, RankBoostModel

        if kind == "ens":
            return EnsembleModel(members=members, seed=seed, epochs=epochs)
        return RankBoostModel(members=members, seed=seed)
    raise UsageError(f"unknown predictor model {kind!r} (choose from {', '.join(MODEL_KINDS)})")


def model_from_state(kind: str, state: dict[str, Any], *, members: int, seed: int) -> RegressionModel:
    """Rebuild a fitted model from :meth:`RegressionModel.state`."""
    model = create_model(kind, members=members, seed=seed)
    model._load(state)
    return model


def _fit_line(scores: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares ``y ~ a * scores + b`` (``a = 0`` when the scores are constant)."""
    var = float(scores.var())
    a = float(((scores - scores.mean()) * (y - y.mean())).mean() / var) if var > 1e-12 else 0.0
    return a, float(y.mean() - a * scores.mean())


def _check_xy(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise UsageError(f"features must be (n, d) and targets (n,), got {X.shape} and {y.shape}")
    if len(y) < 2:
        raise UsageError(f"a predictor needs at least 2 training samples, got {len(y)}")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise UsageError("features and targets must be finite numbers")
    return X, y
