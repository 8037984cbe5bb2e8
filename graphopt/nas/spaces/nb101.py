"""NAS-Bench-101 (Ying et al., 2019): cells are DAGs of up to 7 nodes and 9 edges.

An architecture is the 56-tuple of ``nb101_500_zc.json``: a 7x7 upper-triangular adjacency matrix
(row-major, ``matrix[i][j] = 1`` for an edge ``i -> j``) followed by 7 operation indices
(:data:`OPS`: ``0 input, 1 output, 2 maxpool3x3, 3 conv1x1-bn-relu, 4 conv3x3-bn-relu``). Its
string form is the tuple's ``repr``. The tuple may hold vertices that lie on no input-to-output
path; like NAS-Bench-101, :func:`prune` removes them before building, and a cell is valid when its
pruned form connects input to output with at most 9 edges.

The network is the benchmark's: stem ``Conv3x3(3, 128) -> BN -> ReLU``; three stacks of three
cells, ``MaxPool2x2`` and doubled channels between stacks; global average pool, linear. In a cell
(``build_module`` of the reference code) the output's channels are split evenly over the vertices
feeding it (remainder to the first), other vertices take the widest of their successors; the cell
input reaches a vertex through a 1x1 ``conv-bn-relu`` projection, other vertices through channel
truncation; the output concatenates its interior inputs and adds the projected cell input.
Trainable parameter counts equal the published ``params``.
"""

from __future__ import annotations

import re
from collections.abc import Hashable

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError, UsageError
from graphopt.nas.spaces._base import SearchSpace
from graphopt.nas.spaces._build import GraphBuilder
from graphopt.nas.spaces._ops import conv_bn_relu, max_pool

__all__ = ["MAX_EDGES", "NUM_VERTICES", "OPS", "NB101Space", "prune"]

OPS = ("input", "output", "maxpool3x3", "conv1x1-bn-relu", "conv3x3-bn-relu")
NUM_VERTICES = 7
MAX_EDGES = 9
_INTS = re.compile(r"-?\d+")

NB101Arch = tuple[int, ...]


def prune(matrix: np.ndarray, ops: list[int]) -> tuple[np.ndarray, list[int]] | None:
    """Drop vertices on no input-to-output path; ``None`` when input does not reach output."""
    n = len(ops)
    forward, backward = {0}, {n - 1}
    for j in range(1, n):
        if any(matrix[i, j] and i in forward for i in range(j)):
            forward.add(j)
    for i in range(n - 2, -1, -1):
        if any(matrix[i, j] and j in backward for j in range(i + 1, n)):
            backward.add(i)
    if n - 1 not in forward:
        return None
    keep = sorted(forward & backward)
    return matrix[np.ix_(keep, keep)].copy(), [ops[k] for k in keep]


def vertex_channels(matrix: np.ndarray, c_in: int, c_out: int) -> list[int]:
    """Channels of each vertex of a pruned cell (NAS-Bench-101's ``compute_vertex_channels``)."""
    n = len(matrix)
    channels = [0] * n
    channels[0], channels[-1] = c_in, c_out
    if n == 2:
        return channels
    fan_in = int(matrix[1:, -1].sum())
    share, extra = divmod(c_out, fan_in)
    for v in range(1, n - 1):
        if matrix[v, -1]:
            channels[v] = share + (1 if extra > 0 else 0)
            extra -= 1
    for v in range(n - 3, 0, -1):
        if not matrix[v, -1]:
            for dst in range(v + 1, n - 1):
                if matrix[v, dst]:
                    channels[v] = max(channels[v], channels[dst])
    return channels


