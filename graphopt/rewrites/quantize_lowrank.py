"""Quantized base plus a low-rank branch (LQ-LoRA): ``lowrank-q:B,R``.

``MatMul(x, W) -> Add(MatMul(x, DequantizeLinear(Wq, scale, zp, axis=0, block_size=B)),
MatMul(MatMul(x, L1), L2))`` where ``Q + L1 L2 ≈ W`` comes from alternating blocked RTN and a
rank-``R`` randomized SVD (:mod:`graphopt.rewrites._lowrank`); ``L1 [K, R]`` and ``L2 [R, N]``
stay float32 (they are the adapters a later fine-tuning step trains). With ``calibration`` the
decomposition weighs input channel ``k`` by ``E[x_k²]`` (a diagonal Fisher proxy from the
activations captured with onnxruntime); without it all channels count alike. Only MatMul weights
are handled (a Gemm's bias makes the branch placement different); they are the weights of
transformer layers.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from graphopt.errors import UsageError
from graphopt.passes import GraphoptPass, PassSettings, register_pass, setting
from graphopt.rewrites._blockwise import SUPPORTED_BITS, dequantize_blockwise, quantize_blockwise
from graphopt.rewrites._layerstats import collect_input_stats, load_calibration
from graphopt.rewrites._lowrank import lq_decompose
from graphopt.rewrites.quantize_weights import (
    QuantizedWeight,
    _add_initializer,
    emit_weight,
    find_weights,
    opset_ready,
    raise_opset,
    record_quantization,
    replace_weight,
    weight_skip_reason,
)

__all__ = ["QuantizeLowRankPass", "QuantizeLowRankSettings"]

logger = logging.getLogger(__name__)
_INSERTED_BY = "graphopt.inserted_by"


@dataclasses.dataclass(frozen=True)
class QuantizeLowRankSettings(PassSettings):
    bits: int = setting(3, "bits per code of the quantized base", search=(2, 3, 4))
    rank: int = setting(16, "rank R of the float low-rank branch L1 L2", search=(8, 16, 32, 64))
    block_size: int = setting(64, "rows of K sharing one scale", search=(32, 64, 128))
    symmetric: bool = setting(False, "signed codes without zero point (else unsigned with zero points)")
    iterations: int = setting(5, "alternating quantization / SVD steps")
    calibration: str = setting("", "path of an .npz of calibration feeds: weigh input channels by E[x^2]")
    calibration_samples: int = setting(64, "use at most this many calibration samples")
    min_elements: int = setting(4096, "leave weights with fewer elements in float")
    exclude: tuple[str, ...] = setting((), "leave weights whose initializer name contains any of these strings")

    def validate(self) -> None:
        name = "quantize-lowrank"
        if self.bits not in SUPPORTED_BITS:
            raise UsageError(f"{name}: bits must be one of {SUPPORTED_BITS}, not {self.bits}")
        if self.rank < 1:
            raise UsageError(f"{name}: rank must be at least 1, not {self.rank}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise UsageError(f"{name}: block_size must be a power of two >= 16, not {self.block_size}")
        if self.iterations < 1 or self.calibration_samples < 1 or self.min_elements < 0:
            raise UsageError(f"{name}: iterations and calibration_samples must be positive, min_elements >= 0")
        if isinstance(self.exclude, str) or not all(isinstance(s, str) for s in self.exclude):
            raise UsageError(f"{name}: exclude must be a list of strings")


@register_pass
class QuantizeLowRankPass(GraphoptPass[QuantizeLowRankSettings]):
    """``MatMul(x, W) -> Add(MatMul(x, DQ(Wq)), MatMul(MatMul(x, L1), L2))`` (see the module)."""

    name = "quantize-lowrank"
    Settings = QuantizeLowRankSettings
    output_preserving = False

    def skip_reason(self, weight: ir.Value | None) -> str | None:
        s = self.settings
        reason = weight_skip_reason(weight, s.min_elements, s.exclude)
        if reason is None and weight is not None:
            if any(user.op_type != "MatMul" for user, _ in weight.uses()):
                return "the weight is not only read by MatMul"
            assert weight.const_value is not None
            k, n = weight.const_value.numpy().shape
            if s.rank * (k + n) >= k * n:
                return f"rank {s.rank} is not below the size of a [{k}, {n}] weight"
        return reason

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        s = self.settings
        candidates = find_weights(model, self.skip_reason, pass_name=self.name)
        if not candidates or not opset_ready(model, self.name):
            return ir.passes.PassResult(model, False)
        stats = {}
        if s.calibration:
            names = [n.inputs[0].name for _, users in candidates.values() for n, _ in users if n.inputs[0]]
            feeds = load_calibration(s.calibration, model)
            stats = collect_input_stats(model, feeds, [n for n in names if n], max_samples=s.calibration_samples)
        raise_opset(model)
        details = {}
        graph = model.graph

        def fake_quantize(m: np.ndarray) -> np.ndarray:
            return dequantize_blockwise(*quantize_blockwise(m, s.bits, s.block_size, s.symmetric), s.block_size)

        for name, (weight, users) in candidates.items():
            assert weight.const_value is not None
            w = weight.const_value.numpy()
            x = users[0][0].inputs[0]
            layer = stats.get(x.name) if x is not None and x.name else None
            row_weight = np.diag(layer.second_moment) if layer is not None else None
            l1, l2, errors = lq_decompose(w, s.rank, fake_quantize, iterations=s.iterations, row_weight=row_weight)
            codes, scale, zp = quantize_blockwise(w - l1 @ l2, s.bits, s.block_size, s.symmetric)
            value = emit_weight(graph, weight, users[0][0], QuantizedWeight(codes, scale, zp, s.bits, 0),
                                s.block_size, self.name)
            replace_weight(graph, weight, users, value)
            for node, _ in users:
                _add_branch(graph, node, l1, l2, f"{name}_lora", self.name)
            details[name] = {"error_first": errors[0], "error_best": min(errors), "iterations": len(errors) - 1}
        record_quantization(model, self.name, s.to_dict(), details)
        return ir.passes.PassResult(model, True)


def _add_branch(graph: ir.Graph, node: ir.Node, l1: np.ndarray, l2: np.ndarray, base: str, pass_name: str) -> None:
    """``y = node(x, ...) -> Add(y, MatMul(MatMul(x, L1), L2))``, rewiring every reader of ``y``."""
    x, y = node.inputs[0], node.outputs[0]
    assert x is not None
    readers = list(y.uses())  # before the Add below becomes one
    meta = {_INSERTED_BY: pass_name}
    a = _add_initializer(graph, f"{base}_a", ir.Tensor(np.ascontiguousarray(l1)))
    b = _add_initializer(graph, f"{base}_b", ir.Tensor(np.ascontiguousarray(l2)))
    down = ir.Node("", "MatMul", [x, a], name=f"{node.name or base}_lora_down", metadata_props=meta)
    up = ir.Node("", "MatMul", [down.outputs[0], b], name=f"{node.name or base}_lora_up", metadata_props=meta)
    add = ir.Node("", "Add", [y, up.outputs[0]], name=f"{node.name or base}_lora_add", metadata_props=meta)
    for n in (down, up):
        n.outputs[0].name = n.name
        n.outputs[0].dtype = ir.DataType.FLOAT
    add.outputs[0].type = y.type
    add.outputs[0].shape = y.shape
    graph.insert_after(node, [down, up, add])
    for reader, index in readers:
        reader.replace_input_with(index, add.outputs[0])
    outputs = graph.outputs
    for i, out in enumerate(outputs):
        if out is y:
            name = y.name
            y.name = f"{name}_base"
            add.outputs[0].name = name
            outputs[i] = add.outputs[0]
    if add.outputs[0].name is None:
        add.outputs[0].name = add.name
