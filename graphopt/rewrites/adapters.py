"""Adapters next to linear layers (LoRA, NOLA, BitDelta), and folding them back into the weights.

Every adapter turns a projection ``y = x·W`` (``MatMul``/``Gemm`` with a constant weight) into
``y = x·W + Δ(x)``; the ``Add`` carries ``metadata_props["graphopt.adapter"]`` (JSON: kind, scale,
prefix) so that ``merge-adapters`` can fold ``Δ`` into ``W``. Parameters are initializers named
``graphopt.adapter.<layer>.<proj>.<part>`` (:mod:`graphopt.rewrites._markers`): ``<layer>`` is the
attention or MLP block index, ``<proj>`` one of ``q k v o qkv up gate down``, or ``<layer>`` is the
node name and ``<proj>`` ``linear`` for layers picked by ``pattern`` alone. Frozen parts (NOLA's
random bases, BitDelta's signs) are listed in :data:`graphopt.rewrites._markers.FROZEN_PARTS`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from typing import Any

import numpy as np
import onnx_ir as ir

from graphopt.analysis._attention import find_attention
from graphopt.analysis._blocks import find_mlps
from graphopt.analysis._graph import ConstantTracker
from graphopt.errors import UsageError
from graphopt.passes import GraphoptPass, PassSettings, register_pass, setting
from graphopt.rewrites._markers import ADAPTER_PREFIX, INSERTED_BY_KEY, MarkedNodes

__all__ = [
    "ADAPTER_KEY",
    "BitDeltaSettings",
    "InsertBitDeltaPass",
    "InsertLoraPass",
    "InsertNolaPass",
    "LoraSettings",
    "MergeAdaptersPass",
    "NolaSettings",
    "weight_matrix",
]

logger = logging.getLogger(__name__)

ADAPTER_KEY = "graphopt.adapter"
_ROLES = ("q", "k", "v", "o", "mlp", "all")


@dataclasses.dataclass(frozen=True)
class _Target:
    node: ir.Node
    layer: str
    proj: str


def weight_matrix(node: ir.Node) -> np.ndarray | None:
    """The weight of a ``MatMul``/``Gemm`` projection in math layout ``[in, out]``, if it is an initializer."""
    if node.op_type not in ("MatMul", "Gemm") or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
        return None
    weight = node.inputs[1]
    if weight is None or weight.const_value is None:
        return None
    array = weight.const_value.numpy()
    if array.ndim != 2:
        return None
    trans_b = node.attributes.get("transB")
    return array.T if node.op_type == "Gemm" and trans_b is not None and trans_b.value else array


def _select(model: ir.Model, targets: tuple[str, ...], pattern: str | None) -> list[_Target]:
    graph = model.graph
    consts = ConstantTracker(graph)
    layers = [(node, proj) for node in graph if (proj := consts.projection(node)) is not None]
    by_weight: dict[str, list[ir.Node]] = {}
    for node, proj in layers:
        by_weight.setdefault(proj.weight, []).append(node)
    chosen: dict[ir.Node, _Target] = {}

    def add(node: ir.Node | None, layer: str, proj: str) -> None:
        if node is not None and node not in chosen and INSERTED_BY_KEY not in node.metadata_props:
            chosen[node] = _Target(node, layer, proj)

    if any(t in targets for t in ("q", "k", "v", "o")):
        located: list[dict[str, ir.Node | None]] = []
        for i, block in enumerate(find_attention(graph, [], located=located)):
            where = located[i]
            if block.qkv_fused and {"q", "k", "v"} & set(targets):
                add(where.get("q"), str(i), "qkv")
            for role in ("q", "k", "v", "o"):
                if role in targets and not (block.qkv_fused and role != "o"):
                    add(where.get(role), str(i), role)
    if "mlp" in targets:
        for i, mlp in enumerate(find_mlps(graph)):
            for role, found in (("up", mlp.up), ("gate", mlp.gate), ("down", mlp.down)):
                if found is not None:
                    named = [n for n, _ in layers if found.node and n.name == found.node]
                    shared = by_weight.get(found.weight, [])
                    add(named[0] if named else shared[0] if len(shared) == 1 else None, str(i), role)
    if "all" in targets or (pattern and not targets):
        for node, _ in layers:
            add(node, node.name or f"node{len(chosen)}", "linear")
    selected = list(chosen.values())
    if pattern:
        regex = re.compile(pattern)
        selected = [t for t in selected if regex.search(t.node.name or "") or
                    (t.node.inputs[1] is not None and regex.search(consts.weight_name(t.node.inputs[1])))]
    return selected


class _Builder(MarkedNodes):
    """Marked nodes and adapter initializers for one projection."""

    def __init__(self, graph: ir.Graph, pass_name: str, prefix: str) -> None:
        super().__init__(pass_name, prefix)
        self.graph = graph

    def param(self, part: str, array: np.ndarray) -> ir.Value:
        name = self.prefix + part
        if name in self.graph.initializers:
            raise UsageError(f"initializer {name!r} already exists: adapters were inserted before")
        dtype = ir.DataType.from_numpy(array.dtype)
        value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(dtype),
                         const_value=ir.tensor(array, name=name))
        self.graph.register_initializer(value)
        return value

    def attach(self, target: ir.Node, delta: ir.Value, info: dict[str, Any]) -> None:
        """``y -> Add(y, delta)`` for every user of the projection's output ``y``."""
        y = target.outputs[0]
        users = list(y.uses())
        total = self.op("Add", [y, delta])
        add = self.nodes[-1]
        add.metadata_props[ADAPTER_KEY] = json.dumps(info)
        if y.dtype is not None:
            total.shape, total.dtype = y.shape, y.dtype
        self.graph.insert_after(target, self.nodes)
        for node, index in users:
            node.replace_input_with(index, total)
        _swap_graph_output(self.graph, y, total)


