"""Gradient-based training-free metrics, computed through the differentiable executor.

Each follows the zero-cost proxies of Abdelfattah et al. (2021) as NASLib computes them: scores sum
over the prunable weights (``Conv``/``Gemm``/``MatMul`` weights, see
:func:`~graphopt.nas.metrics._context.prunable_weights`); BatchNormalization uses batch statistics
except in synflow, which removes it; the loss is cross-entropy of the first output against the labels.

=========  =====  ======  =========================================================================
metric     data   labels  definition
=========  =====  ======  =========================================================================
synflow    no     no      ``sum |w * dR/dw|``, ``R = sum f(1)`` with ``|w|`` weights, float64, no BN
snip       yes    yes     ``sum |w * dL/dw|``
grad_norm  yes    yes     ``sum_layers ||dL/dw||_2``
grasp      yes    yes     ``sum -w * (H g)``, ``g = dL/dw``, ``H`` the Hessian (Hessian-vector product)
fisher     yes    yes     ``sum_channels 0.5 * mean_batch (sum_spatial a * dL/da)^2`` over prunable layer outputs
jacov      yes    no      ``-sum_i log(v_i + k) + 1 / (v_i + k)``, ``v`` eigenvalues of the correlation of
                          the per-sample input Jacobians ``d sum f(x) / dx``, ``k = 1e-5``
=========  =====  ======  =========================================================================
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from graphopt.errors import InputError
from graphopt.nas.metrics._context import PRUNABLE_OPS, MetricExecutor, MetricInput
from graphopt.nas.metrics._registry import register

__all__ = ["fisher", "grad_norm", "grasp", "jacobian_score", "jacov", "snip", "synflow", "train_forward"]


def _output(executor: MetricExecutor, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
    out = executor(feeds)[executor.output_names[0]]
    if not out.is_floating_point():
        raise InputError(f"metrics: the first output {executor.output_names[0]!r} is not floating point")
    return out


def _loss(executor: MetricExecutor, ctx: MetricInput) -> torch.Tensor:
    return _cross_entropy(_output(executor, ctx.torch_feeds()), ctx)


def _cross_entropy(out: torch.Tensor, ctx: MetricInput) -> torch.Tensor:
    if ctx.labels is None:
        raise InputError("metrics: this metric needs labels")
    logits = out.reshape(out.shape[0], -1)
    labels = torch.from_numpy(np.asarray(ctx.labels, dtype=np.int64))
    if labels.shape != (logits.shape[0],) or int(labels.max()) >= logits.shape[1] or int(labels.min()) < 0:
        raise InputError(f"metrics: labels must be {logits.shape[0]} class indices below {logits.shape[1]}")
    return F.cross_entropy(logits, labels)


def _weights(executor: MetricExecutor) -> list[torch.nn.Parameter]:
    weights = [p for _, p in executor.weights()]
    if not weights:
        raise InputError(f"metrics: the model has no weights of {'/'.join(PRUNABLE_OPS)} nodes to score")
    return weights


@register("synflow", data=False, labels=False, gradients=True)
def synflow(ctx: MetricInput) -> float:
    """Synaptic flow: sum |w * dR/dw| with |w|, all-ones input, float64, BatchNormalization removed."""
    executor = ctx.executor(bn="off").double()
    weights = _weights(executor)
    with torch.no_grad():
        for w in weights:
            w.abs_()
    feeds = {k: torch.ones((1, *v.shape[1:]), dtype=torch.float64) if v.is_floating_point() else v[:1]
             for k, v in ctx.torch_feeds().items()}
    torch.sum(_output(executor, feeds)).backward()
    return float(sum((w * w.grad).abs().sum().item() for w in weights if w.grad is not None))


def train_forward(ctx: MetricInput) -> tuple[MetricExecutor, torch.Tensor | None, torch.Tensor]:
    """One forward pass with batch-statistics BN and ``Relu`` capture, shared by jacov, snip, grad_norm
    and nwot (cached on ``ctx``): ``(executor, float input requiring grad or None, first output)``."""
    if "train_forward" not in ctx.cache:
        executor = ctx.executor(capture=("Relu",))
        feeds = ctx.torch_feeds()
        name = next((k for k, v in feeds.items() if v.is_floating_point()), None)
        x = feeds[name].requires_grad_(True) if name is not None else None
        ctx.cache["train_forward"] = executor, x, _output(executor, feeds)
    return ctx.cache["train_forward"]  # type: ignore[no-any-return]


def _loss_grads(ctx: MetricInput) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Weights and dL/dw of the shared forward pass (cached on ``ctx``)."""
    if "loss_grads" not in ctx.cache:
        executor, _, out = train_forward(ctx)
        weights = _weights(executor)
        grads = torch.autograd.grad(_cross_entropy(out, ctx), weights, retain_graph=True, allow_unused=True)
        ctx.cache["loss_grads"] = ([w.detach() for w in weights],
                                   [torch.zeros_like(w) if g is None else g for w, g in zip(weights, grads)])
    return ctx.cache["loss_grads"]  # type: ignore[no-any-return]


