"""DARTS / NAS-Bench-301 (Liu et al., 2019; Siems et al., 2020): normal and reduction genotypes.

An architecture is a pair of cells (normal, reduce); each cell has 4 intermediate nodes, node ``i``
sums two operations applied to two distinct earlier states (``0`` and ``1`` are the two previous
cells' outputs, ``k + 2`` is node ``k``), and the cell concatenates nodes 0-3. Its string form is
DARTS' ``Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=[2, 3, 4, 5], reduce=[...],
reduce_concat=[2, 3, 4, 5])``; the two edges of a node are kept sorted (state, op), so equal
cells compare equal. :data:`DARTS_V2` is the published DARTS (second order) genotype.

The network is DARTS' ``NetworkCIFAR`` for evaluation (no auxiliary head, no drop path): stem
``Conv3x3(3, 3C) -> BN``; ``layers`` cells, reduction cells (channels doubled, stride 2 on the
edges from the two inputs) at 1/3 and 2/3 of the depth; each cell preprocesses its inputs with
``ReLU -> Conv1x1 -> BN`` (``FactorizedReduce`` after a reduction cell); global average pool,
linear. ``C=36``, 20 layers, 10 classes: 3.3M parameters for DARTS_V2, as published.
"""

from __future__ import annotations

import re
from collections.abc import Hashable

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError, UsageError
from graphopt.nas.spaces._base import SearchSpace
from graphopt.nas.spaces._build import GraphBuilder
from graphopt.nas.spaces._ops import avg_pool, max_pool, relu_conv_bn

__all__ = ["DARTS_V2", "OPS", "DartsSpace"]

OPS = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
       "dil_conv_5x5")
STEPS = 4
_EDGES_PER_CELL = sum(i + 2 for i in range(STEPS))  # 14 possible (state, node) edges
_INT64_MAX = np.iinfo(np.int64).max

Cell = tuple[tuple[str, int], ...]
DartsArch = tuple[Cell, Cell]

DARTS_V2_TEXT = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
    "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
    "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], "
    "reduce_concat=[2, 3, 4, 5])"
)
_PAIR = re.compile(r"\(\s*['\"](\w+)['\"]\s*,\s*(\d+)\s*\)")
_FIELD = re.compile(r"(normal|reduce)\s*=\s*\[([^\]]*)\]")
_CONCAT = re.compile(r"(normal|reduce)_concat\s*=\s*(\[[^\]]*\]|range\([^)]*\))")


