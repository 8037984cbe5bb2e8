"""A BERT-style encoder space: layers, attention heads, hidden size and MLP width.

An architecture is ``(layers, heads, hidden, mlp)``; its string form follows the BERT paper's
letters, ``L6-H384-A12-I1536`` (``I``: the intermediate, MLP width). The space is the product of
:data:`LAYERS`, :data:`HEADS`, :data:`HIDDEN` and :data:`MLP` where ``hidden`` divides by
``heads`` (:meth:`BertSpace.enumerate` lists it); :meth:`BertSpace.parse` also accepts any other
positive sizes with ``hidden % heads == 0``.

The graph is what exporting Hugging Face's ``BertModel`` (eager attention, no pooler) gives:
inputs ``input_ids`` and ``attention_mask`` (int64, ``[batch, sequence]``); word + position +
token-type-0 embeddings and ``LayerNormalization``; per layer Q/K/V projections (``MatMul + Add``),
heads split with ``Reshape -> Transpose``, ``Softmax(Q·Kᵀ / sqrt(d) + mask)``, ``·V``, heads merged,
output projection, residual and ``LayerNormalization``, then ``MatMul + Add -> GELU (erf) ->
MatMul + Add``, residual and ``LayerNormalization``; output ``last_hidden_state``. With
``L6-H384-A12-I1536`` and the default vocabulary it has the parameters of all-MiniLM-L6-v2.
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

__all__ = ["HEADS", "HIDDEN", "LAYERS", "MLP", "BertSpace"]

LAYERS = (2, 4, 6, 8, 10, 12)
HEADS = (2, 4, 6, 8, 12)
HIDDEN = (128, 192, 256, 384, 512, 768)
MLP = (512, 768, 1024, 1536, 2048, 3072)
_TEXT = re.compile(r"L(\d+)-H(\d+)-A(\d+)-I(\d+)")

BertArch = tuple[int, int, int, int]


class BertSpace(SearchSpace):
    """BERT-style encoders (see the module docstring); sizes of the embeddings are options."""

    name = "bert"

    def __init__(self, *, vocab_size: int = 30522, max_positions: int = 512, type_vocab_size: int = 2,
                 epsilon: float = 1e-12) -> None:
        if min(vocab_size, max_positions, type_vocab_size) < 1:
            raise UsageError("vocab_size, max_positions and type_vocab_size must be positive")
        self.vocab_size = vocab_size
        self.max_positions = max_positions
        self.type_vocab_size = type_vocab_size
        self.epsilon = epsilon

    # -- notation -------------------------------------------------------------------------------

    def parse(self, text: str) -> BertArch:
        match = _TEXT.fullmatch(text.strip())
        if not match:
            raise InputError(f"not a BERT architecture: {text.strip()[:60]!r} (expected e.g. L6-H384-A12-I1536)")
        layers, hidden, heads, mlp = (int(v) for v in match.groups())
        return self._check((layers, heads, hidden, mlp))

    def to_string(self, arch: Hashable) -> str:
        layers, heads, hidden, mlp = self._check(arch)
        return f"L{layers}-H{hidden}-A{heads}-I{mlp}"

    @staticmethod
    def _check(arch: object) -> BertArch:
        try:
            layers, heads, hidden, mlp = (int(v) for v in arch)  # type: ignore[attr-defined]
        except (TypeError, ValueError):
            raise InputError(f"a BERT architecture is (layers, heads, hidden, mlp), got {arch!r}") from None
        if min(layers, heads, hidden, mlp) < 1:
            raise InputError(f"BERT sizes must be positive, got {arch!r}")
        if hidden % heads:
            raise InputError(f"hidden size {hidden} is not divisible by {heads} heads")
        return layers, heads, hidden, mlp

    # -- the space ------------------------------------------------------------------------------

    def enumerate(self) -> Iterator[Hashable]:
        """Every (layers, heads, hidden, mlp) of the grids with ``hidden % heads == 0``."""
        return (a for a in itertools.product(LAYERS, HEADS, HIDDEN, MLP) if a[2] % a[1] == 0)

    def sample(self, rng: np.random.Generator, count: int) -> list[Hashable]:
        archs = list(self.enumerate())
        return [archs[int(i)] for i in rng.integers(0, len(archs), size=count)]

    def one_hot(self, arch: Hashable) -> np.ndarray:
        """One-hot over each grid (a size off the grid leaves its block zero)."""
        parts = []
        for value, grid in zip(self._check(arch), (LAYERS, HEADS, HIDDEN, MLP)):
            block = np.zeros(len(grid), dtype=np.float32)
            if value in grid:
                block[grid.index(value)] = 1.0
            parts.append(block)
        return np.concatenate(parts)

    # -- the network ----------------------------------------------------------------------------

    def build(self, arch: Hashable, *, seed: int = 0) -> ir.Model:
        layers, heads, hidden, mlp = self._check(arch)
        b = GraphBuilder("bert", seed=seed)
        ids = b.input("input_ids", ["batch", "sequence"], ir.DataType.INT64)
        mask = b.input("attention_mask", ["batch", "sequence"], ir.DataType.INT64)
        h = self._embeddings(b, ids, hidden)
        bias = _mask_bias(b, mask)
        for i in range(layers):
            h = self._layer(b, h, bias, heads, hidden, mlp, name=f"encoder.layer.{i}")
        return b.model([(h, ["batch", "sequence", hidden])], metadata={
            "graphopt.nas.space": self.name, "graphopt.nas.arch": self.to_string(arch), "graphopt.nas.seed": str(seed)})

    def _embeddings(self, b: GraphBuilder, ids: ir.Value, hidden: int) -> ir.Value:
        word = b.uniform("embeddings.word_embeddings.weight", (self.vocab_size, hidden), 0.02)
        position = b.uniform("embeddings.position_embeddings.weight", (self.max_positions, hidden), 0.02)
        token_type = b.uniform("embeddings.token_type_embeddings.weight", (self.type_vocab_size, hidden), 0.02)
        seq = b.op("Gather", b.op("Shape", ids), b.constant(np.array(1)), axis=0)
        positions = b.op("Range", b.constant(np.array(0)), seq, b.constant(np.array(1)), name="position_ids")
        h = b.op("Add", b.op("Gather", word, ids), b.op("Gather", token_type, b.constant(np.array(0))))
        h = b.op("Add", h, b.op("Gather", position, positions))
        return self._layer_norm(b, h, hidden, name="embeddings.LayerNorm")

    def _layer(self, b: GraphBuilder, x: ir.Value, bias: ir.Value, heads: int, hidden: int, mlp: int, *,
               name: str) -> ir.Value:
        head_dim = hidden // heads
        split = b.constant([0, 0, heads, head_dim])
        q, k, v = (b.op("Reshape", b.matmul_linear(x, hidden, hidden, name=f"{name}.attention.self.{p}"), split)
                   for p in ("query", "key", "value"))
        q = b.op("Transpose", q, perm=[0, 2, 1, 3])
        k = b.op("Transpose", k, perm=[0, 2, 3, 1])
        v = b.op("Transpose", v, perm=[0, 2, 1, 3])
        scores = b.op("Div", b.op("MatMul", q, k), b.constant(float(np.sqrt(head_dim))))
        probs = b.op("Softmax", b.op("Add", scores, bias), axis=-1)
        context = b.op("Transpose", b.op("MatMul", probs, v), perm=[0, 2, 1, 3])
        context = b.op("Reshape", context, b.constant([0, 0, hidden]))
        attn = b.matmul_linear(context, hidden, hidden, name=f"{name}.attention.output.dense")
        h = self._layer_norm(b, b.op("Add", attn, x), hidden, name=f"{name}.attention.output.LayerNorm")
        up = b.matmul_linear(h, hidden, mlp, name=f"{name}.intermediate.dense")
        gelu = b.op("Mul", b.op("Mul", up, b.constant(0.5)),
                    b.op("Add", b.op("Erf", b.op("Div", up, b.constant(float(np.sqrt(2.0))))), b.constant(1.0)))
        down = b.matmul_linear(gelu, mlp, hidden, name=f"{name}.output.dense")
        return self._layer_norm(b, b.op("Add", down, h), hidden, name=f"{name}.output.LayerNorm")

    def _layer_norm(self, b: GraphBuilder, x: ir.Value, hidden: int, *, name: str) -> ir.Value:
        scale = b.param(f"{name}.weight", np.ones(hidden, dtype=np.float32))
        shift = b.param(f"{name}.bias", np.zeros(hidden, dtype=np.float32))
        return b.op("LayerNormalization", x, scale, shift, name=name, axis=-1, epsilon=self.epsilon)


def _mask_bias(b: GraphBuilder, mask: ir.Value) -> ir.Value:
    """``(1 - mask) * finfo(float32).min`` as ``[batch, 1, 1, sequence]``."""
    m = b.op("Cast", b.op("Unsqueeze", mask, b.constant([1, 2])), to=int(ir.DataType.FLOAT))
    inverted = b.op("Sub", b.constant(1.0), m)
    return b.op("Mul", inverted, b.constant(float(np.finfo(np.float32).min)))
