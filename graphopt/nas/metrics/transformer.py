"""Training-free metrics of transformers (Serianni & Kalita, ACL 2023), computed on the ONNX graph.

Attention blocks (their ``Softmax``, the ``P·V`` MatMul or fused attention node, the Q/K/V/O
projections) come from :mod:`graphopt.analysis`, MLP blocks (up/down projections) too. All metrics
share one forward pass through the differentiable executor and, for the gradient metrics, one
backward pass of the objective ``R = sum(f(x) * r)``: ``f`` the first output, ``r ~ N(0, 1)`` seeded,
padded tokens (``attention_mask == 0``) left out. The random projection replaces the plain ``sum f(x)``
of the reference code, whose gradient through a final ``LayerNormalization`` with unit scale (every
freshly initialised BERT) is zero. No metric uses labels; data is synthesised when none is given.
Other departures from the authors' notebook, which follow the papers the metrics come from: act_dist
takes NASWOT's ``log det K`` where the notebook sums the entries of ``K``, and head_imp is Michel et
al.'s gate gradient where the notebook sums ``|W * dW|`` of the attention projections.

===========  =====  ======  =========  ===================================================================
metric       data   labels  gradients  definition
===========  =====  ======  =========  ===================================================================
hidden_cov   yes    no      no         hidden covariance: ``-sum_i log(v_i + k) + 1 / (v_i + k)``, ``v`` the
                                       eigenvalues of the correlation between samples of the first output
                                       (padded tokens zeroed), ``k = 1e-5`` (jacov on hidden states)
act_dist     yes    no      no         activation distance: NASWOT ``log det K`` of the binary codes of every
                                       ``Relu``/``Gelu`` (and erf-GELU) layer, padded tokens left out
syn_div      yes    no      yes        synaptic diversity: ``sum ||W||_* ||dR/dW||_*`` (nuclear norms) over
                                       the Q/K/V/O projection weights
syn_sal      yes    no      yes        synaptic saliency: ``sum |W * dR/dW|`` over the MLP weights
head_imp     yes    no      yes        head importance (Michel et al. 2019): ``sum_h mean_batch |sum A_h *
                                       dR/dA_h|``, ``A_h`` head ``h``'s output (the gate ``xi_h = 1``)
attn_conf    yes    no      no         attention confidence (Voita et al. 2019): ``sum_h`` mean over samples
                                       and unpadded query tokens of the largest attention probability
===========  =====  ======  =========  ===================================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import onnx_ir as ir
import torch

from graphopt.errors import InputError
from graphopt.nas.metrics._context import MetricExecutor, MetricInput
from graphopt.nas.metrics._registry import register
from graphopt.nas.metrics.forward import naswot_score
from graphopt.nas.metrics.grad import jacobian_score

__all__ = ["ACTIVATIONS", "act_dist", "attn_conf", "head_imp", "hidden_cov", "syn_div", "syn_sal"]

#: activations whose sign pattern act_dist codes: ``GELU(x) > 0``, ``erf(x / sqrt 2) > 0`` and ``ReLU(x) > 0``
#: all mean ``x > 0`` (BiasGelu/FastGelu add their bias input first)
ACTIVATIONS = frozenset({"Relu", "Gelu", "Erf", "FastGelu", "QuickGelu", "BiasGelu"})
_PROB_PATH = frozenset({"Where", "Cast", "Identity", "Dropout", "Reshape", "Squeeze", "Unsqueeze", "Mul", "Add",
                        "Clip"})


@dataclasses.dataclass(frozen=True)
class _Block:
    """One attention block: its Softmax (None when fused), the node whose output 0 holds the heads'
    outputs (``P·V`` or the fused node) and the number of heads."""

    softmax: ir.Node | None
    context: ir.Node | None
    heads: int | None


@dataclasses.dataclass(frozen=True)
class _Layout:
    blocks: tuple[_Block, ...]
    attention_weights: tuple[str, ...]
    mlp_weights: tuple[str, ...]


def _layout(model: ir.Model) -> _Layout:
    from graphopt.analysis._attention import find_attention
    from graphopt.analysis._blocks import find_mlps

    located: list[dict[str, ir.Node | None]] = []
    found = find_attention(model.graph, [], located=located)
    blocks, attention = [], []
    for block, where in zip(found, located):
        node = where["node"]
        softmax = node if node is not None and node.op_type == "Softmax" else None
        context = _context_matmul(softmax) if softmax is not None else node
        blocks.append(_Block(softmax, context, block.num_heads))
        for proj in (block.q_proj, block.k_proj, block.v_proj, block.o_proj):
            if proj is not None and proj.weight not in attention:
                attention.append(proj.weight)
    mlp = [p.weight for b in find_mlps(model.graph) for p in (b.gate, b.up, b.down) if p is not None]
    return _Layout(tuple(blocks), tuple(attention), tuple(dict.fromkeys(mlp)))


def _context_matmul(softmax: ir.Node) -> ir.Node | None:
    """The MatMul that multiplies the attention probabilities with V (they enter as input 0)."""
    frontier = [softmax.outputs[0]]
    for _ in range(7):
        nxt: list[ir.Value] = []
        for value in frontier:
            for node, index in value.uses():
                if node.op_type in ("MatMul", "Einsum") and (index == 0 or node.op_type == "Einsum"):
                    return node
                if node.op_type in _PROB_PATH:
                    nxt.extend(node.outputs[:1])
        frontier = nxt
    return None


class _ProbeExecutor(MetricExecutor):
    """A metric executor that keeps ``(inputs, output 0)`` of chosen nodes (by identity) and of the
    :data:`ACTIVATIONS` in ``probed[label]`` during ``forward``."""

    def __init__(self, model: ir.Model, probes: dict[int, str]) -> None:
        super().__init__(model, bn="train")
        self.probed: dict[str, list[tuple[Sequence[Any], torch.Tensor]]] = {}
        nodes = [n for n in model.graph if not (n.op_type == "Constant" and n.domain in ("", "ai.onnx"))]
        if len(nodes) != len(self._steps):
            raise InputError("metrics: the executor's plan does not follow the graph's nodes")
        steps = []
        for node, step in zip(nodes, self._steps):
            label = probes.get(id(node))
            if label is None and node.op_type in ACTIVATIONS:
                label = "activation"
            steps.append(step if label is None else dataclasses.replace(step, fn=self._probe(step.fn, label)))
        self._steps = steps

    def _probe(self, fn: Any, label: str) -> Any:
        def run(ctx: Any, xs: Sequence[Any]) -> Any:
            out = fn(ctx, xs)
            first = out[0] if isinstance(out, (tuple, list)) else out
            self.probed.setdefault(label, []).append((tuple(xs), first))
            return out

        return run

    def forward(self, feeds: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        self.probed = {}
        return super().forward(feeds)


@dataclasses.dataclass
class _Pass:
    layout: _Layout
    executor: _ProbeExecutor
    output: torch.Tensor
    mask: torch.Tensor | None  # [batch, sequence] of 0/1, float64


def _forward(ctx: MetricInput) -> _Pass:
    """The shared forward pass (cached on ``ctx``)."""
    if "transformer_forward" not in ctx.cache:
        layout = _layout(ctx.model)
        probes: dict[int, str] = {}
        for i, block in enumerate(layout.blocks):
            if block.softmax is not None:
                probes[id(block.softmax)] = f"softmax.{i}"
            if block.context is not None:
                probes[id(block.context)] = f"context.{i}"
        torch.manual_seed(ctx.seed)
        executor = _ProbeExecutor(ctx.model, probes)
        feeds = ctx.torch_feeds()
        out = executor(feeds)[executor.output_names[0]]
        if not out.is_floating_point():
            raise InputError(f"metrics: the first output {executor.output_names[0]!r} is not floating point")
        ctx.cache["transformer_forward"] = _Pass(layout, executor, out, _mask(feeds, out))
    return ctx.cache["transformer_forward"]  # type: ignore[no-any-return]


def _mask(feeds: dict[str, torch.Tensor], out: torch.Tensor) -> torch.Tensor | None:
    """The attention mask (a 2-D integer input whose name holds ``mask``), as 0/1 float64."""
    for name, value in feeds.items():
        if ("mask" in name.lower() and value.dim() == 2 and not value.is_floating_point()
                and value.shape[0] == out.shape[0]):
            return (value != 0).double()
    return None


def _expand(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """``mask`` broadcast over ``[batch, sequence, ...]``, or None when ``like`` is not token-shaped."""
    if mask is None or like.dim() < 2 or tuple(like.shape[:2]) != tuple(mask.shape):
        return None
    return mask.reshape(*mask.shape, *([1] * (like.dim() - 2)))


def _backward(ctx: MetricInput) -> dict[str, Any]:
    """Gradients of ``R = sum(f(x) * r)`` w.r.t. the attention and MLP weights and the heads' outputs."""
    if "transformer_backward" not in ctx.cache:
        run = _forward(ctx)
        weights = dict(run.executor.weights())
        targets: dict[str, torch.Tensor] = {}
        for name in (*run.layout.attention_weights, *run.layout.mlp_weights):
            if name in weights:
                targets[f"w:{name}"] = weights[name]
        for label, records in run.executor.probed.items():
            if label.startswith("context.") and records[0][1].requires_grad:
                targets[label] = records[0][1]
        if not targets:
            raise InputError("metrics: no attention or MLP weights (MatMul/Gemm initializers) to score")
        gen = torch.Generator().manual_seed(ctx.seed + 7)
        r = torch.randn(run.output.shape, generator=gen, dtype=torch.float64).to(run.output.dtype)
        weight = _expand(run.mask, run.output)
        objective = (run.output * r * (weight.to(r.dtype) if weight is not None else 1.0)).sum()
        grads = torch.autograd.grad(objective, list(targets.values()), allow_unused=True)
        ctx.cache["transformer_backward"] = {
            key: (value.detach(), torch.zeros_like(value) if g is None else g.detach())
            for (key, value), g in zip(targets.items(), grads)
        }
    return ctx.cache["transformer_backward"]  # type: ignore[no-any-return]


