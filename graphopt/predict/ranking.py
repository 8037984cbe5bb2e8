"""Rank correlations for judging predictors, and the pairwise ranking loss they train with.

``pairwise_logistic_loss(scores, targets)`` is RankNet's loss: over every pair ``(i, j)`` with
``targets[i] > targets[j]``, the mean of ``log(1 + exp(-(scores[i] - scores[j])))``; only the order
of the targets matters, so a predictor trained with it learns a ranking, not a scale.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["kendall_tau", "pairwise_logistic_loss", "spearman"]


def kendall_tau(predicted: Any, actual: Any) -> float:
    """Kendall's tau-b between two score vectors (NaN when either is constant)."""
    from scipy.stats import kendalltau

    return float(kendalltau(np.asarray(predicted, float), np.asarray(actual, float))[0])


def spearman(predicted: Any, actual: Any) -> float:
    """Spearman's rank correlation between two score vectors (NaN when either is constant)."""
    from scipy.stats import spearmanr

    return float(spearmanr(np.asarray(predicted, float), np.asarray(actual, float))[0])


def pairwise_logistic_loss(scores: Any, targets: Any) -> Any:
    """RankNet loss of torch ``scores`` against ``targets`` (1-D tensors of one length); pairs with
    equal targets are left out. Returns a scalar tensor (zero when all targets are equal)."""
    import torch

    better = (targets[:, None] > targets[None, :]).to(scores.dtype)
    pairs = better.sum()
    if float(pairs) == 0.0:
        return scores.sum() * 0.0
    margin = scores[:, None] - scores[None, :]
    return (torch.nn.functional.softplus(-margin) * better).sum() / pairs