class DartsSpace(SearchSpace):
    """The DARTS cell space with the CIFAR evaluation network (see the module docstring)."""

    name = "darts"

    def __init__(self, *, channels: int = 36, layers: int = 20, num_classes: int = 10, image_size: int = 32) -> None:
        if min(channels, layers, num_classes, image_size) < 1:
            raise UsageError("channels, layers, num_classes and image_size must be positive")
        self.channels = channels
        self.layers = layers
        self.num_classes = num_classes
        self.image_size = image_size

    # -- notation -------------------------------------------------------------------------------

    def parse(self, text: str) -> DartsArch:
        fields = dict(_FIELD.findall(text))
        if set(fields) != {"normal", "reduce"}:
            raise InputError(f"not a DARTS genotype (normal=[...] and reduce=[...] expected): {text.strip()[:80]!r}")
        for cell, concat in _CONCAT.findall(text):
            if re.sub(r"\s", "", concat) not in ("[2,3,4,5]", "range(2,6)"):
                raise InputError(f"{cell}_concat must be [2, 3, 4, 5] in the DARTS space, got {concat}")
        cells = []
        for key in ("normal", "reduce"):
            pairs = [(op, int(i)) for op, i in _PAIR.findall(fields[key])]
            if len(_PAIR.findall(fields[key])) != fields[key].count("("):
                raise InputError(f"malformed {key} cell in DARTS genotype: {fields[key][:80]!r}")
            cells.append(tuple(pairs))
        return self._check(tuple(cells), text.strip()[:80])

    def to_string(self, arch: Hashable) -> str:
        normal, reduce = self._check(arch, arch)

        def cell(c: Cell) -> str:
            return "[" + ", ".join(f"('{op}', {i})" for op, i in c) + "]"

        return (f"Genotype(normal={cell(normal)}, normal_concat=[2, 3, 4, 5], "
                f"reduce={cell(reduce)}, reduce_concat=[2, 3, 4, 5])")

    @staticmethod
    def _check(arch: object, shown: object) -> DartsArch:
        try:
            cells = [tuple((str(op), int(i)) for op, i in cell) for cell in arch]  # type: ignore[attr-defined]
        except (TypeError, ValueError):
            raise InputError(f"not a DARTS architecture: {shown!r}") from None
        if len(cells) != 2:
            raise InputError(f"a DARTS architecture is (normal, reduce), got {len(cells)} cells")
        out = []
        for name, cell in zip(("normal", "reduce"), cells):
            if len(cell) != 2 * STEPS:
                raise InputError(f"a DARTS {name} cell has {2 * STEPS} edges, got {len(cell)}")
            edges: list[tuple[str, int]] = []
            for node in range(STEPS):
                pair = sorted(cell[2 * node: 2 * node + 2], key=lambda e: (e[1], e[0]))
                for op, state in pair:
                    if op not in OPS:
                        raise InputError(f"unknown DARTS operation {op!r} (choose from {', '.join(OPS)})")
                    if not 0 <= state < node + 2:
                        raise InputError(f"node {node} of the {name} cell takes states 0..{node + 1}, got {state}")
                if pair[0][1] == pair[1][1]:
                    raise InputError(f"node {node} of the {name} cell takes two different states, got {pair}")
                edges.extend(pair)
            out.append(tuple(edges))
        return out[0], out[1]

    # -- the space ------------------------------------------------------------------------------

    def sample(self, rng: np.random.Generator, count: int) -> list[Hashable]:
        """Cells as NAS-Bench-301 samples them: per node two distinct states, ops uniform."""
        archs: list[Hashable] = []
        for _ in range(count):
            cells = []
            for _cell in range(2):
                edges: list[tuple[str, int]] = []
                for node in range(STEPS):
                    states = rng.choice(node + 2, size=2, replace=False)
                    edges.extend((OPS[int(rng.integers(len(OPS)))], int(s)) for s in states)
                cells.append(tuple(edges))
            archs.append(self._check(tuple(cells), cells))
        return archs

    def one_hot(self, arch: Hashable) -> np.ndarray:
        """Per cell, 14 possible edges x 7 operations (196 entries)."""
        vec = np.zeros((2, _EDGES_PER_CELL, len(OPS)), dtype=np.float32)
        for c, cell in enumerate(self._check(arch, arch)):
            for k, (op, state) in enumerate(cell):
                node = k // 2
                vec[c, sum(i + 2 for i in range(node)) + state, OPS.index(op)] = 1.0
        return vec.reshape(-1)

    # -- the network ----------------------------------------------------------------------------

    def build(self, arch: Hashable, *, seed: int = 0) -> ir.Model:
        normal, reduce = self._check(arch, arch)
        b = GraphBuilder("darts", seed=seed)
        c = self.channels
        x = b.input("input", ["batch", 3, self.image_size, self.image_size])
        stem = b.batch_norm(b.conv(x, 3, 3 * c, 3, name="stem.conv"), 3 * c, name="stem.bn")
        s0 = s1 = stem
        c_pp, c_p, c_cur = 3 * c, 3 * c, c
        reduction_prev = False
        for i in range(self.layers):
            reduction = i in (self.layers // 3, 2 * self.layers // 3)
            if reduction:
                c_cur *= 2
            out = _cell(b, s0, s1, reduce if reduction else normal, c_pp, c_p, c_cur, reduction=reduction,
                        reduction_prev=reduction_prev, name=f"cells.{i}")
            s0, s1 = s1, out
            c_pp, c_p, reduction_prev = c_p, STEPS * c_cur, reduction
        logits = b.classifier_head(s1, c_p, self.num_classes)
        return b.model([(logits, ["batch", self.num_classes])], metadata={
            "graphopt.nas.space": self.name, "graphopt.nas.arch": self.to_string((normal, reduce)),
            "graphopt.nas.seed": str(seed)})


DARTS_V2: DartsArch = DartsSpace().parse(DARTS_V2_TEXT)


def _cell(b: GraphBuilder, s0: ir.Value, s1: ir.Value, cell: Cell, c_pp: int, c_p: int, c: int, *,
          reduction: bool, reduction_prev: bool, name: str) -> ir.Value:
    if reduction_prev:
        s0 = factorized_reduce(b, s0, c_pp, c, name=f"{name}.preprocess0")
    else:
        s0 = relu_conv_bn(b, s0, c_pp, c, 1, name=f"{name}.preprocess0")
    s1 = relu_conv_bn(b, s1, c_p, c, 1, name=f"{name}.preprocess1")
    states = [s0, s1]
    for node in range(STEPS):
        terms = []
        for k in (2 * node, 2 * node + 1):
            op, state = cell[k]
            stride = 2 if reduction and state < 2 else 1
            terms.append(_op(b, op, states[state], c, stride, name=f"{name}.ops.{k}"))
        states.append(b.add_n(terms))
    return b.op("Concat", *states[2:], name=f"{name}.concat", axis=1)


def _op(b: GraphBuilder, op: str, x: ir.Value, c: int, stride: int, *, name: str) -> ir.Value:
    if op == "max_pool_3x3":
        return max_pool(b, x, 3, stride, same=False)
    if op == "avg_pool_3x3":
        return avg_pool(b, x, 3, stride)
    if op == "skip_connect":
        return x if stride == 1 else factorized_reduce(b, x, c, c, name=name)
    k = int(op[-1])
    if op.startswith("sep_conv"):
        return sep_conv(b, x, c, c, k, stride, name=name)
    return dil_conv(b, x, c, c, k, stride, dilation=2, name=name)


def dil_conv(b: GraphBuilder, x: ir.Value, c_in: int, c_out: int, k: int, stride: int, *, dilation: int,
             name: str) -> ir.Value:
    """DARTS ``DilConv``: ``ReLU -> depthwise dilated KxK -> Conv1x1 -> BN``."""
    y = b.conv(b.relu(x), c_in, c_in, k, name=f"{name}.depthwise", stride=stride, dilation=dilation, groups=c_in)
    y = b.conv(y, c_in, c_out, 1, name=f"{name}.pointwise")
    return b.batch_norm(y, c_out, name=f"{name}.bn")


def sep_conv(b: GraphBuilder, x: ir.Value, c_in: int, c_out: int, k: int, stride: int, *, name: str) -> ir.Value:
    """DARTS ``SepConv``: two ``DilConv`` (dilation 1), the first with the stride and ``c_in`` outputs."""
    y = dil_conv(b, x, c_in, c_in, k, stride, dilation=1, name=f"{name}.0")
    return dil_conv(b, y, c_in, c_out, k, 1, dilation=1, name=f"{name}.1")


def factorized_reduce(b: GraphBuilder, x: ir.Value, c_in: int, c_out: int, *, name: str) -> ir.Value:
    """DARTS ``FactorizedReduce``: ``BN(Concat(Conv1x1/2(relu x), Conv1x1/2(relu x[:, :, 1:, 1:])))``."""
    x = b.relu(x)
    shifted = b.op("Slice", x, b.constant([1, 1]), b.constant([_INT64_MAX, _INT64_MAX]), b.constant([2, 3]),
                   name=f"{name}.shift")
    half = c_out // 2
    y = b.op("Concat", b.conv(x, c_in, half, 1, name=f"{name}.conv_1", stride=2, padding=0),
             b.conv(shifted, c_in, c_out - half, 1, name=f"{name}.conv_2", stride=2, padding=0),
             name=f"{name}.concat", axis=1)
    return b.batch_norm(y, c_out, name=f"{name}.bn")