@register("hidden_cov", data=True, labels=False, gradients=False, aliases=("hidden_covariance",))
def hidden_cov(ctx: MetricInput) -> float:
    """Hidden covariance: the jacov eigenvalue score of the correlation between samples' hidden states."""
    run = _forward(ctx)
    with torch.no_grad():
        hidden = run.output.detach().double()
        weight = _expand(run.mask, hidden)
        if weight is not None:
            hidden = hidden * weight
        rows = hidden.reshape(hidden.shape[0], -1).numpy()
    if rows.shape[0] < 2:
        raise InputError("metrics: hidden_cov needs at least 2 samples")
    return jacobian_score(rows)


@register("act_dist", data=True, labels=False, gradients=False, aliases=("activation_distance",))
def act_dist(ctx: MetricInput) -> float:
    """Activation distance: NASWOT log-determinant over the sign codes of the Relu/GELU layers."""
    run = _forward(ctx)
    records = run.executor.probed.get("activation", [])
    if not records:
        raise InputError(f"metrics: act_dist needs activation nodes ({'/'.join(sorted(ACTIVATIONS))})")
    with torch.no_grad():
        n = records[0][1].shape[0]
        kernel = torch.zeros((n, n), dtype=torch.float64)
        for xs, _ in records:
            pre = xs[0].detach().double()
            if len(xs) > 1 and xs[1] is not None and xs[1].is_floating_point() and xs[1].dim() == 1:
                pre = pre + xs[1].detach().double()  # BiasGelu / FastGelu bias
            code = (pre > 0).double()
            keep = _expand(run.mask, code)
            keep = torch.ones_like(code) if keep is None else keep.expand_as(code)
            c, not_c = (code * keep).reshape(n, -1), ((1.0 - code) * keep).reshape(n, -1)
            kernel += c @ c.T + not_c @ not_c.T
    return naswot_score(kernel.numpy())


