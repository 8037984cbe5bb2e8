"""Gradient metrics against direct torch implementations on a tiny conv net, and determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from graphopt.errors import InputError
from graphopt.nas.metrics import score_model
from graphopt.nas.metrics.grad import jacobian_score
from tests.nas.metrics.conftest import reference


def _grads(tiny, batch):
    weights, forward = reference(tiny)
    for w in weights.values():
        w.requires_grad_(True)
    x, y = batch
    F.cross_entropy(forward(torch.from_numpy(x), weights), torch.from_numpy(y)).backward()
    return weights


def test_snip_and_grad_norm_match_torch(tiny, batch):
    weights = _grads(tiny, batch)
    snip = sum(float((w * w.grad).abs().sum().detach()) for w in weights.values())
    norm = sum(float(w.grad.norm().detach()) for w in weights.values())
    data, labels = {"input": batch[0]}, batch[1]
    assert score_model(tiny, "snip", data=data, labels=labels) == pytest.approx(snip, rel=1e-5)
    assert score_model(tiny, "grad_norm", data=data, labels=labels) == pytest.approx(norm, rel=1e-5)


def test_synflow_matches_torch(tiny):
    weights, forward = reference(tiny)
    w64 = {k: v.double().abs().requires_grad_(True) for k, v in weights.items()}
    forward(torch.ones((1, 3, 6, 6), dtype=torch.float64), w64, bn="off").sum().backward()
    expected = sum(float((w * w.grad).abs().sum().detach()) for w in w64.values())
    assert score_model(tiny, "synflow") == pytest.approx(expected, rel=1e-9)


def test_grasp_matches_torch(tiny, batch):
    weights, forward = reference(tiny)
    ws = [w.requires_grad_(True) for w in weights.values()]
    x, y = torch.from_numpy(batch[0]), torch.from_numpy(batch[1])
    g = [d.detach() for d in torch.autograd.grad(F.cross_entropy(forward(x, weights), y), ws)]
    grads = torch.autograd.grad(F.cross_entropy(forward(x, weights), y), ws, create_graph=True)
    hg = torch.autograd.grad(sum((a * b).sum() for a, b in zip(grads, g)), ws)
    expected = sum(float((-w.detach() * h).sum()) for w, h in zip(ws, hg))
    got = score_model(tiny, "grasp", data={"input": batch[0]}, labels=batch[1])
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-7)


def test_fisher_matches_torch(tiny, batch):
    weights, forward = reference(tiny)
    for w in weights.values():
        w.requires_grad_(True)
    acts: list[torch.Tensor] = []
    loss = F.cross_entropy(forward(torch.from_numpy(batch[0]), weights, acts=acts), torch.from_numpy(batch[1]))
    total = 0.0
    for a, g in zip(acts, torch.autograd.grad(loss, acts)):
        prod = a * g
        per = prod.sum((2, 3)) if prod.dim() == 4 else prod
        total += float((0.5 * per.pow(2).mean(0)).sum().detach())
    assert score_model(tiny, "fisher", data={"input": batch[0]}, labels=batch[1]) == pytest.approx(total, rel=1e-4)


def test_jacov_matches_torch(tiny, batch):
    weights, forward = reference(tiny)
    x = torch.from_numpy(batch[0]).requires_grad_(True)
    forward(x, weights).sum().backward()
    jac = x.grad.reshape(8, -1).double().numpy()
    v = np.linalg.eigvalsh(np.corrcoef(jac))
    expected = float(-np.sum(np.log(v + 1e-5) + 1 / (v + 1e-5)))
    assert score_model(tiny, "jacob_cov", data={"input": batch[0]}) == pytest.approx(expected, rel=1e-4)


def test_jacobian_score_prefers_uncorrelated_rows():
    rng = np.random.default_rng(0)
    independent = rng.standard_normal((8, 50))
    correlated = independent[:1] + 0.05 * rng.standard_normal((8, 50))
    assert jacobian_score(independent) > jacobian_score(correlated)


@pytest.mark.parametrize("name", ["synflow", "snip", "grad_norm", "jacov", "fisher"])
def test_deterministic_for_a_seed(tiny, name):
    assert score_model(tiny, name, seed=4, batch_size=6) == score_model(tiny, name, seed=4, batch_size=6)


def test_bad_labels_are_one_line_input_errors(tiny, batch):
    with pytest.raises(InputError, match="class indices"):
        score_model(tiny, "snip", data={"input": batch[0]}, labels=np.full(8, 7))


def test_a_model_without_weights_is_an_input_error():
    import onnx_ir as ir

    from tests.conftest import SMALL_MLP

    with pytest.raises(InputError, match="no weights"):
        score_model(ir.from_onnx_text(SMALL_MLP), "synflow")
