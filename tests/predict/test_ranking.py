"""Rank correlations and the pairwise ranking loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from graphopt.predict.ranking import kendall_tau, pairwise_logistic_loss, spearman


def test_correlations_of_orders():
    x = np.arange(10.0)
    assert kendall_tau(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert math.isnan(kendall_tau(x, np.ones(10)))


def test_loss_prefers_the_right_order():
    targets = torch.tensor([3.0, 2.0, 1.0])
    right = pairwise_logistic_loss(torch.tensor([3.0, 2.0, 1.0]), targets)
    wrong = pairwise_logistic_loss(torch.tensor([1.0, 2.0, 3.0]), targets)
    assert float(right) < math.log(2) < float(wrong)
    # scale of the targets does not matter, only their order
    assert torch.isclose(right, pairwise_logistic_loss(torch.tensor([3.0, 2.0, 1.0]), targets * 100 - 7))


def test_loss_counts_only_ordered_pairs():
    scores = torch.tensor([0.5, -0.5], requires_grad=True)
    loss = pairwise_logistic_loss(scores, torch.tensor([1.0, 1.0]))
    assert loss.item() == 0.0
    loss.backward()  # still differentiable
    expected = torch.nn.functional.softplus(torch.tensor(-1.0))  # one pair, margin 0.5 - (-0.5)
    assert torch.isclose(pairwise_logistic_loss(torch.tensor([0.5, -0.5]), torch.tensor([2.0, 1.0])), expected)


def test_loss_gradient_pushes_the_better_item_up():
    scores = torch.zeros(2, requires_grad=True)
    pairwise_logistic_loss(scores, torch.tensor([1.0, 0.0])).backward()
    assert scores.grad[0] < 0 < scores.grad[1]
