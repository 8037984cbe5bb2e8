"""Weight-only blocked RTN quantization of MatMul weights, and its lowering to ``MatMulNBits``.

Two passes, kept apart on purpose (the user's quantization spec vs. what a runtime supports):

* ``quantize-weights`` (:class:`QuantizeWeightsPass`) emits a standard-ONNX reference graph,
  ``MatMul(x, W) -> MatMul(x, DequantizeLinear(Wq, scale, zp, axis=0, block_size=B))``;
* ``lower-matmulnbits`` (:class:`LowerToMatMulNBitsPass`) turns that reference graph into
  onnxruntime's contrib kernel, ``com.microsoft.MatMulNBits``, with the same outputs.

The numpy core lives in :mod:`graphopt.rewrites._blockwise`.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from graphopt.errors import UsageError
from graphopt.passes import GraphoptPass, PassSettings, register_pass, setting
from graphopt.rewrites._blockwise import SUPPORTED_BITS, dequantize_blockwise, quantize_blockwise

__all__ = [
    "BLOCKED_DQ_OPSET",
    "LowerToMatMulNBitsPass",
    "QuantizeWeightsPass",
    "QuantizeWeightsSettings",
    "dequantize_blockwise",
    "quantize_blockwise",
]

logger = logging.getLogger(__name__)

BLOCKED_DQ_OPSET = 21
"""Blocked ``DequantizeLinear`` (``block_size``) and the INT4/UINT4 types need opset 21 (IR 10)."""

_MIN_IR_VERSION = 10

# Default-domain ops whose *meaning* (not just their type list) changed between opsets 19 and 21:
# a model using them cannot have its opset import raised without rewriting them. Every other op
# kept its semantics (the updates added types or optional attributes whose defaults keep the old
# behaviour), so raising the import from 18..20 to 21 is safe for models without these.
_CHANGED_SINCE_18 = {
    "DFT": 20,  # dft_length became an input, axis became an input
    "GridSample": 20,  # mode names changed (bilinear -> linear, bicubic -> cubic)
    "GroupNormalization": 21,  # scale and bias became per channel instead of per group
}
_OLDEST_UPGRADABLE = 18  # below 18, Reduce*/Split/Pad/Resize changed too; upgrade with export/ first

_INSERTED_BY = "graphopt.inserted_by"
_MS_DOMAIN = "com.microsoft"
_FLOAT_TYPES = (ir.DataType.FLOAT,)


@dataclasses.dataclass(frozen=True)
class QuantizeWeightsSettings(PassSettings):
    bits: int = setting(4, "bits per weight code (2 and 3 are stored in 4-bit containers)", search=(2, 3, 4, 8))
    block_size: int = setting(32, "rows of K (MatMul's reduction axis) sharing one scale", search=(32, 64, 128))
    symmetric: bool = setting(True, "signed codes without zero point (else unsigned codes with zero points)")
    min_elements: int = setting(4096, "leave weights with fewer elements in float")
    exclude: tuple[str, ...] = setting((), "leave weights whose initializer name contains any of these strings")

    def __post_init__(self) -> None:
        if isinstance(self.exclude, list):  # recipes (JSON / YAML) give lists
            object.__setattr__(self, "exclude", tuple(self.exclude))

    def validate(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise UsageError(f"quantize-weights: bits must be one of {SUPPORTED_BITS}, not {self.bits}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise UsageError(f"quantize-weights: block_size must be a power of two >= 16, not {self.block_size}")
        if self.min_elements < 0:
            raise UsageError("quantize-weights: min_elements must not be negative")
        if isinstance(self.exclude, str) or not all(isinstance(s, str) for s in self.exclude):
            raise UsageError("quantize-weights: exclude must be a list of strings")


@register_pass
class QuantizeWeightsPass(GraphoptPass[QuantizeWeightsSettings]):
    """Quantize constant MatMul weights blockwise with round-to-nearest (weight-only).

    ``MatMul(x, W) -> MatMul(x, DequantizeLinear(Wq, scale, zp, axis=0, block_size=B))`` and
    likewise ``Gemm(x, W, c, transB=0)``, where ``W [K, N]`` is a float32 initializer, ``Wq`` its
    codes and ``scale``/``zp`` have shape ``[ceil(K / B), N]`` (see :mod:`graphopt.rewrites._blockwise`).

    ``Wq`` is stored as INT4 (symmetric) / UINT4 (asymmetric, with zero points) for ``bits=4``,
    INT8 / UINT8 for ``bits=8``; 2- and 3-bit codes are stored in INT4/UINT4 containers restricted
    to ``[-2, 1]`` / ``[-4, 3]`` (symmetric) or ``[0, 3]`` / ``[0, 7]`` (asymmetric): the file is
    as large as at 4 bits, the accuracy that of 2 or 3 bits.

    Blocked ``DequantizeLinear`` needs opset 21: a model importing opset 18-20 is raised to 21
    (and IR version 10) when it uses none of the ops whose meaning changed on the way
    (DFT, GridSample, GroupNormalization); otherwise, or below 18, the pass leaves the model
    alone and logs why. Weights that are graph inputs, not 2-D, not float32, smaller than
    ``min_elements`` or ``exclude``-d stay in float. A weight that already feeds a
    ``DequantizeLinear`` is never an initializer input of MatMul, so the pass does not match its
    own output. Inserted nodes are named ``<weight>_dq`` and carry ``graphopt.inserted_by``
    in their metadata.
    """

    name = "quantize-weights"
    Settings = QuantizeWeightsSettings
    output_preserving = False

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        candidates: dict[str, tuple[ir.Value, list[tuple[ir.Node, int]]]] = {}
        for node in graph:
            index = _weight_input(node)
            if index is None:
                continue
            weight = node.inputs[index]
            reason = self.skip_reason(weight)
            if reason is not None:
                logger.debug("quantize-weights: %s (%s) stays float: %s", node.name, weight and weight.name, reason)
                continue
            assert weight is not None and weight.name is not None
            candidates.setdefault(weight.name, (weight, []))[1].append((node, index))
        if not candidates:
            return ir.passes.PassResult(model, False)
        problem = opset_problem(model)
        if problem is not None:
            logger.warning("quantize-weights: left the model unchanged: %s", problem)
            return ir.passes.PassResult(model, False)
        _raise_opset(model)
        for weight, users in candidates.values():
            dq_output = self._quantize(graph, weight, users[0][0])
            for node, index in users:
                node.replace_input_with(index, dq_output)
            if not weight.uses() and not weight.is_graph_output():
                graph.initializers.pop(weight.name)  # type: ignore[arg-type]
        logger.info("quantize-weights: quantized %d weights", len(candidates))
        return ir.passes.PassResult(model, True)

    def skip_reason(self, weight: ir.Value | None) -> str | None:
        """Why ``weight`` (input B of a MatMul) is not quantized, or ``None`` when it is."""
        if weight is None or not weight.is_initializer() or weight.const_value is None:
            return "the weight is not a constant initializer"
        if weight.is_graph_input():
            return "the weight is a graph input (can be overridden at run time)"
        shape = _dims(weight.const_value)
        if len(shape) != 2:
            return f"the weight is {len(shape)}-D, not 2-D"
        if weight.const_value.dtype not in _FLOAT_TYPES:
            return f"the weight is {weight.const_value.dtype}, not float32"
        if shape[0] * shape[1] < self.settings.min_elements:
            return f"the weight has {shape[0] * shape[1]} < min_elements={self.settings.min_elements} elements"
        if any(part in (weight.name or "") for part in self.settings.exclude):
            return "the weight is excluded by name"
        return None

    def _quantize(self, graph: ir.Graph, weight: ir.Value, first_user: ir.Node) -> ir.Value:
        s = self.settings
        assert weight.const_value is not None
        w = weight.const_value.numpy()
        q, scale, zp = quantize_blockwise(w, s.bits, s.block_size, s.symmetric)
        if s.bits == 8:
            code_type = ir.DataType.INT8 if s.symmetric else ir.DataType.UINT8
        else:
            code_type = ir.DataType.INT4 if s.symmetric else ir.DataType.UINT4
        base = weight.name
        inputs = [
            _add_initializer(graph, f"{base}_q", ir.Tensor(q, dtype=code_type)),
            _add_initializer(graph, f"{base}_scale", ir.Tensor(scale)),
        ]
        if zp is not None:
            inputs.append(_add_initializer(graph, f"{base}_zp", ir.Tensor(zp, dtype=code_type)))
        dq = ir.Node(
            "",
            "DequantizeLinear",
            inputs,
            attributes=[ir.AttrInt64("axis", 0), ir.AttrInt64("block_size", s.block_size)],
            name=f"{base}_dq",
            metadata_props={_INSERTED_BY: self.name},
        )
        dq.outputs[0].name = f"{base}_dq"
        dq.outputs[0].dtype = ir.DataType.FLOAT
        dq.outputs[0].shape = ir.Shape(w.shape)
        graph.insert_before(first_user, dq)
        return dq.outputs[0]


def _weight_input(node: ir.Node) -> int | None:
    """The index of the [K, N] weight input of a MatMul or a Gemm with transB=0, else None."""
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "MatMul" and len(node.inputs) == 2:
        return 1
    if node.op_type == "Gemm" and len(node.inputs) >= 2 and node.attributes.get_int("transB", 0) == 0:
        return 1
    return None


def opset_problem(model: ir.Model) -> str | None:
    """Why the model cannot import opset 21 (for blocked DequantizeLinear), or None when it can."""
    version = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    if version is None:
        return "the model imports no default-domain opset"
    if version >= BLOCKED_DQ_OPSET:
        return None
    if version < _OLDEST_UPGRADABLE:
        return (
            f"blocked DequantizeLinear needs opset {BLOCKED_DQ_OPSET} and the model imports opset {version} "
            f"(< {_OLDEST_UPGRADABLE}); convert it first"
        )
    nodes = list(model.graph.all_nodes())
    for function in model.functions.values():
        nodes.extend(function.all_nodes())
    changed = sorted(
        {n.op_type for n in nodes if n.domain in ("", "ai.onnx") and version < _CHANGED_SINCE_18.get(n.op_type, 0)}
    )
    if changed:
        return (
            f"blocked DequantizeLinear needs opset {BLOCKED_DQ_OPSET}, and raising opset {version} would change "
            f"the meaning of {', '.join(changed)}"
        )
    return None


def _raise_opset(model: ir.Model) -> None:
    key = "" if "" in model.opset_imports else "ai.onnx"
    if model.opset_imports[key] < BLOCKED_DQ_OPSET:
        logger.info("quantize-weights: raising the default opset %d -> %d", model.opset_imports[key], BLOCKED_DQ_OPSET)
        model.opset_imports[key] = BLOCKED_DQ_OPSET
    model.ir_version = max(model.ir_version, _MIN_IR_VERSION)


def _dims(tensor: ir.TensorProtocol) -> tuple[int, ...]:
    """The static shape of a constant tensor as ints."""
    return tuple(d if isinstance(d, int) else -1 for d in tensor.shape)


def _add_initializer(graph: ir.Graph, name: str, tensor: ir.TensorProtocol) -> ir.Value:
    unique = name
    suffix = 1
    while unique in graph.initializers:
        unique = f"{name}_{suffix}"
        suffix += 1
    tensor.name = unique
    value = ir.Value(name=unique, shape=ir.Shape(_dims(tensor)), type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value


@register_pass
class LowerToMatMulNBitsPass(GraphoptPass[PassSettings]):
    """Lower blocked weight-only QDQ MatMuls to onnxruntime's ``com.microsoft.MatMulNBits``.

    ``MatMul(x, DequantizeLinear(Wq, s, zp, axis=0, block_size=B)) -> MatMulNBits(x, Wp, sp, zpp,
    K=K, N=N, bits=b, block_size=B)`` with ``Wq [K, N]`` an INT4/UINT4 (``b = 4``) or INT8/UINT8
    (``b = 8``) initializer, ``s`` float32 ``[ceil(K/B), N]`` and ``B`` a power of two >= 16.

    MatMulNBits stores unsigned codes ``u`` and computes ``(u - zpu) * s``; signed codes are
    shifted, ``u = q + 2^(b-1)``, ``zpu = zp + 2^(b-1)`` (the kernel's default zero point when
    ``zp`` is absent or zero). Layout: ``Wp`` uint8 ``[N, ceil(K/B), B*b/8]`` (``Wq`` transposed,
    K zero-padded to whole blocks, 4-bit codes packed two per byte, the first in the low nibble),
    ``sp = sᵀ`` ``[N, ceil(K/B)]``, ``zpp`` uint8 ``[N, ceil(ceil(K/B)*b/8)]`` packed the same way
    per row. The arithmetic is that of the reference graph (``accuracy_level`` left at 0, float
    accumulation), so outputs agree up to float summation order.
    """

    name = "lower-matmulnbits"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        lowered: dict[int, list[ir.Value]] = {}  # id(DequantizeLinear node) -> MatMulNBits inputs
        dq_nodes: list[ir.Node] = []
        count = 0
        for node in list(graph):
            if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
                continue
            dq = node.inputs[1].producer() if node.inputs[1] is not None else None
            match = _match_dq(dq) if dq is not None else "input B is not computed by DequantizeLinear"
            if isinstance(match, str):
                logger.debug("lower-matmulnbits: %s not lowered: %s", node.name, match)
                continue
            assert dq is not None
            k, n, bits, block = match
            if id(dq) not in lowered:
                lowered[id(dq)] = _packed_inputs(graph, dq, bits, block)
                dq_nodes.append(dq)
            fused = ir.Node(
                _MS_DOMAIN,
                "MatMulNBits",
                [node.inputs[0], *lowered[id(dq)]],
                attributes=[
                    ir.AttrInt64("K", k),
                    ir.AttrInt64("N", n),
                    ir.AttrInt64("bits", bits),
                    ir.AttrInt64("block_size", block),
                ],
                name=f"{node.name or dq.name}_nbits",
                metadata_props={_INSERTED_BY: self.name},
            )
            ir.convenience.replace_nodes_and_values(graph, node, [node], [fused], node.outputs, fused.outputs)
            count += 1
        if not count:
            return ir.passes.PassResult(model, False)
        _remove_unused(graph, dq_nodes)
        model.opset_imports.setdefault(_MS_DOMAIN, 1)
        logger.info("lower-matmulnbits: lowered %d MatMuls", count)
        return ir.passes.PassResult(model, True)


def _match_dq(dq: ir.Node) -> tuple[int, int, int, int] | str:
    """(K, N, bits, block_size) of a blocked weight DequantizeLinear, or why it is not one."""
    if dq.op_type != "DequantizeLinear" or dq.domain not in ("", "ai.onnx"):
        return "input B is not computed by DequantizeLinear"
    block = dq.attributes.get_int("block_size", 0)
    if dq.attributes.get_int("axis", 1) != 0 or block < 16 or block & (block - 1):
        return "the DequantizeLinear is not blocked along axis 0 with a power-of-two block_size >= 16"
    if dq.attributes.get_int("output_dtype", 0) not in (0, ir.DataType.FLOAT):
        return "the DequantizeLinear does not output float32"
    values = list(dq.inputs) + [None] * (3 - len(dq.inputs))
    wq, scale, zp = values[:3]
    for value in (wq, scale, zp):
        if value is not None and (not value.is_initializer() or value.is_graph_input() or value.const_value is None):
            return "the quantized weight, scale or zero point is not a constant initializer"
    if wq is None or scale is None or wq.const_value is None or scale.const_value is None:
        return "the DequantizeLinear has no weight or scale"
    bits = {
        ir.DataType.INT4: 4,
        ir.DataType.UINT4: 4,
        ir.DataType.INT8: 8,
        ir.DataType.UINT8: 8,
    }.get(wq.const_value.dtype)
    if bits is None:
        return f"the weight codes are {wq.const_value.dtype}, not (U)INT4 or (U)INT8"
    if scale.const_value.dtype != ir.DataType.FLOAT:
        return "the scale is not float32"
    if len(_dims(wq.const_value)) != 2:
        return "the quantized weight is not 2-D"
    k, n = _dims(wq.const_value)
    if _dims(scale.const_value) != (-(-k // block), n):
        return f"the scale has shape {_dims(scale.const_value)}, not ({-(-k // block)}, {n})"
    if zp is not None and (zp.const_value is None or _dims(zp.const_value) != _dims(scale.const_value)):
        return "the zero point's shape differs from the scale's"
    return k, n, bits, block


def _packed_inputs(graph: ir.Graph, dq: ir.Node, bits: int, block: int) -> list[ir.Value]:
    """MatMulNBits' B, scales and (when needed) zero_points for the weight behind ``dq``."""
    wq, scale = dq.inputs[0], dq.inputs[1]
    zp = dq.inputs[2] if len(dq.inputs) > 2 else None
    assert wq is not None and scale is not None and wq.const_value is not None and scale.const_value is not None
    codes = wq.const_value.numpy().astype(np.int32)
    zero = zp.const_value.numpy().astype(np.int32) if zp is not None and zp.const_value is not None else None
    signed = wq.const_value.dtype in (ir.DataType.INT4, ir.DataType.INT8)
    if zero is None:
        zero = np.zeros(_dims(scale.const_value), dtype=np.int32)
    if signed:
        codes = codes + (1 << (bits - 1))
        zero = zero + (1 << (bits - 1))
    packed_b, packed_zp = pack_matmulnbits(codes.astype(np.uint8), zero.astype(np.uint8), bits, block)
    base = wq.name or "weight"
    inputs = [
        _add_initializer(graph, f"{base}_nbits", ir.Tensor(packed_b)),
        _add_initializer(graph, f"{base}_nbits_scale", ir.Tensor(np.ascontiguousarray(scale.const_value.numpy().T))),
    ]
    if not np.all(zero == (1 << (bits - 1))):  # else the kernel's default zero point is exact
        inputs.append(_add_initializer(graph, f"{base}_nbits_zp", ir.Tensor(packed_zp)))
    return inputs