@register("snip", data=True, labels=True, gradients=True)
def snip(ctx: MetricInput) -> float:
    """SNIP connection sensitivity: sum |w * dL/dw| (cross-entropy on the batch)."""
    weights, grads = _loss_grads(ctx)
    return float(sum((w * g).abs().sum().item() for w, g in zip(weights, grads)))


@register("grad_norm", data=True, labels=True, gradients=True)
def grad_norm(ctx: MetricInput) -> float:
    """Sum over layers of the L2 norm of dL/dw (cross-entropy on the batch)."""
    _, grads = _loss_grads(ctx)
    return float(sum(g.norm().item() for g in grads))


@register("grasp", data=True, labels=True, gradients=True)
def grasp(ctx: MetricInput) -> float:
    """GraSP: sum -w * (H g), g = dL/dw, H the Hessian of the loss (one Hessian-vector product)."""
    executor = ctx.executor()
    weights = _weights(executor)
    grads = torch.autograd.grad(_loss(executor, ctx), weights, allow_unused=True)
    g = [torch.zeros_like(w) if d is None else d.detach() for w, d in zip(weights, grads)]
    grads = torch.autograd.grad(_loss(executor, ctx), weights, create_graph=True, allow_unused=True)
    dot = sum((d * v).sum() for d, v in zip(grads, g) if d is not None)
    if not isinstance(dot, torch.Tensor) or not dot.requires_grad:
        return 0.0
    hg = torch.autograd.grad(dot, weights, allow_unused=True)
    return float(sum((-w.detach() * h).sum().item() for w, h in zip(weights, hg) if h is not None))


@register("fisher", data=True, labels=True, gradients=True)
def fisher(ctx: MetricInput) -> float:
    """Fisher information of the prunable layers' output channels: sum 0.5 * mean_n (sum_spatial a * dL/da)^2."""
    executor = ctx.executor(capture=PRUNABLE_OPS)
    _weights(executor)
    loss = _loss(executor, ctx)
    acts = [a for _, _, _, a in executor.captured if a.requires_grad]
    grads = torch.autograd.grad(loss, acts, allow_unused=True)
    total = 0.0
    for a, g in zip(acts, grads):
        if g is None:
            continue
        prod = (a * g).detach()
        per_channel = prod.reshape(prod.shape[0], prod.shape[1], -1).sum(-1) if prod.dim() > 2 else prod
        total += float((0.5 * per_channel.pow(2).mean(0)).sum().item())
    return total


@register("jacov", data=True, labels=False, gradients=True, aliases=("jacob_cov",))
def jacov(ctx: MetricInput) -> float:
    """Jacobian covariance: -sum log(v+k) + 1/(v+k) over eigenvalues v of the input-Jacobian correlations."""
    _, x, out = train_forward(ctx)
    if x is None:
        raise InputError("metrics: jacov needs a floating-point input")
    (grad,) = torch.autograd.grad(out.sum(), x, retain_graph=True, allow_unused=True)
    if grad is None:
        raise InputError("metrics: the first output does not depend on the model's floating-point input")
    jac = grad.detach().reshape(x.shape[0], -1).double().numpy()
    return jacobian_score(jac)


def jacobian_score(jac: np.ndarray, k: float = 1e-5) -> float:
    """``-sum(log(v + k) + 1/(v + k))`` over the eigenvalues ``v`` of ``corrcoef(jac)`` (rows are samples)."""
    corr = np.corrcoef(jac)
    corr = np.nan_to_num(corr, nan=0.0)
    v = np.linalg.eigvalsh(corr)
    return float(-np.sum(np.log(np.abs(v) + k) + 1.0 / (np.abs(v) + k)))