def _swap_graph_output(graph: ir.Graph, old: ir.Value, new: ir.Value) -> None:
    for i, out in enumerate(graph.outputs):
        if out is old:
            name = old.name
            old.name, new.name = f"{name}.base", name
            graph.outputs[i] = new


@dataclasses.dataclass(frozen=True)
class _AdapterSettings(PassSettings):
    targets: tuple[str, ...] = setting(("q", "v"), "projections to adapt: q k v o mlp all (CLI: q+v)")
    pattern: str | None = setting(None, "regex on node or weight names; restricts targets (alone: all projections)")
    seed: int = setting(0, "seed of the random initialisation")

    def validate(self) -> None:
        unknown = [t for t in self.targets if t not in _ROLES]
        if unknown:
            raise UsageError(f"unknown adapter target(s) {', '.join(unknown)}; use {', '.join(_ROLES)}")
        if not self.targets and not self.pattern:
            raise UsageError("adapters need targets or a pattern")
        if self.pattern:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise UsageError(f"bad pattern {self.pattern!r}: {exc}") from None


class _InsertAdapterPass(GraphoptPass[Any]):
    output_preserving = False
    kind = ""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        targets = _select(model, self.settings.targets, self.settings.pattern)
        rng = np.random.default_rng(self.settings.seed)
        done = 0
        for target in targets:
            weight = weight_matrix(target.node)
            if weight is None or weight.dtype != np.float32:
                logger.warning("%s: %s skipped: weight is not a float32 2-D initializer", self.name, target.node.name)
                continue
            if any(ADAPTER_KEY in n.metadata_props for n, _ in target.node.outputs[0].uses()):
                logger.warning("%s: %s skipped: it already has an adapter", self.name, target.node.name)
                continue
            builder = _Builder(model.graph, self.name, f"{ADAPTER_PREFIX}{target.layer}.{target.proj}.")
            delta, info = self.build(builder, target.node.inputs[0], weight, rng, model, target)
            info.update(kind=self.kind, prefix=builder.prefix, base=target.node.name)
            builder.attach(target.node, delta, info)
            done += 1
        logger.info("%s: %d projection(s) adapted", self.name, done)
        return ir.passes.PassResult(model, done > 0)

    def build(self, b: _Builder, x: ir.Value | None, weight: np.ndarray, rng: np.random.Generator,
              model: ir.Model, target: _Target) -> tuple[ir.Value, dict[str, Any]]:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class LoraSettings(_AdapterSettings):
    rank: int = setting(8, "rank r of A [in, r] and B [r, out]", search=(4, 8, 16))
    alpha: float = setting(16.0, "scale alpha / r of the update")
    b_std: float = setting(0.0, "std of B's initialisation (0: zeros, the output is unchanged)")

    def validate(self) -> None:
        super().validate()
        if self.rank < 1:
            raise UsageError(f"rank must be >= 1, got {self.rank}")
        if not (math.isfinite(self.alpha) and math.isfinite(self.b_std) and self.b_std >= 0):
            raise UsageError("alpha must be finite and b_std >= 0")