def _weight_gradients(ctx: MetricInput, metric: str, weights: Sequence[str], blocks: str,
                      what: str) -> tuple[dict[str, Any], list[str]]:
    """The backward pass's ``(weight, gradient)`` pairs and the keys of ``weights`` among them."""
    if not weights:
        raise InputError(f"metrics: {metric} found no {blocks}")
    grads = _backward(ctx)
    names = [f"w:{n}" for n in weights if f"w:{n}" in grads]
    if not names:
        raise InputError(f"metrics: {metric} found no {what} (MatMul/Gemm initializers)")
    return grads, names


@register("syn_div", data=True, labels=False, gradients=True, aliases=("synaptic_diversity",))
def syn_div(ctx: MetricInput) -> float:
    """Synaptic diversity: sum over the Q/K/V/O weights of ||W||_nuc * ||dR/dW||_nuc."""
    grads, names = _weight_gradients(ctx, "syn_div", _forward(ctx).layout.attention_weights,
                                     "attention blocks (Q/K/V/O projections)", "attention projection weights")
    total = 0.0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small SVDs: one thread is fastest, and spinning threads stall on a busy machine
    try:
        for key in names:
            w, g = (t.double().reshape(t.shape[0], -1) for t in grads[key])
            total += float(torch.linalg.svdvals(w).sum() * torch.linalg.svdvals(g).sum())
    finally:
        torch.set_num_threads(threads)
    return total


