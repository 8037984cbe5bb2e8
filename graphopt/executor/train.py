"""``finetune``: train selected initializers of an ONNX graph with the torch executor.

The loss compares the graph's outputs with targets: arrays in ``data`` keyed by output name
(labels), or the outputs of a ``teacher`` graph computed once with onnxruntime (distillation).
``trainable`` takes the executor's selections (``adapters``, ``gates``, ``clip``, ``all``, names, globs).
``mse`` is ``mean((y - t)^2)``, ``cosine`` is ``mean(1 - cos(y, t))`` over the last axis, ``ce`` is
cross-entropy over the last axis against integer labels or the teacher's softmax.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
import torch.nn.functional as F

from graphopt.errors import InputError, PassError, UsageError
from graphopt.executor.executor import TorchExecutor, Trainable

__all__ = ["LOSSES", "FinetuneResult", "finetune", "split_data"]

logger = logging.getLogger(__name__)

LOSSES = ("mse", "cosine", "ce")
Progress = Callable[[int, int, float], None]


@dataclasses.dataclass
class FinetuneResult:
    """The trained model (values written back) and how training went."""

    model: ir.Model
    losses: list[float]  # training loss per step
    loss_before: float  # on the evaluation data (the training data unless given)
    loss_after: float
    trainable: tuple[str, ...]
    parameters: int
    seconds: float  # the training steps alone (evaluation excluded)

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": len(self.losses), "loss_before": self.loss_before, "loss_after": self.loss_after,
            "first_loss": self.losses[0] if self.losses else None,
            "last_loss": self.losses[-1] if self.losses else None,
            "trainable": len(self.trainable), "parameters": self.parameters, "seconds": round(self.seconds, 3),
            "seconds_per_step": round(self.seconds / max(len(self.losses), 1), 4),
        }


def split_data(model: ir.Model, data: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``data`` split into feeds (graph input names, checked against the signature) and targets
    (graph output names); any other key is an error."""
    from graphopt.feeds import input_specs, validate_feeds

    specs = input_specs(model)
    inputs = {s.name for s in specs}
    outputs = {v.name for v in model.graph.outputs}
    unknown = sorted(set(data) - inputs - outputs)
    if unknown:
        raise InputError(
            f"data: keys {', '.join(unknown)} are neither inputs ({', '.join(sorted(inputs))}) "
            f"nor outputs ({', '.join(sorted(o or '' for o in outputs))}) of the model"
        )
    feeds = validate_feeds({k: v for k, v in data.items() if k in inputs}, specs, source="data")
    targets = {k: np.asarray(v) for k, v in data.items() if k in outputs}
    counts = {len(v) if v.ndim else 1 for v in [*feeds.values(), *targets.values()]}
    if len(counts) != 1:
        raise InputError(f"data: arrays disagree on the number of samples (axis 0): {sorted(counts)}")
    return feeds, targets