@register_pass
class InsertLoraPass(_InsertAdapterPass):
    """LoRA: ``x·W -> x·W + (alpha/r)·(x·A)·B`` with ``A ~ U(±1/sqrt(in))`` and ``B = 0`` (exactly the
    original outputs) unless ``b_std > 0``."""

    name = "lora"
    Settings = LoraSettings
    kind = "lora"

    def build(self, b: _Builder, x: ir.Value | None, weight: np.ndarray, rng: np.random.Generator,
              model: ir.Model, target: _Target) -> tuple[ir.Value, dict[str, Any]]:
        s = self.settings
        rows, cols = weight.shape
        bound = 1.0 / math.sqrt(rows)
        a = b.param("A", rng.uniform(-bound, bound, (rows, s.rank)).astype(np.float32))
        up = rng.normal(0.0, s.b_std, (s.rank, cols)) if s.b_std > 0 else np.zeros((s.rank, cols))
        bb = b.param("B", up.astype(np.float32))
        scale = s.alpha / s.rank
        delta = b.op("Mul", [b.op("MatMul", [b.op("MatMul", [x, a]), bb]), b.const(np.array(scale, np.float32))])
        return delta, {"scale": scale}


@dataclasses.dataclass(frozen=True)
class NolaSettings(LoraSettings):
    bases: int = setting(64, "random bases per matrix (trained: one coefficient each)", search=(32, 64, 128))

    def validate(self) -> None:
        super().validate()
        if self.bases < 1:
            raise UsageError(f"bases must be >= 1, got {self.bases}")


@register_pass
class InsertNolaPass(_InsertAdapterPass):
    """NOLA: LoRA with ``A = Σ aᵢ·Aᵢ`` and ``B = Σ bⱼ·Bⱼ``, ``Aᵢ, Bⱼ ~ N(0, 1/in), N(0, 1/r)`` random bases
    from ``seed`` (frozen, stored) and trained coefficients ``a ~ N(0, 1/bases)``, ``b = 0`` (exactly the
    original outputs) unless ``b_std > 0``. Parts: ``coef_A``, ``basis_A``, ``coef_B``, ``basis_B``."""

    name = "nola"
    Settings = NolaSettings
    kind = "nola"

    def build(self, b: _Builder, x: ir.Value | None, weight: np.ndarray, rng: np.random.Generator,
              model: ir.Model, target: _Target) -> tuple[ir.Value, dict[str, Any]]:
        s = self.settings
        rows, cols = weight.shape
        basis_a = rng.normal(0.0, 1.0 / math.sqrt(rows), (s.bases, rows * s.rank)).astype(np.float32)
        basis_b = rng.normal(0.0, 1.0 / math.sqrt(s.rank), (s.bases, s.rank * cols)).astype(np.float32)
        coef_a = rng.normal(0.0, 1.0 / math.sqrt(s.bases), (1, s.bases)).astype(np.float32)
        coef_b = (rng.normal(0.0, s.b_std, (1, s.bases)) if s.b_std > 0 else np.zeros((1, s.bases))).astype(np.float32)
        a = b.op("Reshape", [b.op("MatMul", [b.param("coef_A", coef_a), b.param("basis_A", basis_a)]),
                             b.const(np.array([rows, s.rank], np.int64))])
        bb = b.op("Reshape", [b.op("MatMul", [b.param("coef_B", coef_b), b.param("basis_B", basis_b)]),
                              b.const(np.array([s.rank, cols], np.int64))])
        scale = s.alpha / s.rank
        delta = b.op("Mul", [b.op("MatMul", [b.op("MatMul", [x, a]), bb]), b.const(np.array(scale, np.float32))])
        return delta, {"scale": scale, "rank": s.rank, "seed": s.seed}


