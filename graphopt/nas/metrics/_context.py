"""What a metric receives (:class:`MetricInput`) and the executor metrics run on (:class:`MetricExecutor`).

:class:`MetricExecutor` is a :class:`~graphopt.executor.TorchExecutor` whose weights of ``Conv``,
``Gemm`` and ``MatMul`` nodes (input 1, an initializer) are parameters ("prunable" weights, the layers
zero-cost proxies score), whose ``BatchNormalization`` nodes use batch statistics (``bn="train"``, as
the published proxies were computed) or are skipped (``bn="off"``, synflow) or kept as in the graph
(``bn="eval"``), and which can record the outputs of chosen op types during ``forward``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
import torch.nn.functional as F

from graphopt.errors import UsageError
from graphopt.executor import TorchExecutor

__all__ = ["PRUNABLE_OPS", "MetricExecutor", "MetricInput", "prunable_weights"]

#: op types whose weight (input 1) is a prunable layer weight
PRUNABLE_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")
BN_MODES = ("train", "eval", "off")


@dataclasses.dataclass
class MetricInput:
    """A model with a data batch (graph input name -> array, samples on axis 0), labels and a seed;
    ``cache`` lets metrics scored on the same input share work (one backward for snip and grad_norm)."""

    model: ir.Model
    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None
    seed: int
    cache: dict[str, Any] = dataclasses.field(default_factory=dict)

    def executor(self, *, bn: str = "train", capture: Sequence[str] = ()) -> MetricExecutor:
        """A fresh executor on this model (prunable weights as parameters), seeded torch."""
        torch.manual_seed(self.seed)
        return MetricExecutor(self.model, bn=bn, capture=capture)

    def torch_feeds(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        out = {}
        for name, array in self.feeds.items():
            tensor = torch.from_numpy(np.ascontiguousarray(array))
            out[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
        return out


def prunable_weights(model: ir.Model) -> list[str]:
    """Names of the floating-point initializers used as input 1 of :data:`PRUNABLE_OPS` nodes, in graph order."""
    names: list[str] = []
    for node in model.graph:
        if node.op_type in PRUNABLE_OPS and node.domain in ("", "ai.onnx") and len(node.inputs) > 1:
            value = node.inputs[1]
            name = value.name if value is not None else None
            if value is not None and name and name in model.graph.initializers and name not in names:
                tensor = value.const_value
                if tensor is not None and tensor.dtype.is_floating_point():
                    names.append(name)
    return names


class MetricExecutor(TorchExecutor):
    """``TorchExecutor`` with prunable weights trainable, a BatchNormalization mode and op capture.

    ``captured`` lists ``(op_type, node name, first input, first output)`` of the ``capture`` op types
    in the last ``forward`` (cleared at its start).
    """

    def __init__(self, model: ir.Model, *, bn: str = "train", capture: Sequence[str] = ()) -> None:
        if bn not in BN_MODES:
            raise UsageError(f"bn must be one of {', '.join(BN_MODES)}, got {bn!r}")
        weights = prunable_weights(model)
        super().__init__(model, trainable=weights or None)
        self.captured: list[tuple[str, str, torch.Tensor, torch.Tensor]] = []
        wanted = set(capture)
        steps = []
        for step in self._steps:  # the executor builds its plan once; swap the functions we change
            fn = step.fn
            if step.ctx.op_type == "BatchNormalization" and bn != "eval":
                fn = _bn_off if bn == "off" else _bn_train
            if step.ctx.op_type in wanted:
                fn = self._recording(fn)
            steps.append(dataclasses.replace(step, fn=fn))
        self._steps = steps

    def _recording(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(ctx: Any, xs: Sequence[Any]) -> Any:
            out = fn(ctx, xs)
            self.captured.append((ctx.op_type, ctx.name, xs[0], out[0] if isinstance(out, (tuple, list)) else out))
            return out

        return run

    def forward(self, feeds: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        self.captured = []
        return super().forward(feeds)

    def weights(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The prunable weights, ``(ONNX name, parameter)``."""
        return list(self.named_trainable_parameters())


def _bn_train(ctx: Any, xs: Sequence[Any]) -> torch.Tensor:
    x, scale, bias = xs[:3]
    return F.batch_norm(x, None, None, scale, bias, True, 0.0, ctx.get("epsilon", 1e-5))


def _bn_off(ctx: Any, xs: Sequence[Any]) -> torch.Tensor:
    return xs[0]  # type: ignore[no-any-return]