@register("syn_sal", data=True, labels=False, gradients=True, aliases=("synaptic_saliency",))
def syn_sal(ctx: MetricInput) -> float:
    """Synaptic saliency: sum over the MLP weights of |W * dR/dW|."""
    grads, names = _weight_gradients(ctx, "syn_sal", _forward(ctx).layout.mlp_weights,
                                     "MLP blocks (up/down projections around an activation)", "MLP weights")
    return float(sum((grads[k][0].double() * grads[k][1].double()).abs().sum().item() for k in names))


@register("head_imp", data=True, labels=False, gradients=True, aliases=("head_importance",))
def head_imp(ctx: MetricInput) -> float:
    """Head importance: sum over heads of mean_batch |sum A_h * dR/dA_h| (A_h the head's output)."""
    run = _forward(ctx)
    if not any(block.context is not None for block in run.layout.blocks):
        raise InputError("metrics: head_imp found no attention blocks")
    grads = _backward(ctx)
    total, seen = 0.0, 0
    for i, block in enumerate(run.layout.blocks):
        if f"context.{i}" not in grads:
            continue
        a, g = (t.double() for t in grads[f"context.{i}"])
        prod = a * g
        if prod.dim() == 4 and (block.heads is None or prod.shape[1] == block.heads):
            per_head = prod.sum(dim=(2, 3))  # [batch, heads, sequence, head size]
        elif prod.dim() == 3 and block.heads and prod.shape[-1] % block.heads == 0:
            per_head = prod.reshape(*prod.shape[:2], block.heads, -1).sum(dim=(1, 3))  # [batch, sequence, hidden]
        else:
            continue
        total += float(per_head.abs().mean(0).sum())
        seen += 1
    if not seen:
        raise InputError("metrics: head_imp found no attention block whose heads' outputs it can split")
    return total


@register("attn_conf", data=True, labels=False, gradients=False, aliases=("attention_confidence",))
def attn_conf(ctx: MetricInput) -> float:
    """Attention confidence: sum over heads of the mean largest attention probability per query token."""
    run = _forward(ctx)
    total, seen = 0.0, 0
    with torch.no_grad():
        for i in range(len(run.layout.blocks)):
            records = run.executor.probed.get(f"softmax.{i}")
            if not records:
                continue
            probs = records[0][1].detach().double()
            if probs.dim() != 4:
                continue
            top = probs.max(dim=-1).values  # [batch, heads, queries]
            if run.mask is not None and tuple(run.mask.shape) == (top.shape[0], top.shape[2]):
                weight = run.mask[:, None, :].expand_as(top)
                per_head = (top * weight).sum(dim=(0, 2)) / weight.sum(dim=(0, 2)).clamp_min(1.0)
            else:
                per_head = top.mean(dim=(0, 2))
            total += float(per_head.sum())
            seen += 1
    if not seen:
        raise InputError("metrics: attn_conf needs unfused attention (a Softmax over Q·Kᵀ with 4-D probabilities)")
    return total