@dataclasses.dataclass(frozen=True)
class BitDeltaSettings(_AdapterSettings):
    finetuned: str | None = setting(None, "fine-tuned .onnx with the same weight names: Δ = W_ft - W")


@register_pass
class InsertBitDeltaPass(_InsertAdapterPass):
    """BitDelta: ``x·W -> x·W + scale·(x·S)``, ``S = sign(W_ft - W)`` (±1, ``+1`` where the delta is 0)
    stored as one bit per weight (``uint8``, packed little-endian along the output axis and unpacked
    in the graph with ``BitShift``/``Mod``, opset 11+) and ``scale = mean|W_ft - W|`` (trained). Without
    ``finetuned``, ``S`` is random from ``seed`` and ``scale = 0`` (exactly the original outputs).
    Parts: ``sign`` (frozen), ``scale``."""

    name = "bitdelta"
    Settings = BitDeltaSettings
    kind = "bitdelta"
    _finetuned: dict[str, np.ndarray] | None = None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self._finetuned = None
        if self.settings.finetuned:
            from graphopt._io import load_model

            other = load_model(self.settings.finetuned)
            self._finetuned = {name: v.const_value.numpy() for name, v in other.graph.initializers.items()
                               if v.const_value is not None}
        return super().call(model)

    def build(self, b: _Builder, x: ir.Value | None, weight: np.ndarray, rng: np.random.Generator,
              model: ir.Model, target: _Target) -> tuple[ir.Value, dict[str, Any]]:
        if self._finetuned is not None:
            name = target.node.inputs[1].name if target.node.inputs[1] is not None else None
            stored = self._finetuned.get(name or "")
            trans_b = target.node.attributes.get("transB")
            transposed = target.node.op_type == "Gemm" and trans_b is not None and bool(trans_b.value)
            tuned = stored.T if stored is not None and transposed else stored
            if tuned is None or tuned.shape != weight.shape:
                raise UsageError(f"bitdelta: the fine-tuned model has no weight {name!r} of shape "
                                 f"{weight.shape[::-1] if transposed else weight.shape}")
            diff = tuned.astype(np.float32) - weight
            positive = diff >= 0
            scale = np.array(np.abs(diff).mean(), np.float32)
        else:
            positive = rng.random(weight.shape) >= 0.5
            scale = np.array(0.0, np.float32)
        rows, cols = weight.shape
        packed = np.packbits(positive, axis=-1, bitorder="little")  # [in, ceil(out / 8)], bit j of byte k: 8k + j
        bits = b.op("Mod", [b.op("BitShift", [
            b.op("Reshape", [b.param("sign", packed), b.const(np.array([rows, packed.shape[1], 1], np.int64))]),
            b.const(np.arange(8, dtype=np.uint8))], direction="RIGHT"), b.const(np.array(2, np.uint8))])
        flat = b.op("Reshape", [bits, b.const(np.array([rows, packed.shape[1] * 8], np.int64))])
        if cols % 8:
            flat = b.op("Slice", [flat, b.const(np.array([0], np.int64)), b.const(np.array([cols], np.int64)),
                                  b.const(np.array([1], np.int64))])
        ones = b.op("Cast", [flat], to=ir.DataType.FLOAT)  # 0/1
        two, one = b.const(np.array(2.0, np.float32)), b.const(np.array(1.0, np.float32))
        signs = b.op("Sub", [b.op("Mul", [ones, two]), one])
        delta = b.op("Mul", [b.op("MatMul", [x, signs]), b.param("scale", scale)])
        return delta, {"out": cols}


