"""NAS-Bench-201 (Dong & Yang, 2020): a 4-node cell with 6 edges, 5 operations, 15,625 cells.

An architecture is a tuple of six operation indices, one per edge, edges in the order
``(1,2), (1,3), (1,4), (2,3), (2,4), (3,4)`` (node 1 is the cell input, node 4 its output) and
operations indexed as :data:`OPS`; its string form is the tuple's ``repr`` (``"(2, 0, 3, 1, 4, 2)"``),
as in NASLib's files. :meth:`NB201Space.parse` also reads the original notation
``|nor_conv_3x3~0|+|skip_connect~0|none~1|+|...|`` (:meth:`NB201Space.to_net_str` writes it).

The network is the benchmark's: stem ``Conv3x3(3, C) -> BN``; three stages of ``N`` cells with
``C, 2C, 4C`` channels, separated by residual reduction blocks (``ReLUConvBN 3x3 stride 2 ->
ReLUConvBN 3x3`` plus ``AvgPool2x2 -> Conv1x1``); ``BN -> ReLU``, global average pool, linear.
In a cell each node is the sum of its incoming edges; ``nor_conv_kxk`` is ``ReLU -> Conv -> BN``,
``avg_pool_3x3`` excludes padding, ``skip_connect`` is the identity and ``none`` (zero) edges are
left out of the sum (a node whose edges are all ``none`` is ``x * 0``). Defaults ``C=16``, ``N=5``,
10 classes, 3x32x32 inputs: trainable parameter counts equal the published ones.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Hashable, Iterator

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError, UsageError
from graphopt.nas.spaces._base import SearchSpace
from graphopt.nas.spaces._build import GraphBuilder
from graphopt.nas.spaces._ops import avg_pool, conv_bn, relu_conv_bn, zeros_like

__all__ = ["EDGES", "OPS", "NB201Space"]

OPS = ("skip_connect", "none", "nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3")
#: (source, target) node of each position of the tuple, nodes numbered from 0 (the cell input)
EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
_NET_STR_ORDER = (0, 1, 3, 2, 4, 5)  # tuple positions in |..|+|..|..|+|..|..|..| order
_INTS = re.compile(r"-?\d+")

NB201Arch = tuple[int, int, int, int, int, int]


class NB201Space(SearchSpace):
    """NAS-Bench-201's cell space and macro network (see the module docstring)."""

    name = "nb201"

    def __init__(self, *, channels: int = 16, cells_per_stage: int = 5, num_classes: int = 10,
                 image_size: int = 32) -> None:
        if min(channels, cells_per_stage, num_classes, image_size) < 1:
            raise UsageError("channels, cells_per_stage, num_classes and image_size must be positive")
        self.channels = channels
        self.cells_per_stage = cells_per_stage
        self.num_classes = num_classes
        self.image_size = image_size

    # -- notation -------------------------------------------------------------------------------

    def parse(self, text: str) -> NB201Arch:
        text = text.strip()
        if "~" in text:
            return self._parse_net_str(text)
        if not re.fullmatch(r"[\s()\[\],\d-]+", text):
            raise InputError(f"not a NAS-Bench-201 architecture: {text!r} (expected six op indices or |op~k|+...)")
        return self._check([int(v) for v in _INTS.findall(text)], text)

    def to_string(self, arch: Hashable) -> str:
        return repr(self._check(arch, arch))

    def to_net_str(self, arch: Hashable) -> str:
        """The original notation, ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``."""
        ops = self._check(arch, arch)
        groups, k = [], 0
        for target in range(1, 4):
            names = [f"{OPS[ops[_NET_STR_ORDER[k + src]]]}~{src}" for src in range(target)]
            k += target
            groups.append("|" + "|".join(names) + "|")
        return "+".join(groups)

    def _parse_net_str(self, text: str) -> NB201Arch:
        groups = text.split("+")
        if len(groups) != 3:
            raise InputError(f"not a NAS-Bench-201 net string (3 '+'-separated nodes expected): {text!r}")
        ops: list[int] = [0] * 6
        k = 0
        for target, group in enumerate(groups, start=1):
            items = [item for item in group.strip().strip("|").split("|")]
            if len(items) != target:
                raise InputError(f"node {target + 1} of {text!r} needs {target} edges, got {len(items)}")
            for src, item in enumerate(items):
                op, _, source = item.partition("~")
                if op not in OPS or source != str(src):
                    raise InputError(f"bad edge {item!r} in {text!r} (expected op~{src}, op in {', '.join(OPS)})")
                ops[_NET_STR_ORDER[k + src]] = OPS.index(op)
            k += target
        return tuple(ops)  # type: ignore[return-value]

    @staticmethod
    def _check(values: object, shown: object) -> NB201Arch:
        try:
            ops = tuple(int(v) for v in values)  # type: ignore[attr-defined]
        except (TypeError, ValueError):
            raise InputError(f"not a NAS-Bench-201 architecture: {shown!r}") from None
        if len(ops) != 6 or any(not 0 <= v < len(OPS) for v in ops):
            raise InputError(f"a NAS-Bench-201 architecture is six op indices in 0..4, got {shown!r}")
        return ops  # type: ignore[return-value]

    # -- the space ------------------------------------------------------------------------------

    def sample(self, rng: np.random.Generator, count: int) -> list[Hashable]:
        return [tuple(int(v) for v in row) for row in rng.integers(0, len(OPS), size=(count, 6))]

    def enumerate(self) -> Iterator[Hashable]:
        """All 15,625 cells, in the order of ``nb201_val_acc.csv`` (lexicographic)."""
        return iter(itertools.product(range(len(OPS)), repeat=6))

    def one_hot(self, arch: Hashable) -> np.ndarray:
        ops = self._check(arch, arch)
        vec = np.zeros((6, len(OPS)), dtype=np.float32)
        vec[np.arange(6), ops] = 1.0
        return vec.reshape(-1)

    # -- the network ----------------------------------------------------------------------------

    def build(self, arch: Hashable, *, seed: int = 0) -> ir.Model:
        ops = self._check(arch, arch)
        b = GraphBuilder("nb201", seed=seed)
        c = self.channels
        h = conv_bn(b, b.input("input", ["batch", 3, self.image_size, self.image_size]), 3, c, 3, name="stem")
        index = 0
        for stage in range(3):
            width = c * 2**stage
            if stage:
                h = self._reduction(b, h, width // 2, width, name=f"cells.{index}")
                index += 1
            for _ in range(self.cells_per_stage):
                h = self._cell(b, h, width, ops, name=f"cells.{index}")
                index += 1
        h = b.relu(b.batch_norm(h, 4 * c, name="lastact.bn"))
        logits = b.classifier_head(h, 4 * c, self.num_classes)
        return b.model([(logits, ["batch", self.num_classes])], metadata={
            "graphopt.nas.space": self.name, "graphopt.nas.arch": self.to_string(ops), "graphopt.nas.seed": str(seed)})

    @staticmethod
    def _cell(b: GraphBuilder, x: ir.Value, c: int, ops: NB201Arch, *, name: str) -> ir.Value:
        nodes = [x]
        for target in range(1, 4):
            terms = []
            for pos, (src, dst) in enumerate(EDGES):
                if dst != target:
                    continue
                op, edge = OPS[ops[pos]], f"{name}.edges.{dst}<-{src}"
                if op == "skip_connect":
                    terms.append(nodes[src])
                elif op == "nor_conv_3x3":
                    terms.append(relu_conv_bn(b, nodes[src], c, c, 3, name=edge))
                elif op == "nor_conv_1x1":
                    terms.append(relu_conv_bn(b, nodes[src], c, c, 1, name=edge))
                elif op == "avg_pool_3x3":
                    terms.append(avg_pool(b, nodes[src], 3, 1))
            nodes.append(b.add_n(terms) if terms else zeros_like(b, nodes[0]))
        return nodes[-1]

    @staticmethod
    def _reduction(b: GraphBuilder, x: ir.Value, c_in: int, c_out: int, *, name: str) -> ir.Value:
        y = relu_conv_bn(b, x, c_in, c_out, 3, name=f"{name}.conv_a", stride=2, padding=1)
        y = relu_conv_bn(b, y, c_out, c_out, 3, name=f"{name}.conv_b")
        residual = b.conv(avg_pool(b, x, 2, 2, pad=0), c_in, c_out, 1, name=f"{name}.downsample.1")
        return b.op("Add", residual, y, name=f"{name}.add")
