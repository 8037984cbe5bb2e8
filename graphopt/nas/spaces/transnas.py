"""TransNAS-Bench-101 (Duan et al., 2021): micro (cell) and macro (skeleton) encoder spaces.

Architectures are written as the benchmark's net codes ``{C}-{macro}-{cell}``:

* micro, 4,096 archs: ``64-41414-3_33_333``, a fixed skeleton and a 4-node cell whose node ``j``
  sums one operation per earlier node (``a_bc_def``: node 1 from 0; node 2 from 0, 1; node 3 from
  0, 1, 2), operations ``0 none, 1 skip_connect, 2 conv1x1, 3 conv3x3``;
* macro, 3,256 archs: ``64-1111-basic``, 4 to 6 modules of two ResNet basic blocks, each module
  ``1`` (as is), ``2`` (channels x2), ``3`` (stride 2) or ``4`` (both), with 1 to 4 downsamplings
  and 1 to 3 channel doublings.

The encoder is the benchmark's ``MacroNet``: stem ``Conv3x3/2(3, C/2) -> BN -> ReLUConvBN 3x3/2
(C/2, C)``, then per module two cells (the first takes the module's stride and width). In a micro
cell ``conv`` is ``ReLU -> Conv -> BN``, edges from the cell input take the stride and width change,
a skip that must change either is a ``FactorizedReduce``, and ``none`` edges are left out of the
sum (a node with only ``none`` edges is zeros of the right shape). ``head="classification"``
(default, object classification, 75 classes) adds global average pool and a linear layer;
``head="backbone"`` returns the feature map.
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
from graphopt.nas.spaces._ops import conv_bn, relu_conv_bn

__all__ = ["MICRO_OPS", "TransNASMacroSpace", "TransNASMicroSpace"]

MICRO_OPS = ("none", "skip_connect", "conv1x1", "conv3x3")
MICRO_SKELETON = "41414"
_INT64_MAX = np.iinfo(np.int64).max
_HEADS = ("classification", "backbone")


class _TransNASSpace(SearchSpace):
    """The encoder network the two spaces share."""

    def __init__(self, *, channels: int = 64, num_classes: int = 75, image_size: int = 256,
                 head: str = "classification") -> None:
        if min(channels, num_classes, image_size) < 1 or channels % 2:
            raise UsageError("channels (even), num_classes and image_size must be positive")
        if head not in _HEADS:
            raise UsageError(f"unknown head {head!r} (choose from {', '.join(_HEADS)})")
        self.channels = channels
        self.num_classes = num_classes
        self.image_size = image_size
        self.head = head

    def _split(self, text: str, kind: str) -> list[str]:
        parts = text.strip().split("-")
        if len(parts) != 3 or parts[0] != str(self.channels):
            raise InputError(f"not a TransNAS-Bench-101 {kind} net code {text.strip()[:60]!r} "
                             f"(expected {self.channels}-{'41414-3_33_333' if kind == 'micro' else '1234-basic'})")
        return parts

    def _network(self, macro: str, cell: tuple[int, ...] | None, arch_text: str, seed: int) -> ir.Model:
        b = GraphBuilder(f"transnas-{self.name}", seed=seed)
        c = self.channels
        x = b.input("input", ["batch", 3, self.image_size, self.image_size])
        h = conv_bn(b, x, 3, c // 2, 3, name="stem.0", stride=2)
        h = relu_conv_bn(b, h, c // 2, c, 3, name="stem.2", stride=2)
        c_in = c
        for i, digit in enumerate(macro):
            code = int(digit)
            c_out = 2 * c_in if code % 2 == 0 else c_in
            stride = 2 if code > 2 else 1
            for block in range(2):
                name = f"layer{i}.{block}"
                h = _basic_block(b, h, c_in, c_out, stride, name=name) if cell is None else \
                    _micro_cell(b, h, cell, c_in, c_out, stride, name=name)
                c_in, stride = c_out, 1
        size = -(-self.image_size // 4)  # two stride-2 stem convs (padding 1) round up
        for digit in macro:
            size = -(-size // 2) if int(digit) > 2 else size
        dims: list[int | str]
        if self.head == "classification":
            out, dims = b.classifier_head(h, c_in, self.num_classes), ["batch", self.num_classes]
        else:
            out, dims = h, ["batch", c_in, size, size]
        return b.model([(out, dims)], metadata={
            "graphopt.nas.space": self.name, "graphopt.nas.arch": arch_text, "graphopt.nas.seed": str(seed)})


class TransNASMicroSpace(_TransNASSpace):
    """Cells ``a_bc_def`` in the fixed ``64-41414`` skeleton; an arch is a 6-tuple of op indices."""

    name = "transnas-micro"

    def parse(self, text: str) -> tuple[int, ...]:
        parts = self._split(text, "micro")
        if parts[1] != MICRO_SKELETON:
            raise InputError(f"the micro space's skeleton is {MICRO_SKELETON}, got {parts[1]!r}")
        if not re.fullmatch(r"[0-3]_[0-3]{2}_[0-3]{3}", parts[2]):
            raise InputError(f"a micro cell is written a_bc_def with ops 0-3, got {parts[2]!r}")
        return tuple(int(ch) for ch in parts[2] if ch != "_")

    def to_string(self, arch: Hashable) -> str:
        ops = self._check(arch)
        return f"{self.channels}-{MICRO_SKELETON}-{ops[0]}_{ops[1]}{ops[2]}_{ops[3]}{ops[4]}{ops[5]}"

    @staticmethod
    def _check(arch: object) -> tuple[int, ...]:
        try:
            ops = tuple(int(v) for v in arch)  # type: ignore[attr-defined]
        except (TypeError, ValueError):
            raise InputError(f"not a TransNAS-Bench-101 micro cell: {arch!r}") from None
        if len(ops) != 6 or any(not 0 <= v < len(MICRO_OPS) for v in ops):
            raise InputError(f"a TransNAS-Bench-101 micro cell is six op indices in 0..3, got {arch!r}")
        return ops

    def sample(self, rng: np.random.Generator, count: int) -> list[Hashable]:
        return [tuple(int(v) for v in row) for row in rng.integers(0, len(MICRO_OPS), size=(count, 6))]

    def enumerate(self) -> Iterator[Hashable]:
        return iter(itertools.product(range(len(MICRO_OPS)), repeat=6))

    def one_hot(self, arch: Hashable) -> np.ndarray:
        vec = np.zeros((6, len(MICRO_OPS)), dtype=np.float32)
        vec[np.arange(6), self._check(arch)] = 1.0
        return vec.reshape(-1)

    def build(self, arch: Hashable, *, seed: int = 0) -> ir.Model:
        ops = self._check(arch)
        return self._network(MICRO_SKELETON, ops, self.to_string(ops), seed)


class TransNASMacroSpace(_TransNASSpace):
    """Skeletons of ResNet basic blocks; an arch is the module code string (``"1234"``)."""

    name = "transnas-macro"

    def parse(self, text: str) -> str:
        parts = self._split(text, "macro")
        if parts[2] != "basic":
            raise InputError(f"the macro space uses basic blocks (…-basic), got {parts[2]!r}")
        return self._check(parts[1])

    def to_string(self, arch: Hashable) -> str:
        return f"{self.channels}-{self._check(arch)}-basic"

    @staticmethod
    def _check(arch: object) -> str:
        code = str(arch)
        if not re.fullmatch(r"[1-4]{4,6}", code):
            raise InputError(f"a TransNAS-Bench-101 macro code is 4-6 digits 1-4, got {code!r}")
        downsamples = sum(ch in "34" for ch in code)
        doublings = sum(ch in "24" for ch in code)
        if not 1 <= downsamples <= 4 or not 1 <= doublings <= 3:
            raise InputError(f"macro code {code!r} needs 1-4 downsamplings (3, 4) and 1-3 doublings (2, 4); "
                             f"it has {downsamples} and {doublings}")
        return code

    def sample(self, rng: np.random.Generator, count: int) -> list[Hashable]:
        archs = list(self.enumerate())
        return [archs[int(i)] for i in rng.integers(0, len(archs), size=count)]

    def enumerate(self) -> Iterator[Hashable]:
        for length in (4, 5, 6):
            for digits in itertools.product("1234", repeat=length):
                code = "".join(digits)
                try:
                    yield self._check(code)
                except InputError:
                    continue

    def one_hot(self, arch: Hashable) -> np.ndarray:
        """Six module slots x (absent, 1, 2, 3, 4)."""
        code = self._check(arch)
        vec = np.zeros((6, 5), dtype=np.float32)
        for i in range(6):
            vec[i, int(code[i]) if i < len(code) else 0] = 1.0
        return vec.reshape(-1)

    def build(self, arch: Hashable, *, seed: int = 0) -> ir.Model:
        code = self._check(arch)
        return self._network(code, None, self.to_string(code), seed)


def _basic_block(b: GraphBuilder, x: ir.Value, c_in: int, c_out: int, stride: int, *, name: str) -> ir.Value:
    """``ResNetBasicblock``: two ``ReLUConvBN 3x3`` plus the input (``Conv1x1 -> BN`` if shape changes)."""
    y = relu_conv_bn(b, x, c_in, c_out, 3, name=f"{name}.conv_a", stride=stride, padding=1)
    y = relu_conv_bn(b, y, c_out, c_out, 3, name=f"{name}.conv_b")
    residual = x if stride == 1 and c_in == c_out else conv_bn(b, x, c_in, c_out, 1, name=f"{name}.downsample",
                                                                stride=stride)
    return b.op("Add", residual, y, name=f"{name}.add")


def _micro_cell(b: GraphBuilder, x: ir.Value, ops: tuple[int, ...], c_in: int, c_out: int, stride: int, *,
                name: str) -> ir.Value:
    nodes = [x]
    k = 0
    for target in range(1, 4):
        terms = []
        for src in range(target):
            op = MICRO_OPS[ops[k]]
            edge = f"{name}.edges.{k}"
            k += 1
            s, ci = (stride, c_in) if src == 0 else (1, c_out)
            if op == "skip_connect":
                terms.append(nodes[src] if s == 1 and ci == c_out else _factorized_reduce(b, nodes[src], ci, c_out, s,
                                                                                          name=edge))
            elif op in ("conv1x1", "conv3x3"):
                kernel = 1 if op == "conv1x1" else 3
                terms.append(relu_conv_bn(b, nodes[src], ci, c_out, kernel, name=edge, stride=s,
                                          padding=kernel // 2))
        nodes.append(b.add_n(terms) if terms else _zeros(b, x, c_in, c_out, stride))
    return nodes[-1]


def _zeros(b: GraphBuilder, x: ir.Value, c_in: int, c_out: int, stride: int) -> ir.Value:
    """The ``Zero`` op from the cell input: ``x * 0``, or zeros of shape ``(N, c_out, H/stride, W/stride)``."""
    if stride == 1 and c_in == c_out:
        return b.op("Mul", x, b.constant(0.0), name="zero")
    corner = b.op("Slice", x, b.constant([0, 0, 0]), b.constant([1, _INT64_MAX, _INT64_MAX]), b.constant([1, 2, 3]),
                  b.constant([1, stride, stride]), name="zero.slice")
    return b.op("Expand", b.op("Mul", corner, b.constant(0.0), name="zero"), b.constant([1, c_out, 1, 1]),
                name="zero.expand")


def _factorized_reduce(b: GraphBuilder, x: ir.Value, c_in: int, c_out: int, stride: int, *, name: str) -> ir.Value:
    """TransNAS' ``FactorizedReduce``: convs on ``relu x`` and on it shifted one pixel (zero padded), concatenated."""
    x = b.relu(x)
    padded = b.op("Pad", x, b.constant([0, 0, 0, 0, 0, 0, 1, 1]), name=f"{name}.pad")
    shifted = b.op("Slice", padded, b.constant([1, 1]), b.constant([_INT64_MAX, _INT64_MAX]), b.constant([2, 3]),
                   name=f"{name}.shift")
    half = c_out // 2
    y = b.op("Concat", b.conv(x, c_in, half, 1, name=f"{name}.convs.0", stride=stride, padding=0),
             b.conv(shifted, c_in, c_out - half, 1, name=f"{name}.convs.1", stride=stride, padding=0),
             name=f"{name}.concat", axis=1)
    return b.batch_norm(y, c_out, name=f"{name}.bn")
