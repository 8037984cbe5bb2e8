"""Weight-only blocked quantization of MatMul weights (RTN, GPTQ, AWQ; integer or NF4 grids),
and its lowering to ``MatMulNBits``.

Two passes, kept apart on purpose (the user's quantization spec vs. what a runtime supports):

* ``quantize-weights`` (:class:`QuantizeWeightsPass`) emits a standard-ONNX reference graph,
  ``MatMul(x, W) -> MatMul(x, DequantizeLinear(Wq, scale, zp, axis=0, block_size=B))``;
* ``lower-matmulnbits`` (:class:`LowerToMatMulNBitsPass`) turns that reference graph into
  onnxruntime's contrib kernel, ``com.microsoft.MatMulNBits``, with the same outputs.

The numpy core lives in :mod:`graphopt.rewrites._blockwise` (grids, RTN), ``_gptq``, ``_awq``,
``_codebooks`` (NF4) and ``_layerstats`` (calibration statistics).

Calibration: passes take settings only, so ``calibration`` is the *path* of an ``.npz`` of
feeds (keys = graph input names, samples on axis 0, as for every graphopt command). It is read
when the pass runs, not when it is built; the pass then captures the input activation of every
MatMul it quantizes with onnxruntime (basic optimisation) and accumulates ``H = XᵀX`` and
``mean|x|`` per input, batch by batch (at most ``calibration_samples`` samples; padding tokens
are dropped using the feeds' attention mask). GPTQ and AWQ need it; AdaDim and ``clip_search``
use it when given (else plain weight error).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_ir as ir

from graphopt.errors import UsageError
from graphopt.passes import GraphoptPass, PassSettings, register_pass, setting
from graphopt.rewrites._awq import awq_search
from graphopt.rewrites._blockwise import (
    SUPPORTED_BITS,
    dequantize_along,
    dequantize_blockwise,
    quantize_along,
    quantize_blockwise,
)
from graphopt.rewrites._codebooks import dequantize_nf4, nf4_levels, quantize_nf4
from graphopt.rewrites._gptq import gptq_quantize, inverse_hessian_factor
from graphopt.rewrites._layerstats import InputStats, collect_input_stats, layer_error, load_calibration

__all__ = [
    "BLOCKED_DQ_OPSET",
    "QUANTIZATION_KEY",
    "Candidates",
    "LowerToMatMulNBitsPass",
    "QuantizeWeightsPass",
    "QuantizeWeightsSettings",
    "QuantizedWeight",
    "dequantize_blockwise",
    "emit_weight",
    "find_weights",
    "opset_problem",
    "opset_ready",
    "quantize_blockwise",
    "raise_opset",
    "record_quantization",
    "replace_weight",
    "weight_skip_reason",
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

QUANTIZATION_KEY = "graphopt.quantization"
"""``metadata_props`` key: a JSON list, one entry per quantization pass run (scheme, settings, per-weight choices)."""

_INSERTED_BY = "graphopt.inserted_by"
_METHODS = ("rtn", "gptq", "awq")
_GROUPINGS = ("output", "input", "adadim")
_FORMATS = ("int", "nf4")
_CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)

Candidates = dict[str, tuple[ir.Value, list[tuple[ir.Node, int]]]]
"""Weights to quantize by initializer name: the value and its (node, input index) uses."""
_MS_DOMAIN = "com.microsoft"
_FLOAT_TYPES = (ir.DataType.FLOAT,)


@dataclasses.dataclass(frozen=True)
class QuantizeWeightsSettings(PassSettings):
    bits: int = setting(4, "bits per weight code (2 and 3 are stored in 4-bit containers)", search=(2, 3, 4, 8))
    block_size: int = setting(32, "weights sharing one scale (rows of K, or columns of N with grouping=input)",
                              search=(32, 64, 128))
    symmetric: bool = setting(True, "signed codes without zero point (else unsigned codes with zero points)")
    min_elements: int = setting(4096, "leave weights with fewer elements in float")
    exclude: tuple[str, ...] = setting((), "leave weights whose initializer name contains any of these strings")
    method: str = setting("rtn", "rtn: round to nearest; gptq: Hessian error feedback; awq: activation-aware "
                          "scaling (gptq and awq need calibration)", search=_METHODS)
    grouping: str = setting("output", "output: scales per output channel and block of K rows; input: per input "
                            "channel and block of N columns; adadim: per weight, whichever reconstructs better",
                            search=_GROUPINGS)
    format: str = setting("int", "int: uniform integer grid; nf4: QLoRA NormalFloat-4 codebook (4 bits)",
                          search=_FORMATS)
    calibration: str = setting("", "path of an .npz of calibration feeds (graph input names, samples on axis 0)")
    calibration_samples: int = setting(128, "use at most this many calibration samples")
    damp: float = setting(0.01, "GPTQ: Hessian damping, as a fraction of its mean diagonal (0.1 with little "
                          "calibration data: on MiniLM 16 sentences overfit at 0.01)")
    clip_search: bool = setting(False, "shrink each block's range where that lowers the (activation-weighted) error")
    embeddings: bool = setting(False, "also quantize Gather tables [V, D] (RTN, blocks along D, axis=1)")

    def validate(self) -> None:
        name = "quantize-weights"
        if self.bits not in SUPPORTED_BITS:
            raise UsageError(f"{name}: bits must be one of {SUPPORTED_BITS}, not {self.bits}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise UsageError(f"{name}: block_size must be a power of two >= 16, not {self.block_size}")
        if self.min_elements < 0:
            raise UsageError(f"{name}: min_elements must not be negative")
        if isinstance(self.exclude, str) or not all(isinstance(s, str) for s in self.exclude):
            raise UsageError(f"{name}: exclude must be a list of strings")
        for field, value, allowed in (("method", self.method, _METHODS), ("grouping", self.grouping, _GROUPINGS),
                                      ("format", self.format, _FORMATS)):
            if value not in allowed:
                raise UsageError(f"{name}: {field} must be one of {', '.join(allowed)}, not {value!r}")
        if self.method in ("gptq", "awq") and not self.calibration:
            raise UsageError(f"{name}: method={self.method} needs calibration=PATH.npz")
        if self.format == "nf4" and (self.bits != 4 or self.method == "gptq" or self.grouping != "output"):
            raise UsageError(f"{name}: format=nf4 needs bits=4, method rtn or awq and grouping=output")
        if self.calibration_samples < 1:
            raise UsageError(f"{name}: calibration_samples must be at least 1")
        if not 0 < self.damp < 1:
            raise UsageError(f"{name}: damp must lie in (0, 1), not {self.damp}")


@dataclasses.dataclass
class QuantizedWeight:
    """The arrays of one quantized weight: codes ``[K, N]``, ``scale``/``zero_point`` blocked along
    ``axis`` (or NF4 absmax scales), and the AWQ input scales ``s`` (the input is divided by them)."""

    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None
    bits: int
    axis: int
    nf4: bool = False
    input_scale: np.ndarray | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    code_type: ir.DataType | None = None  # storage type of the codes when not implied by bits (e.g. FLOAT8E4M3FN)

    def dequantize(self, block_size: int) -> np.ndarray:
        """The effective weight ``W`` the graph multiplies by (AWQ scales undone)."""
        if self.nf4:
            w = dequantize_nf4(self.codes, self.scale, block_size)
        else:
            w = dequantize_along(self.codes, self.scale, self.zero_point, block_size, self.axis)
        return w if self.input_scale is None else (w / self.input_scale[:, None]).astype(np.float32)


@register_pass
class QuantizeWeightsPass(GraphoptPass[QuantizeWeightsSettings]):
    """Quantize constant MatMul weights blockwise (weight-only): RTN, GPTQ or AWQ; int or NF4 grids.

    ``MatMul(x, W) -> MatMul(x, DequantizeLinear(Wq, scale, zp, axis=a, block_size=B))`` and
    likewise ``Gemm(x, W, c, transB=0)``, where ``W [K, N]`` is a float32 initializer and ``Wq``
    its codes. ``grouping=output`` blocks along K (``a = 0``, scales ``[ceil(K/B), N]``: groups of
    one output channel's weights); ``grouping=input`` blocks along N (``a = 1``, scales
    ``[K, ceil(N/B)]``); ``adadim`` picks either per weight by reconstruction error (AdaDim).
    ``method=gptq`` rounds with Hessian error feedback (:mod:`._gptq`); ``method=awq`` scales
    input channels first and divides the activation back, ``MatMul(Mul(x, 1/s), DQ(Q(diag(s) W)))``
    (:mod:`._awq`). ``format=nf4`` stores NF4 codebook indices and absmax scales,
    ``W = Reshape(Mul(Reshape(Gather(levels, Cast(Wq)), [K/B, B, N]), absmax), [K, N])``.
    With ``embeddings``, Gather tables ``T [V, D]`` (axis 0) become
    ``DequantizeLinear(Tq, scale [V, ceil(D/B)], axis=1, block_size=B)`` (RTN).

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
    own output. Inserted nodes are named ``<weight>_dq`` (etc.) and carry ``graphopt.inserted_by``
    in their metadata; the scheme and per-weight choices are recorded under ``graphopt.quantization``.
    """

    name = "quantize-weights"
    Settings = QuantizeWeightsSettings
    output_preserving = False

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        candidates = self.candidates(model)
        if not candidates or not opset_ready(model, self.name):
            return ir.passes.PassResult(model, False)
        stats = self.input_stats(model, candidates)
        bits = self.plan_bits(candidates, stats)
        raise_opset(model)
        details: dict[str, Any] = {}
        for weight, users in candidates.values():
            assert weight.const_value is not None and weight.name is not None
            gather = users[0][0].op_type == "Gather"
            if gather:
                codes, scale, zp = quantize_along(
                    weight.const_value.numpy().T, bits[weight.name], self.settings.block_size,
                    self.settings.symmetric, 0,
                )
                result = QuantizedWeight(codes.T.copy(), scale.T.copy(), None if zp is None else zp.T.copy(),
                                         bits[weight.name], axis=1, info={"method": "rtn"})
            else:
                result = self.quantize(weight.const_value.numpy(), bits[weight.name], _weight_stats(users, stats))
            details[weight.name] = {"bits": result.bits, "axis": result.axis, **result.info,
                                    **self.plan_details().get(weight.name, {})}
            dq_output = emit_weight(graph, weight, users[0][0], result, self.settings.block_size, self.name)
            if result.input_scale is not None:
                for node, _ in users:
                    _divide_input(graph, node, result.input_scale, self.name)
            replace_weight(graph, weight, users, dq_output)
        record_quantization(model, self.name, self.settings.to_dict(), details)
        logger.info("%s: quantized %d weights", self.name, len(candidates))
        return ir.passes.PassResult(model, True)

    def candidates(self, model: ir.Model) -> Candidates:
        """The weights to quantize, by name, with their (node, input index) uses."""
        return find_weights(model, self.skip_reason, embeddings=self.settings.embeddings, pass_name=self.name)

    def skip_reason(self, weight: ir.Value | None) -> str | None:
        """Why ``weight`` (input B of a MatMul) is not quantized, or ``None`` when it is."""
        s = self.settings
        reason = weight_skip_reason(weight, s.min_elements, s.exclude)
        if reason is None and weight is not None and weight.const_value is not None and s.format == "nf4":
            k = _dims(weight.const_value)[0]
            if k % s.block_size and not any(user.op_type == "Gather" for user, _ in weight.uses()):
                return f"NF4 needs K = {k} to be a multiple of block_size = {s.block_size}"
        return reason

    def needs_stats(self) -> bool:
        s = self.settings
        return bool(s.calibration) and (s.method != "rtn" or s.grouping == "adadim" or s.clip_search)

    def input_stats(self, model: ir.Model, candidates: Candidates) -> dict[str, InputStats]:
        """Calibration statistics of the MatMul inputs (empty without calibration or when not needed)."""
        if not self.needs_stats():
            return {}
        names = [
            node.inputs[0].name
            for _, users in candidates.values()
            for node, _ in users
            if node.op_type != "Gather" and node.inputs[0] is not None and node.inputs[0].name
        ]
        feeds = load_calibration(self.settings.calibration, model)
        logger.info("%s: capturing %d activations for calibration", self.name, len(set(names)))
        return collect_input_stats(model, feeds, names, max_samples=self.settings.calibration_samples)

    def plan_bits(self, candidates: Candidates, stats: dict[str, InputStats]) -> dict[str, int]:
        """Bits per weight name; every weight gets ``bits`` here (mixed precision overrides this)."""
        return dict.fromkeys(candidates, self.settings.bits)

    def plan_details(self) -> dict[str, dict[str, Any]]:
        """Per-weight facts about the plan, recorded in the metadata (none here)."""
        return {}

    def quantize(self, w: np.ndarray, bits: int, stats: InputStats | None) -> QuantizedWeight:
        """Quantize one ``[K, N]`` weight with the configured method, grouping and format."""
        s = self.settings
        if s.grouping != "adadim":
            return self._quantize_axis(w, bits, stats, 0 if s.grouping == "output" else 1)
        options = [self._quantize_axis(w, bits, stats, axis) for axis in (0, 1)]
        errors = [_error(w, o.dequantize(s.block_size), stats) for o in options]
        best = options[int(np.argmin(errors))]
        best.info["adadim_errors"] = [float(e) for e in errors]
        return best

    def _quantize_axis(self, w: np.ndarray, bits: int, stats: InputStats | None, axis: int) -> QuantizedWeight:
        s = self.settings
        clip = _CLIP_RATIOS if s.clip_search else (1.0,)
        row_weight = np.diag(stats.second_moment) if stats is not None else None

        def rtn(matrix: np.ndarray) -> QuantizedWeight:
            if s.format == "nf4":
                codes, scale = quantize_nf4(matrix, s.block_size)
                return QuantizedWeight(codes, scale, None, 4, 0, nf4=True)
            codes, scale, zp = quantize_along(matrix, bits, s.block_size, s.symmetric, axis, clip=clip,
                                              row_weight=row_weight)
            return QuantizedWeight(codes, scale, zp, bits, axis)

        if s.method == "rtn" or stats is None:
            result = rtn(w)
            result.info["method"] = "rtn"
            return result
        if s.method == "gptq":
            key = f"gptq_factor_{s.damp}"
            if key not in stats.cache:
                stats.cache[key] = inverse_hessian_factor(stats.hessian, s.damp)
            codes, scale, zp = gptq_quantize(w, stats.hessian, bits, s.block_size, s.symmetric, axis=axis,
                                             damp=s.damp, clip=clip, factor=stats.cache[key])
            result = QuantizedWeight(codes, scale, zp, bits, axis, info={"method": "gptq"})
            result.info["error_vs_rtn"] = _ratio(w, result, rtn(w), stats, s.block_size)
            return result
        scales, alpha, _ = awq_search(w, stats.hessian, stats.mean_abs, lambda m: rtn(m).dequantize(s.block_size))
        result = rtn((w * scales[:, None]).astype(np.float32))
        if alpha > 0:
            result.input_scale = scales.astype(np.float32)
        result.info.update(method="awq", alpha=alpha)
        return result


def emit_weight(graph: ir.Graph, weight: ir.Value, first_user: ir.Node, q: QuantizedWeight, block: int,
                pass_name: str) -> ir.Value:
    """Insert the nodes that rebuild ``weight`` from ``q`` before ``first_user``; return the float value:
    ``DequantizeLinear(Wq, scale, zp, axis=q.axis, block_size=block)`` (or the NF4 lookup); a 1-D
    ``scale`` is per channel (``axis`` only), a 0-D one per tensor."""
    base = weight.name
    shape = ir.Shape(q.codes.shape)
    if q.nf4:
        return _emit_nf4(graph, base, first_user, q, block, pass_name)
    if q.code_type is not None:
        code_type = q.code_type
    elif q.bits == 8:
        code_type = ir.DataType.INT8 if q.zero_point is None else ir.DataType.UINT8
    else:
        code_type = ir.DataType.INT4 if q.zero_point is None else ir.DataType.UINT4
    inputs = [
        _add_initializer(graph, f"{base}_q", ir.Tensor(q.codes, dtype=code_type)),
        _add_initializer(graph, f"{base}_scale", ir.Tensor(np.ascontiguousarray(q.scale, dtype=np.float32))),
    ]
    if q.zero_point is not None:
        inputs.append(_add_initializer(graph, f"{base}_zp", ir.Tensor(q.zero_point, dtype=code_type)))
    attributes = []  # a 0-D scale is per tensor, 1-D per channel along q.axis, 2-D blocked
    if q.scale.ndim >= 1:
        attributes.append(ir.AttrInt64("axis", q.axis))
    if q.scale.ndim == 2:
        attributes.append(ir.AttrInt64("block_size", block))
    dq = ir.Node("", "DequantizeLinear", inputs, attributes=attributes, name=f"{base}_dq",
                 metadata_props={_INSERTED_BY: pass_name})
    return _finish(graph, dq, first_user, f"{base}_dq", shape)


def replace_weight(graph: ir.Graph, weight: ir.Value, users: list[tuple[ir.Node, int]], new: ir.Value) -> None:
    """Point every use of ``weight`` at ``new``; drop the float initializer when nothing else reads it."""
    for node, index in users:
        node.replace_input_with(index, new)
    if not weight.uses() and not weight.is_graph_output() and weight.name in graph.initializers:
        graph.initializers.pop(weight.name)  # type: ignore[arg-type]


def find_weights(
    model: ir.Model, skip_reason: Callable[[ir.Value | None], str | None], *, embeddings: bool = False,
    pass_name: str = "",
) -> Candidates:
    """Constant ``[K, N]`` weights of MatMul / Gemm(transB=0) (and with ``embeddings`` Gather tables)
    that ``skip_reason`` accepts, by name, with their (node, input index) uses."""
    candidates: Candidates = {}
    for node in model.graph:
        index = _weight_input(node)
        if index is None and embeddings:
            index = _gather_table(node)
        if index is None:
            continue
        weight = node.inputs[index]
        reason = skip_reason(weight)
        if reason is None and weight is not None and len({user.op_type == "Gather" for user, _ in weight.uses()}) > 1:
            reason = "the weight is read by Gather and by other ops (tied embeddings) and stays float for both"
        if reason is not None:
            logger.debug("%s: %s (%s) stays float: %s", pass_name, node.name, weight and weight.name, reason)
            continue
        assert weight is not None and weight.name is not None
        candidates.setdefault(weight.name, (weight, []))[1].append((node, index))
    return candidates


def weight_skip_reason(weight: ir.Value | None, min_elements: int, exclude: tuple[str, ...]) -> str | None:
    """Why ``weight`` cannot or should not be quantized (not a constant 2-D float32 initializer,
    too small, excluded by name), or ``None``."""
    if weight is None or not weight.is_initializer() or weight.const_value is None:
        return "the weight is not a constant initializer"
    if weight.is_graph_input():
        return "the weight is a graph input (can be overridden at run time)"
    shape = _dims(weight.const_value)
    if len(shape) != 2:
        return f"the weight is {len(shape)}-D, not 2-D"
    if weight.const_value.dtype not in _FLOAT_TYPES:
        return f"the weight is {weight.const_value.dtype}, not float32"
    if shape[0] * shape[1] < min_elements:
        return f"the weight has {shape[0] * shape[1]} < min_elements={min_elements} elements"
    if any(part in (weight.name or "") for part in exclude):
        return "the weight is excluded by name"
    return None


def record_quantization(model: ir.Model, pass_name: str, settings: dict[str, Any], weights: dict[str, Any]) -> None:
    """Append ``{"pass", "settings", "weights"}`` to the model's ``graphopt.quantization`` list."""
    try:
        records = json.loads(model.metadata_props.get(QUANTIZATION_KEY, "[]"))
    except json.JSONDecodeError:
        records = []
    if not isinstance(records, list):
        records = []
    records.append({"pass": pass_name, "settings": settings, "weights": weights})
    model.metadata_props[QUANTIZATION_KEY] = json.dumps(records, sort_keys=True, default=str)


