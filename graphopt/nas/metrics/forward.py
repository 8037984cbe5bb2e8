"""Forward-only training-free metrics: parameter count, FLOPs, NASWOT and Zen-score.

=======  =====  ======  ============================================================================
metric   data   labels  definition
=======  =====  ======  ============================================================================
params   no     no      trainable parameters in millions (BatchNormalization statistics left out)
flops    no     no      FLOPs of one sample, in millions (:mod:`graphopt.analysis` counting rules)
nwot     yes    no      NASWOT (Mellor et al. 2021): ``log det K``, ``K = C C^T + (1-C)(1-C)^T`` with
                        ``C`` the per-sample binary codes of every ``Relu`` input (BN on batch statistics)
zen      no     no      Zen-score (Lin et al. 2021): ``log E||f(x) - f(x + 0.01 e)|| / 0.01 + sum_BN log
                        sqrt(mean batch variance)``, ``f`` the input of the last global pool, x, e and the
                        prunable weights ~ N(0, 1)
=======  =====  ======  ============================================================================
"""

from __future__ import annotations

import math

import numpy as np
import torch

from graphopt.errors import InputError
from graphopt.nas.metrics._context import MetricInput
from graphopt.nas.metrics._registry import register

__all__ = ["flops", "nwot", "params", "zen"]


@register("params", data=False, labels=False, gradients=False)
def params(ctx: MetricInput) -> float:
    """Trainable parameters in millions (initializers, BatchNormalization running statistics left out)."""
    from graphopt.nas.spaces import trainable_parameter_count

    return trainable_parameter_count(ctx.model) / 1e6


@register("flops", data=False, labels=False, gradients=False)
def flops(ctx: MetricInput) -> float:
    """FLOPs of one sample in millions (batch dimension 1)."""
    from graphopt.analysis import summarize

    shapes = {k: (1, *v.shape[1:]) for k, v in ctx.feeds.items()}
    return summarize(ctx.model, shapes=shapes).flops / 1e6


@register("nwot", data=True, labels=False, gradients=False, aliases=("naswot",))
def nwot(ctx: MetricInput) -> float:
    """NASWOT: log-determinant of the Hamming-similarity kernel of ReLU activation codes over the batch."""
    from graphopt.nas.metrics.grad import train_forward

    executor, _, _ = train_forward(ctx)  # the forward pass jacov, snip and grad_norm share
    with torch.no_grad():
        codes = [a.detach() for _, _, a, _ in executor.captured]
        if not codes:
            raise InputError("metrics: nwot needs Relu nodes in the graph")
        n = codes[0].shape[0]
        kernel = torch.zeros((n, n), dtype=torch.float64)
        for act in codes:
            c = (act.reshape(n, -1) > 0).double()
            kernel += c @ c.T + (1.0 - c) @ (1.0 - c).T
    return naswot_score(kernel.numpy())


def naswot_score(kernel: np.ndarray) -> float:
    """``log|det K|`` of a NASWOT kernel."""
    return float(np.linalg.slogdet(kernel)[1])


@register("zen", data=False, labels=False, gradients=False, aliases=("zen-score", "zen_score"))
def zen(ctx: MetricInput) -> float:
    """Zen-score: log of the feature-map change under a 0.01 Gaussian input perturbation plus BN log-scales."""
    executor = ctx.executor(capture=("GlobalAveragePool", "BatchNormalization"))
    feeds = ctx.torch_feeds()
    name = next((k for k, v in feeds.items() if v.is_floating_point()), None)
    if name is None:
        raise InputError("metrics: zen needs a floating-point input")
    gen = torch.Generator().manual_seed(ctx.seed)
    with torch.no_grad():  # Zen-NAS scores the network with N(0, 1) weights
        for _, w in executor.weights():
            w.normal_(generator=gen)
    x = torch.randn(feeds[name].shape, generator=gen, dtype=feeds[name].dtype)
    noise = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    alpha = 0.01
    with torch.no_grad():
        executor({**feeds, name: x})
        base = [a for op, _, a, _ in executor.captured if op == "GlobalAveragePool"]
        executor({**feeds, name: x + alpha * noise})
        moved = [a for op, _, a, _ in executor.captured if op == "GlobalAveragePool"]
        bn_inputs = [a for op, _, a, _ in executor.captured if op == "BatchNormalization"]
    if not base:
        raise InputError("metrics: zen needs a GlobalAveragePool (its input feature map is scored)")
    diff = torch.abs(base[-1] - moved[-1]).double()
    score = math.log(float(diff.reshape(diff.shape[0], -1).sum(1).mean()) / alpha + 1e-12)
    for a in bn_inputs:
        dims = [0, *range(2, a.dim())]
        score += math.log(math.sqrt(float(a.double().var(dim=dims, unbiased=False).mean()) + 1e-12))
    return score