@register_pass
class MergeAdaptersPass(GraphoptPass[PassSettings]):
    """Fold adapters into their weights: ``x·W + Δ(x) -> x·(W + ΔW)`` with ``ΔW = s·A·B`` (LoRA),
    ``s·reshape(a·basis_A)·reshape(b·basis_B)`` (NOLA), ``scale·S`` (BitDelta); the adapter nodes and parameters go.
    The merged graph equals the adapted one up to float rounding."""

    name = "merge-adapters"
    output_preserving = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        adds = [n for n in graph if ADAPTER_KEY in n.metadata_props]
        merged = 0
        for add in adds:
            info = json.loads(add.metadata_props[ADAPTER_KEY])
            base = add.inputs[0].producer() if add.inputs[0] is not None else None
            if base is None:
                logger.warning("merge-adapters: %s skipped: its projection is gone", add.name)
                continue
            delta = _delta_weight(graph, info)
            weight = weight_matrix(base)
            if delta is None or weight is None or delta.shape != weight.shape:
                logger.warning("merge-adapters: %s skipped: adapter parameters not found", add.name)
                continue
            _set_weight(graph, base, (weight + delta).astype(weight.dtype))
            y = base.outputs[0]
            for node, index in list(add.outputs[0].uses()):
                node.replace_input_with(index, y)
            for i, out in enumerate(graph.outputs):
                if out is add.outputs[0]:
                    name = out.name
                    out.name, y.name = f"{name}.adapter", name
                    graph.outputs[i] = y
            merged += 1
        if merged:
            ir.passes.common.RemoveUnusedNodesPass()(model)
            for name in [n for n, v in graph.initializers.items() if n.startswith(ADAPTER_PREFIX) and not v.uses()]:
                graph.initializers.pop(name)
        return ir.passes.PassResult(model, merged > 0)


def _delta_weight(graph: ir.Graph, info: dict[str, Any]) -> np.ndarray | None:
    def get(part: str) -> np.ndarray | None:
        value = graph.initializers.get(info["prefix"] + part)
        return value.const_value.numpy() if value is not None and value.const_value is not None else None

    kind = info.get("kind")
    if kind == "lora":
        a, b = get("A"), get("B")
        return None if a is None or b is None else np.float32(info["scale"]) * (a @ b)
    if kind == "nola":
        coef_a, basis_a, coef_b, basis_b = (get(p) for p in ("coef_A", "basis_A", "coef_B", "basis_B"))
        if coef_a is None or basis_a is None or coef_b is None or basis_b is None:
            return None
        rank = int(info["rank"])
        a = (coef_a @ basis_a).reshape(-1, rank)
        b = (coef_b @ basis_b).reshape(rank, -1)
        return np.float32(info["scale"]) * (a @ b)
    if kind == "bitdelta":
        sign, scale = get("sign"), get("scale")
        if sign is None or scale is None:
            return None
        bits = np.unpackbits(sign, axis=-1, count=int(info["out"]), bitorder="little")
        return scale * (2.0 * bits.astype(np.float32) - 1.0)
    return None


def _set_weight(graph: ir.Graph, node: ir.Node, math_weight: np.ndarray) -> None:
    old = node.inputs[1]
    assert old is not None
    trans_b = node.attributes.get("transB")
    stored = math_weight.T if node.op_type == "Gemm" and trans_b is not None and trans_b.value else math_weight
    name = old.name or "weight"
    if len(old.uses()) == 1 and not old.is_graph_input():
        old.const_value = ir.tensor(np.ascontiguousarray(stored), name=name)
        return
    new_name = f"{name}.merged"
    while new_name in graph.initializers:
        new_name += "_"
    value = ir.Value(name=new_name, shape=ir.Shape(stored.shape), type=old.type,
                     const_value=ir.tensor(np.ascontiguousarray(stored), name=new_name))
    graph.register_initializer(value)
    node.replace_input_with(1, value)