def pack_matmulnbits(codes: np.ndarray, zero_point: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Unsigned ``codes [K, N]`` and ``zero_point [ceil(K/block), N]`` in MatMulNBits' layout:
    B uint8 ``[N, n_blocks, block*bits/8]`` and zero points uint8 ``[N, ceil(n_blocks*bits/8)]``."""
    k, n = codes.shape
    blocks = -(-k // block)
    padded = np.zeros((n, blocks * block), dtype=np.uint8)
    padded[:, :k] = codes.T
    zps = np.ascontiguousarray(zero_point.T.astype(np.uint8))
    if bits == 8:
        return padded.reshape(n, blocks, block), zps
    if bits != 4:
        raise UsageError(f"MatMulNBits lowering supports 4 and 8 bits, not {bits}")
    b = _pack_nibbles(padded).reshape(n, blocks, block // 2)
    if blocks % 2:
        zps = np.concatenate([zps, np.zeros((n, 1), dtype=np.uint8)], axis=1)
    return b, _pack_nibbles(zps)


def _pack_nibbles(values: np.ndarray) -> np.ndarray:
    """Pack pairs along the last axis into bytes, the first of each pair in the low nibble."""
    return (values[..., 0::2] & 0x0F) | ((values[..., 1::2] & 0x0F) << 4)


def _remove_unused(graph: ir.Graph, nodes: list[ir.Node]) -> None:
    """Remove the DequantizeLinear ``nodes`` nothing reads any more, then their orphaned initializers."""
    for node in nodes:
        if any(o.uses() or o.is_graph_output() for o in node.outputs):
            continue
        inputs = [v for v in node.inputs if v is not None]
        graph.remove(node, safe=True)
        for value in inputs:
            if value.is_initializer() and not value.uses() and not value.is_graph_output():
                graph.initializers.pop(value.name)  # type: ignore[arg-type]