def _weight_stats(users: list[tuple[ir.Node, int]], stats: dict[str, InputStats]) -> InputStats | None:
    x = users[0][0].inputs[0]
    return stats.get(x.name) if x is not None and x.name else None


def _error(w: np.ndarray, w_hat: np.ndarray, stats: InputStats | None) -> float:
    if stats is None:
        return float(np.sum((np.asarray(w, dtype=np.float64) - w_hat) ** 2))
    return layer_error(w, w_hat, stats.hessian)


def _ratio(w: np.ndarray, a: QuantizedWeight, b: QuantizedWeight, stats: InputStats, block: int) -> float:
    base = _error(w, b.dequantize(block), stats)
    return _error(w, a.dequantize(block), stats) / base if base > 0 else 1.0


def _finish(graph: ir.Graph, node: ir.Node, first_user: ir.Node, name: str, shape: ir.Shape) -> ir.Value:
    node.outputs[0].name = name
    node.outputs[0].dtype = ir.DataType.FLOAT
    node.outputs[0].shape = shape
    graph.insert_before(first_user, node)
    return node.outputs[0]


def _emit_nf4(graph: ir.Graph, base: str | None, first_user: ir.Node, q: QuantizedWeight, block: int,
              pass_name: str) -> ir.Value:
    """``Reshape(Mul(Reshape(Gather(levels, Cast(Wq, INT32)), [K/B, B, N]), absmax[K/B, 1, N]), [K, N])``."""
    k, n = q.codes.shape
    meta = {_INSERTED_BY: pass_name}
    codes = _add_initializer(graph, f"{base}_nf4", ir.Tensor(q.codes, dtype=ir.DataType.UINT4))
    levels = _add_initializer(graph, f"{base}_nf4_levels", ir.Tensor(np.array(nf4_levels())))
    scale = _add_initializer(graph, f"{base}_nf4_absmax", ir.Tensor(q.scale.reshape(k // block, 1, n)))
    blocked = _add_initializer(graph, f"{base}_nf4_blocked", ir.Tensor(np.array([k // block, block, n], np.int64)))
    flat = _add_initializer(graph, f"{base}_nf4_shape", ir.Tensor(np.array([k, n], np.int64)))
    cast = ir.Node("", "Cast", [codes], attributes=[ir.AttrInt64("to", ir.DataType.INT32)], name=f"{base}_nf4_idx",
                   metadata_props=meta)
    gather = ir.Node("", "Gather", [levels, cast.outputs[0]], name=f"{base}_nf4_lookup", metadata_props=meta)
    shaped = ir.Node("", "Reshape", [gather.outputs[0], blocked], name=f"{base}_nf4_blocks", metadata_props=meta)
    scaled = ir.Node("", "Mul", [shaped.outputs[0], scale], name=f"{base}_nf4_scaled", metadata_props=meta)
    out = ir.Node("", "Reshape", [scaled.outputs[0], flat], name=f"{base}_dq", metadata_props=meta)
    for node in (cast, gather, shaped, scaled):
        node.outputs[0].name = node.name
        graph.insert_before(first_user, node)
    return _finish(graph, out, first_user, f"{base}_dq", ir.Shape([k, n]))


def _divide_input(graph: ir.Graph, node: ir.Node, scales: np.ndarray, pass_name: str) -> None:
    """``node(x, ...) -> node(Mul(x, 1/s), ...)``: AWQ's activation side."""
    x = node.inputs[0]
    if x is None:
        return
    base = node.name or x.name or "awq"
    inverse = _add_initializer(graph, f"{base}_awq_inv_scale", ir.Tensor((1.0 / scales).astype(np.float32)))
    mul = ir.Node("", "Mul", [x, inverse], name=f"{base}_awq", metadata_props={_INSERTED_BY: pass_name})
    mul.outputs[0].name = f"{base}_awq"
    mul.outputs[0].type = x.type
    mul.outputs[0].shape = x.shape
    graph.insert_before(node, mul)
    node.replace_input_with(0, mul.outputs[0])


def _weight_input(node: ir.Node) -> int | None:
    """The index of the [K, N] weight input of a MatMul or a Gemm with transB=0, else None."""
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "MatMul" and len(node.inputs) == 2:
        return 1
    if node.op_type == "Gemm" and len(node.inputs) >= 2 and node.attributes.get_int("transB", 0) == 0:
        return 1
    return None


def _gather_table(node: ir.Node) -> int | None:
    """0 for ``Gather(table, ids)`` along axis 0 (an embedding lookup), else None."""
    if node.op_type == "Gather" and node.domain in ("", "ai.onnx") and node.attributes.get_int("axis", 0) == 0:
        return 0
    return None


def opset_ready(model: ir.Model, pass_name: str) -> bool:
    """Whether ``model`` can take blocked DequantizeLinear; if not, says why (a warning) and the pass
    leaves the model unchanged."""
    problem = opset_problem(model)
    if problem is not None:
        logger.warning("%s: left the model unchanged: %s", pass_name, problem)
    return problem is None


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


def raise_opset(model: ir.Model) -> None:
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
