"""A torch NAS-Bench-201 network (the benchmark's modules, written out) to check the emitted ONNX graph.

Modules are created in the order :class:`graphopt.nas.spaces.nb201.NB201Space` emits initializers, so
:func:`load_onnx_weights` copies a built graph's weights into it by position.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir
import torch
from torch import nn

from graphopt.nas.spaces.nb201 import EDGES, OPS


def _relu_conv_bn(c_in: int, c_out: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(), nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False), nn.BatchNorm2d(c_out))


class _Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


class _Cell(nn.Module):
    def __init__(self, ops: tuple[int, ...], c: int) -> None:
        super().__init__()
        self.edges = nn.ModuleDict()
        for target in range(1, 4):
            for pos, (src, dst) in enumerate(EDGES):
                if dst != target:
                    continue
                name = OPS[ops[pos]]
                makers: dict[str, Callable[[], nn.Module]] = {
                    "skip_connect": nn.Identity, "none": _Zero,
                    "avg_pool_3x3": lambda: nn.AvgPool2d(3, 1, 1, count_include_pad=False),
                    "nor_conv_3x3": lambda: _relu_conv_bn(c, c, 3), "nor_conv_1x1": lambda: _relu_conv_bn(c, c, 1),
                }
                self.edges[f"{dst}<-{src}"] = makers[name]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for target in range(1, 4):
            nodes.append(sum(self.edges[f"{target}<-{src}"](nodes[src]) for src in range(target)))  # type: ignore[misc]
        return nodes[-1]


class _Reduction(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv_a = _relu_conv_bn(c_in, c_out, 3, 2)
        self.conv_b = _relu_conv_bn(c_out, c_out, 3)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, 2, 0), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class TorchNB201(nn.Module):
    def __init__(self, ops: tuple[int, ...], c: int = 16, n: int = 5, classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)]
        for stage in range(3):
            width = c * 2**stage
            if stage:
                layers.append(_Reduction(width // 2, width))
            layers.extend(_Cell(ops, width) for _ in range(n))
        layers += [nn.BatchNorm2d(4 * c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * c, classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


def load_onnx_weights(module: nn.Module, model: ir.Model) -> None:
    """Copy ``model``'s initializers (constants left out) into ``module``'s parameters and buffers, in order."""
    tensors = [v.const_value for name, v in model.graph.initializers.items() if ".const" not in name]
    targets = [t for name, t in module.state_dict().items() if not name.endswith("num_batches_tracked")]
    assert len(tensors) == len(targets), (len(tensors), len(targets))
    with torch.no_grad():
        for target, tensor in zip(targets, tensors):
            assert tensor is not None
            target.copy_(torch.from_numpy(np.array(tensor.numpy())))
