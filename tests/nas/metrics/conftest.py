"""A tiny conv net as an ONNX graph, and the same net written directly with torch as the reference."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir
import pytest
import torch
import torch.nn.functional as F

from graphopt.nas.spaces._build import GraphBuilder


def tiny_model(seed: int = 0) -> ir.Model:
    """``Conv3x3(3, 4) -> BN -> Relu -> Conv1x1(4, 4) -> BN -> Relu -> GlobalAveragePool -> Gemm(4, 3)``."""
    b = GraphBuilder("tiny", seed=seed)
    x = b.input("input", ["batch", 3, 6, 6])
    h = b.relu(b.batch_norm(b.conv(x, 3, 4, 3, name="c1"), 4, name="bn1"))
    h = b.relu(b.batch_norm(b.conv(h, 4, 4, 1, name="c2"), 4, name="bn2"))
    return b.model([(b.classifier_head(h, 4, 3), ["batch", 3])])


def reference(model: ir.Model) -> tuple[dict[str, torch.Tensor], Callable[..., torch.Tensor]]:
    """The tiny net's weights (conv/linear weights, as leaf tensors) and ``forward(x, weights, bn=..., acts=None)``."""
    init = {k: torch.from_numpy(np.array(v.const_value.numpy())) for k, v in model.graph.initializers.items()
            if v.const_value is not None}
    weights = {k: init[k].clone() for k in ("c1.weight", "c2.weight", "classifier.weight")}

    def forward(x: torch.Tensor, w: dict[str, torch.Tensor], *, bn: str = "train",
                acts: list[torch.Tensor] | None = None, relus: list[torch.Tensor] | None = None) -> torch.Tensor:
        def norm(h: torch.Tensor) -> torch.Tensor:
            if bn == "off":
                return h
            return F.batch_norm(h, None, None, torch.ones(4, dtype=h.dtype), torch.zeros(4, dtype=h.dtype), True)

        def keep(h: torch.Tensor, into: list[torch.Tensor] | None) -> torch.Tensor:
            if into is not None:
                into.append(h)
            return h

        h = keep(F.conv2d(x, w["c1.weight"], padding=1), acts)
        h = F.relu(keep(norm(h), relus))
        h = keep(F.conv2d(h, w["c2.weight"]), acts)
        h = F.relu(keep(norm(h), relus))
        return keep(F.linear(h.mean((2, 3)), w["classifier.weight"], init["classifier.bias"].to(h.dtype)), acts)

    return weights, forward


@pytest.fixture
def tiny() -> ir.Model:
    return tiny_model()


@pytest.fixture
def batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return rng.standard_normal((8, 3, 6, 6), dtype=np.float32), rng.integers(0, 3, size=8)