class NB101Space(SearchSpace):
    """NAS-Bench-101's cell space and macro network (see the module docstring)."""

    name = "nb101"

    def __init__(self, *, stem_channels: int = 128, stacks: int = 3, cells_per_stack: int = 3,
                 num_classes: int = 10, image_size: int = 32) -> None:
        if min(stem_channels, stacks, cells_per_stack, num_classes, image_size) < 1:
            raise UsageError("stem_channels, stacks, cells_per_stack, num_classes and image_size must be positive")
        self.stem_channels = stem_channels
        self.stacks = stacks
        self.cells_per_stack = cells_per_stack
        self.num_classes = num_classes
        self.image_size = image_size

    # -- notation -------------------------------------------------------------------------------

    def parse(self, text: str) -> NB101Arch:
        if not re.fullmatch(r"[\s()\[\],\d-]+", text.strip()):
            raise InputError(f"not a NAS-Bench-101 architecture: {text.strip()[:80]!r} (expected 56 integers)")
        return self._check([int(v) for v in _INTS.findall(text)], text.strip())

    def to_string(self, arch: Hashable) -> str:
        return repr(self._check(arch, arch))

    @staticmethod
    def matrix_ops(arch: Hashable) -> tuple[np.ndarray, list[int]]:
        """The 7x7 adjacency matrix and the 7 op indices of ``arch`` (unpruned)."""
        values = list(arch)  # type: ignore[call-overload]
        n = NUM_VERTICES
        return np.array(values[: n * n], dtype=np.int64).reshape(n, n), [int(v) for v in values[n * n:]]

    @classmethod
    def from_matrix(cls, matrix: np.ndarray | list[list[int]], ops: list[int]) -> NB101Arch:
        """The 56-tuple of a 7-vertex ``matrix`` and ``ops`` (validated)."""
        flat = [int(v) for v in np.asarray(matrix).reshape(-1)] + [int(v) for v in ops]
        return cls._check(flat, (matrix, ops))

    def pruned(self, arch: Hashable) -> tuple[np.ndarray, list[int]]:
        """The cell NAS-Bench-101 trains: ``arch`` with dead vertices removed."""
        result = prune(*self.matrix_ops(self._check(arch, arch)))
        assert result is not None  # _check rejects disconnected cells
        return result

    @classmethod
    def _check(cls, values: object, shown: object) -> NB101Arch:
        try:
            flat = tuple(int(v) for v in values)  # type: ignore[attr-defined]
        except (TypeError, ValueError):
            raise InputError(f"not a NAS-Bench-101 architecture: {shown!r}") from None
        n = NUM_VERTICES
        if len(flat) != n * n + n:
            raise InputError(f"a NAS-Bench-101 architecture has {n * n + n} integers, got {len(flat)}")
        matrix, ops = cls.matrix_ops(flat)
        if np.any((matrix != 0) & (matrix != 1)) or np.any(np.tril(matrix)):
            raise InputError("a NAS-Bench-101 adjacency matrix is 0/1 and strictly upper-triangular")
        if ops[0] != 0 or ops[-1] != 1 or any(op not in (2, 3, 4) for op in ops[1:-1]):
            raise InputError(f"NAS-Bench-101 ops must be 0 (input), then 2-4, then 1 (output); got {ops}")
        result = prune(matrix, ops)
        if result is None:
            raise InputError("invalid NAS-Bench-101 cell: the input does not reach the output")
        edges = int(result[0].sum())
        if edges > MAX_EDGES:
            raise InputError(f"invalid NAS-Bench-101 cell: {edges} edges after pruning (max {MAX_EDGES})")
        return flat

    # -- the space ------------------------------------------------------------------------------

    def sample(self, rng: np.random.Generator, count: int) -> list[Hashable]:
        """Valid cells as NAS-Bench-101 samples them: random upper-triangular matrix and ops, until valid."""
        n, archs = NUM_VERTICES, list[Hashable]()
        while len(archs) < count:
            matrix = np.triu(rng.integers(0, 2, size=(n, n)), 1)
            ops = [0, *(int(v) for v in rng.integers(2, 5, size=n - 2)), 1]
            try:
                archs.append(self.from_matrix(matrix, ops))
            except InputError:
                continue
        return archs

    def one_hot(self, arch: Hashable) -> np.ndarray:
        """Pruned cell in place: the 21 upper-triangular entries and 5 interior ops one-hot (3 each)."""
        matrix, ops = self.matrix_ops(self._check(arch, arch))
        live = np.isin(np.arange(NUM_VERTICES), self._live(matrix, ops))
        kept = np.where(live[:, None] & live[None, :], matrix, 0)
        op_vec = np.zeros((NUM_VERTICES - 2, 3), dtype=np.float32)
        for v in range(1, NUM_VERTICES - 1):
            if live[v]:
                op_vec[v - 1, ops[v] - 2] = 1.0
        return np.concatenate([kept[np.triu_indices(NUM_VERTICES, 1)].astype(np.float32), op_vec.reshape(-1)])

    @staticmethod
    def _live(matrix: np.ndarray, ops: list[int]) -> list[int]:
        """Indices of the vertices :func:`prune` keeps."""
        tagged = prune(matrix, list(range(len(ops))))
        assert tagged is not None
        return tagged[1]

    # -- the network ----------------------------------------------------------------------------

    def build(self, arch: Hashable, *, seed: int = 0) -> ir.Model:
        flat = self._check(arch, arch)
        matrix, ops = prune(*self.matrix_ops(flat))  # type: ignore[misc]
        b = GraphBuilder("nb101", seed=seed)
        c = self.stem_channels
        x = b.input("input", ["batch", 3, self.image_size, self.image_size])
        h = conv_bn_relu(b, x, 3, c, 3, name="stem")
        c_prev, index = c, 0
        for stack in range(self.stacks):
            if stack:
                h = max_pool(b, h, 2, 2)
                c *= 2
            for _ in range(self.cells_per_stack):
                h = self._cell(b, h, matrix, ops, c_prev, c, name=f"cells.{index}")
                c_prev, index = c, index + 1
        logits = b.classifier_head(h, c, self.num_classes)
        return b.model([(logits, ["batch", self.num_classes])], metadata={
            "graphopt.nas.space": self.name, "graphopt.nas.arch": self.to_string(flat), "graphopt.nas.seed": str(seed)})

    @staticmethod
    def _cell(b: GraphBuilder, x: ir.Value, matrix: np.ndarray, ops: list[int], c_in: int, c_out: int, *,
              name: str) -> ir.Value:
        n = len(ops)
        channels = vertex_channels(matrix, c_in, c_out)
        tensors = [x]
        concat_in = []
        for t in range(1, n - 1):
            terms = [_truncate(b, tensors[src], channels[src], channels[t]) for src in range(1, t) if matrix[src, t]]
            if matrix[0, t]:
                terms.append(conv_bn_relu(b, x, c_in, channels[t], 1, name=f"{name}.input_projection.{t}"))
            h = b.add_n(terms)
            op = OPS[ops[t]]
            if op == "maxpool3x3":
                h = max_pool(b, h, 3, 1)
            else:
                k = 3 if op == "conv3x3-bn-relu" else 1
                h = conv_bn_relu(b, h, channels[t], channels[t], k, name=f"{name}.vertex_{t}")
            tensors.append(h)
            if matrix[t, n - 1]:
                concat_in.append(h)
        if not concat_in:
            return conv_bn_relu(b, x, c_in, c_out, 1, name=f"{name}.output_projection")
        out = concat_in[0] if len(concat_in) == 1 else b.op("Concat", *concat_in, name=f"{name}.concat", axis=1)
        if matrix[0, n - 1]:
            out = b.op("Add", out, conv_bn_relu(b, x, c_in, c_out, 1, name=f"{name}.output_projection"),
                       name=f"{name}.add")
        return out


def _truncate(b: GraphBuilder, x: ir.Value, have: int, want: int) -> ir.Value:
    """The first ``want`` channels of ``x`` (NAS-Bench-101 truncates when a vertex is one channel wider)."""
    if have == want:
        return x
    return b.op("Slice", x, b.constant([0]), b.constant([want]), b.constant([1]), name="truncate")