def finetune(
    model: ir.Model,
    data: Mapping[str, np.ndarray],
    *,
    teacher: ir.Model | str | os.PathLike[str] | None = None,
    trainable: Trainable = "all",
    steps: int = 100,
    lr: float = 1e-3,
    batch_size: int = 8,
    loss: str = "mse",
    seed: int = 0,
    eval_data: Mapping[str, np.ndarray] | None = None,
    progress: Progress | None = None,
) -> FinetuneResult:
    """Train the ``trainable`` initializers of ``model`` for ``steps`` Adam steps on ``data``
    (samples on axis 0, drawn in a seeded order) and write them back into ``model`` (in place).

    Targets: with ``teacher`` the teacher's outputs (same output order) on the same inputs,
    computed with onnxruntime; otherwise arrays in ``data`` keyed by output name. Deterministic
    for a given ``seed``. ``progress(step, steps, loss)`` is called after every step.
    """
    if loss not in LOSSES:
        raise UsageError(f"unknown loss {loss!r} (choose from {', '.join(LOSSES)})")
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise UsageError("steps and batch_size must be positive and lr above 0")
    torch.manual_seed(seed)
    feeds, targets = split_data(model, data)
    executor = TorchExecutor(model, trainable=trainable)
    if not executor.trainable_names:
        raise UsageError("nothing to train: the selection of trainable initializers is empty")
    names = executor.output_names
    if teacher is not None:
        if targets:
            raise UsageError("give targets in the data or a teacher, not both")
        targets = _teacher_targets(teacher, feeds, names, batch_size)
    if not targets:
        raise UsageError(f"no targets: give a teacher model or arrays keyed by output name ({', '.join(names)})")
    _check_targets(targets, loss)
    if eval_data is not None:
        eval_feeds, eval_targets = split_data(model, eval_data)
        if teacher is not None:
            eval_targets = _teacher_targets(teacher, eval_feeds, names, batch_size)
        _check_targets(eval_targets, loss)
    else:
        eval_feeds, eval_targets = feeds, targets
    total = len(next(iter(feeds.values())))
    batch = min(batch_size, total)
    params = [p for _, p in executor.named_trainable_parameters()]
    optimizer = torch.optim.Adam(params, lr=lr)
    rng = np.random.default_rng(seed)
    loss_before = _evaluate(executor, eval_feeds, eval_targets, loss, batch)
    started = time.perf_counter()
    losses: list[float] = []
    order = rng.permutation(total)
    cursor = 0
    for step in range(steps):
        if cursor + batch > total:
            order, cursor = rng.permutation(total), 0
        index = order[cursor : cursor + batch]
        cursor += batch
        outputs = executor({k: v[index] for k, v in feeds.items()})
        value = _loss(outputs, {k: torch.from_numpy(v[index]) for k, v in targets.items()}, loss)
        if not torch.isfinite(value):
            raise PassError(f"finetune: the loss became {value.item()} at step {step + 1}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        value.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        losses.append(float(value.item()))
        if progress is not None:
            progress(step + 1, steps, losses[-1])
    seconds = time.perf_counter() - started
    loss_after = _evaluate(executor, eval_feeds, eval_targets, loss, batch)
    executor.write_back(model)
    from graphopt.provenance import record_pass

    record_pass(model, "finetune", {
        "trainable": trainable if isinstance(trainable, str) else list(trainable or []),
        "steps": steps, "lr": lr, "batch_size": batch, "loss": loss, "seed": seed,
        "teacher": teacher is not None, "loss_before": loss_before, "loss_after": loss_after,
    })
    logger.info("finetune: loss %.6g -> %.6g in %d steps (%.1f s)", loss_before, loss_after, steps, seconds)
    return FinetuneResult(
        model, losses, loss_before, loss_after, executor.trainable_names, sum(p.numel() for p in params), seconds
    )


def _teacher_targets(
    teacher: ir.Model | str | os.PathLike[str], feeds: Mapping[str, np.ndarray], names: list[str], batch: int
) -> dict[str, np.ndarray]:
    """The teacher's outputs on ``feeds``, batch by batch, keyed by the student's output names."""
    from graphopt.runtime import make_session

    session = make_session(teacher)
    teacher_names = [o.name for o in session.get_outputs()]
    if len(teacher_names) != len(names):
        raise InputError(f"the teacher has {len(teacher_names)} outputs, the model {len(names)}")
    wanted = {i.name for i in session.get_inputs()}
    total = len(next(iter(feeds.values())))
    chunks: list[list[np.ndarray]] = []
    for start in range(0, total, batch):
        part = {k: v[start : start + batch] for k, v in feeds.items() if k in wanted}
        chunks.append(session.run(teacher_names, part))
    return {name: np.concatenate([c[i] for c in chunks]) for i, name in enumerate(names)}


def _check_targets(targets: Mapping[str, np.ndarray], loss: str) -> None:
    for name, value in targets.items():
        integer = np.issubdtype(value.dtype, np.integer)
        if integer and loss != "ce":
            raise UsageError(f"targets for {name!r} are integer labels: use loss 'ce'")
        if not integer and not np.issubdtype(value.dtype, np.floating):
            raise InputError(f"targets for {name!r} have dtype {value.dtype}, expected floats or integer labels")


def _loss(outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor], kind: str) -> torch.Tensor:
    parts = []
    for name, target in targets.items():
        y = outputs[name]
        if kind == "ce":
            if not target.is_floating_point():
                parts.append(F.cross_entropy(y.reshape(-1, y.shape[-1]), target.reshape(-1).long()))
            else:
                t = torch.softmax(target.to(y.dtype), dim=-1)
                parts.append(-(t * torch.log_softmax(y, dim=-1)).sum(-1).mean())
            continue
        t = target.to(y.dtype)
        if y.shape != t.shape:
            raise InputError(f"targets for {name!r} have shape {tuple(t.shape)}, the output {tuple(y.shape)}")
        if kind == "mse":
            parts.append(F.mse_loss(y, t))
        else:
            parts.append((1 - F.cosine_similarity(y, t, dim=-1)).mean())
    return torch.stack(parts).sum()


def _evaluate(
    executor: TorchExecutor, feeds: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray], kind: str, batch: int
) -> float:
    """The loss averaged over all samples (weighted by batch size), without gradients."""
    total = len(next(iter(feeds.values())))
    weighted = 0.0
    with torch.no_grad():
        for start in range(0, total, batch):
            part = slice(start, start + batch)
            out = executor({k: v[part] for k, v in feeds.items()})
            value = _loss(out, {k: torch.from_numpy(v[part]) for k, v in targets.items()}, kind)
            weighted += float(value) * len(range(*part.indices(total)))
    return weighted / total
