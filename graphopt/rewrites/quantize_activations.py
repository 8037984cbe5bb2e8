"""Static W8A8: int8 per-channel weights and calibrated 8-bit activations on MatMul / Gemm inputs (QDQ).

``quantize-activations`` (:class:`QuantizeActivationsPass`) emits the standard-ONNX reference graph

    MatMul(x, W) -> MatMul(DequantizeLinear(QuantizeLinear(x, s_x, z_x), s_x, z_x),
                           DequantizeLinear(W_q, s_w, axis=1))

with ``W_q = clip(round(W / s_w), -127, 127)`` int8, ``s_w[n] = max_k |W[k, n]| / 127`` per output
channel, and ``(s_x, z_x)`` from the calibrated range of ``x`` (uint8 asymmetric by default, or
int8 symmetric). Only the inputs of MatMul / Gemm with a constant weight are quantized (optionally
also activation x activation MatMuls, ``quantize_bmm``): LayerNorm, Softmax, GELU and residual Adds
stay float, which is what keeps a transformer accurate. onnxruntime's CPU QDQ fusion turns the
pattern into ``MatMulIntegerToFloat`` (``DynamicQuantizeMatMul``'s static sibling) at load time.
With ``residual``, the residual stream is quantized too, per tensor, as in the W8A8 of Bondarenko et al.
(2023), which quantizes all activations: the inputs of LayerNormalization / RMSNormalization /
SimplifiedLayerNormalization / SkipLayerNormalization and of every residual Add (an Add of two run-time
tensors whose sum reaches a normalization, directly or through other such Adds)

    Add(x, y) -> Add(QDQ(x), QDQ(y)),    LayerNormalization(r, g, b) -> LayerNormalization(QDQ(r), g, b)

which is where the outliers of a transformer live (the feed-forward output before its residual Add).
With ``embeddings`` (the default), Gather tables of at least 65536 elements are stored as int8 per
column too (:func:`quantize_gathers`), which is where most of a small transformer's bytes are.

A tensor read by several quantized MatMuls (Q, K, V) gets one QuantizeLinear/DequantizeLinear pair;
its float consumers (the residual Add) keep reading the float tensor. Inserted nodes carry
``graphopt.inserted_by``; their inputs are DequantizeLinear outputs, never constant weights or
un-quantized tensors, so the pass does not match its own output.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from graphopt.errors import UsageError
from graphopt.passes import GraphoptPass, PassSettings, register_pass, setting
from graphopt.rewrites._calibrators import METHODS, RangeCollector, quant_params
from graphopt.rewrites.quantize_weights import _add_initializer

__all__ = [
    "INSERTED_BY",
    "NORMALIZATIONS",
    "QuantizeActivationsPass",
    "QuantizeActivationsSettings",
    "WeightSite",
    "collect_ranges",
    "load_calibration",
    "quantize_gathers",
    "quantize_per_channel",
    "residual_sites",
    "split_holdout",
    "weight_sites",
]

logger = logging.getLogger(__name__)

INSERTED_BY = "graphopt.inserted_by"
_ACTIVATION_TYPES = ("uint8", "int8")
# normalization op -> indices of its stream inputs (the sum of Skip*Normalization's two inputs is normalized)
NORMALIZATIONS: dict[str, tuple[int, ...]] = {
    "LayerNormalization": (0,), "RMSNormalization": (0,), "SimplifiedLayerNormalization": (0,),
    "SkipLayerNormalization": (0, 1), "SkipSimplifiedLayerNormalization": (0, 1),
}


@dataclasses.dataclass(frozen=True)
class WeightSite:
    """A MatMul / Gemm whose weight is a constant float matrix; ``axis`` is the output-channel axis."""

    node: ir.Node
    weight: ir.Value
    axis: int

    @property
    def name(self) -> str:
        return self.node.name or (self.weight.name or "")


def weight_sites(graph: ir.Graph, *, exclude: Sequence[str] = (), min_elements: int = 0) -> list[WeightSite]:
    """MatMul(x, W) and Gemm(x, W) nodes with a constant float32 2-D ``W`` that is no graph input,
    leaving out nodes or weights whose name is in ``exclude``."""
    sites = []
    for node in graph:
        if node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
            continue
        if node.op_type == "MatMul":
            axis = 1
        elif node.op_type == "Gemm" and node.attributes.get_int("transA", 0) == 0:
            axis = 0 if node.attributes.get_int("transB", 0) else 1
        else:
            continue
        weight = node.inputs[1]
        if weight is None or weight.const_value is None or weight.is_graph_input():
            continue
        if weight.const_value.dtype != ir.DataType.FLOAT or len(weight.const_value.shape) != 2:
            continue
        if weight.const_value.size < min_elements:
            continue
        if (node.name and node.name in exclude) or (weight.name and weight.name in exclude):
            continue
        sites.append(WeightSite(node, weight, axis))
    return sites


def residual_sites(graph: ir.Graph, *, exclude: Sequence[str] = ()) -> list[tuple[ir.Node, int]]:
    """``(node, input index)`` of the residual stream: the stream inputs of normalizations
    (:data:`NORMALIZATIONS`) and both inputs of residual Adds, i.e. Adds of two run-time tensors whose sum
    is a normalization's stream input or an input of another residual Add (found backwards from the
    normalizations, so a bias Add or the attention mask's Add is never one). Nodes named in ``exclude`` are
    left out, and so are inputs that are not float activations (or are already dequantized)."""
    found: list[tuple[ir.Node, int]] = []
    seen: set[int] = set()
    pending: list[ir.Value] = []
    for node in graph:
        indices = NORMALIZATIONS.get(node.op_type)
        if indices is None or (node.name and node.name in exclude):
            continue
        for index in indices:
            if index < len(node.inputs) and node.inputs[index] is not None:
                found.append((node, index))
                pending.append(node.inputs[index])  # type: ignore[arg-type]
    while pending:
        add = pending.pop().producer()
        if add is None or add.op_type != "Add" or add.domain not in ("", "ai.onnx") or id(add) in seen:
            continue
        seen.add(id(add))
        if (add.name and add.name in exclude) or not all(v is not None and _is_runtime(v) for v in add.inputs):
            continue
        for index, value in enumerate(add.inputs):
            found.append((add, index))
            pending.append(value)  # type: ignore[arg-type]
    return [(node, index) for node, index in found
            if node.inputs[index] is not None and _is_float_activation(node.inputs[index])]  # type: ignore[arg-type]


def quantize_gathers(graph: ir.Graph, *, inserted_by: str, exclude: Sequence[str] = (),
                     min_elements: int = 1 << 16) -> int:
    """Weight-only int8 for embedding tables: ``Gather(T, ids) -> DequantizeLinear(Gather(T_q, ids), s, axis=-1)``
    with ``T [V, D]`` a constant float32 initializer of at least ``min_elements`` and ``s[d] = max_v |T[v, d]| / 127``
    (per column, so the gathered rows dequantize along their last axis). Returns the number of Gathers rewritten."""
    done: dict[str, tuple[ir.Value, ir.Value]] = {}
    count = 0
    for node in list(graph):
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or node.attributes.get_int("axis", 0) != 0:
            continue
        table = node.inputs[0]
        if table is None or table.const_value is None or table.is_graph_input() or not table.name:
            continue
        if table.const_value.dtype != ir.DataType.FLOAT or len(table.const_value.shape) != 2:
            continue
        if table.const_value.size < min_elements or node.name in exclude or table.name in exclude:
            continue
        if table.name not in done:
            q, scale = quantize_per_channel(table.const_value.numpy(), axis=1)
            done[table.name] = (
                _add_initializer(graph, f"{table.name}_w8", ir.Tensor(q)),
                _add_initializer(graph, f"{table.name}_w8_scale", ir.Tensor(scale)),
            )
        codes, scales = done[table.name]
        meta = {INSERTED_BY: inserted_by}
        gather = ir.Node("", "Gather", [codes, node.inputs[1]], attributes=[ir.AttrInt64("axis", 0)],
                         name=f"{node.name or table.name}_q8", metadata_props=dict(meta))
        gather.outputs[0].name = f"{node.outputs[0].name}_q8"
        gather.outputs[0].dtype = ir.DataType.INT8
        dq = ir.Node("", "DequantizeLinear", [gather.outputs[0], scales], attributes=[ir.AttrInt64("axis", -1)],
                     name=f"{node.name or table.name}_dq8", metadata_props=dict(meta))
        dq.outputs[0].type, dq.outputs[0].shape = node.outputs[0].type, node.outputs[0].shape
        ir.convenience.replace_nodes_and_values(graph, node, [node], [gather, dq], node.outputs, dq.outputs)
        if not table.uses() and not table.is_graph_output():
            graph.initializers.pop(table.name)
        count += 1
    return count


def quantize_per_channel(w: np.ndarray, axis: int, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel codes along ``axis``: ``(q int8, scale float32 [channels])`` with
    ``scale = max|w| / (2^(b-1) - 1)`` over the other axis and ``q = clip(round(w / scale))``."""
    qmax = (1 << (bits - 1)) - 1
    w64 = np.asarray(w, dtype=np.float64)
    amax = np.abs(w64).max(axis=1 - axis)
    scale = (amax / qmax).astype(np.float32)
    scale[scale == 0] = 1.0
    shape = (1, -1) if axis == 1 else (-1, 1)
    q = np.clip(np.rint(w64 / scale.astype(np.float64).reshape(shape)), -qmax, qmax).astype(np.int8)
    return q, scale


def load_calibration(model: ir.Model, path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Calibration feeds from an ``.npz`` (keys: graph inputs, samples on axis 0), checked against ``model``."""
    from graphopt.feeds import input_specs, load_feeds

    return load_feeds(path, input_specs(model))


def split_holdout(
    feeds: Mapping[str, np.ndarray], holdout: float
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(calibration, held_out)``: the last ``round(holdout * n)`` samples are held out."""
    if not 0 <= holdout < 1:
        raise UsageError(f"holdout must lie in [0, 1), not {holdout}")
    n = min(int(v.shape[0]) for v in feeds.values())
    held = round(holdout * n)
    if holdout and (held < 1 or n - held < 1):
        raise UsageError(f"{n} calibration samples are too few to hold out {holdout:.0%} of them")
    cut = n - held
    return {k: v[:cut] for k, v in feeds.items()}, {k: v[cut:] for k, v in feeds.items()}


def collect_ranges(
    model: ir.Model,
    feeds: Mapping[str, np.ndarray],
    names: Sequence[str],
    *,
    batch_size: int = 8,
    max_abs: float = 1e6,
    progress: Callable[[str], None] | None = None,
) -> dict[str, RangeCollector]:
    """Stream the named activations of ``model`` on ``feeds`` into one :class:`RangeCollector` each."""
    from graphopt.calibration import iter_activations

    collectors = {name: RangeCollector(max_abs=max_abs) for name in names}
    if not names:
        return collectors
    for index, batch in enumerate(iter_activations(model, feeds, list(names), batch_size=batch_size)):
        for name, array in batch.items():
            collectors[name].update(array)
        if progress is not None:
            progress(f"calibration batch {index + 1}")
    ignored = {n: c.ignored for n, c in collectors.items() if c.ignored}
    if ignored:
        logger.info("calibration ignored non-finite or huge values in %d tensors", len(ignored))
    return collectors


@dataclasses.dataclass(frozen=True)
class QuantizeActivationsSettings(PassSettings):
    calib: str = setting("", "calibration feeds (.npz keyed by input name, samples on axis 0)")
    method: str = setting("percentile", "calibration method", search=METHODS)
    percentile: float = setting(99.999, "percentile of the 'percentile' method", search=(99.9, 99.99, 99.999))
    activation_type: str = setting("uint8", "uint8 (asymmetric) or int8 (symmetric) activations",
                                   search=_ACTIVATION_TYPES)
    quantize_bmm: bool = setting(False, "also quantize activation x activation MatMuls (attention)")
    exclude: tuple[str, ...] = setting((), "node or weight names kept in float (accuracy fallback)")
    holdout: float = setting(0.0, "fraction of the calibration samples (the last ones) not used for ranges")
    batch_size: int = setting(8, "calibration batch size")
    max_abs: float = setting(1e6, "calibration ignores values with |x| above this (masks of -inf / -3.4e38)")
    min_elements: int = setting(0, "leave weights with fewer elements in float")
    embeddings: bool = setting(True, "also store Gather tables (embeddings) of >= 65536 elements as int8 per column")
    residual: bool = setting(False, "also quantize the residual stream: the inputs of residual Adds and of "
                             "LayerNormalization / SkipLayerNorm, per tensor, as in the paper's W8A8",
                             search=(False, True))

    def validate(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"quantize-activations: method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.activation_type not in _ACTIVATION_TYPES:
            raise UsageError(f"quantize-activations: activation_type must be uint8 or int8, not {self.activation_type}")
        if not 50 < self.percentile <= 100:
            raise UsageError("quantize-activations: percentile must lie in (50, 100]")
        if not 0 <= self.holdout < 1:
            raise UsageError("quantize-activations: holdout must lie in [0, 1)")
        if self.batch_size < 1 or self.max_abs <= 0 or self.min_elements < 0:
            raise UsageError("quantize-activations: batch_size and max_abs must be positive, min_elements >= 0")
        if isinstance(self.exclude, str) or not all(isinstance(s, str) for s in self.exclude):
            raise UsageError("quantize-activations: exclude must be a list of names")


@register_pass
class QuantizeActivationsPass(GraphoptPass[QuantizeActivationsSettings]):
    """Static W8A8 QDQ (see the module docstring).

    Calibration data come from the ``calib`` file, or in memory: ``feeds=`` (an ``.npz``-like
    mapping) or ``collectors=`` (ranges already collected by :func:`collect_ranges` on the float
    model, which the accuracy fallback reuses across trials).
    """

    name = "quantize-activations"
    Settings = QuantizeActivationsSettings
    output_preserving = False

    def __init__(
        self,
        *,
        feeds: Mapping[str, np.ndarray] | None = None,
        collectors: Mapping[str, RangeCollector] | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(**settings)
        self._feeds = feeds
        self._collectors = collectors

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        s = self.settings
        graph = model.graph
        sites = weight_sites(graph, exclude=s.exclude, min_elements=s.min_elements)
        consumers: dict[str, list[tuple[ir.Node, int]]] = {}
        values: dict[str, ir.Value] = {}
        for site in sites:
            x = site.node.inputs[0]
            if x is not None and x.name and _is_float_activation(x):
                consumers.setdefault(x.name, []).append((site.node, 0))
                values[x.name] = x
        if s.quantize_bmm:
            for node in graph:
                if node.op_type != "MatMul" or node.name in s.exclude or len(node.inputs) != 2:
                    continue
                if any(v is None or not _is_float_activation(v) for v in node.inputs):
                    continue
                for index, v in enumerate(node.inputs):
                    assert v is not None and v.name
                    consumers.setdefault(v.name, []).append((node, index))
                    values[v.name] = v
        gathers = quantize_gathers(graph, inserted_by=self.name, exclude=s.exclude) if s.embeddings else 0
        # after the Gather rewrite, which replaces values: an int8 embedding's output is already dequantized
        stream = residual_sites(graph, exclude=s.exclude) if s.residual else []
        for node, index in stream:
            x = node.inputs[index]
            if x is not None and x.name:
                consumers.setdefault(x.name, []).append((node, index))
                values[x.name] = x
        if not sites and not consumers:
            return ir.passes.PassResult(model, gathers > 0)
        collectors = self._ranges(model, list(consumers))
        symmetric = s.activation_type == "int8"
        for name, users in consumers.items():
            lo, hi = collectors[name].range(s.method, percentile=s.percentile, symmetric=symmetric)
            dq_out = self._insert_qdq(graph, values[name], lo, hi, symmetric)
            for node, index in users:
                node.replace_input_with(index, dq_out)
        done: dict[str, ir.Value] = {}
        for site in sites:
            self._quantize_weight(graph, site, done)
        graph.sort()
        logger.info("quantize-activations: %d weights, %d activations (%d residual-stream inputs)", len(sites),
                    len(consumers), len(stream))
        return ir.passes.PassResult(model, True)

    def _ranges(self, model: ir.Model, names: list[str]) -> Mapping[str, RangeCollector]:
        if self._collectors is not None:
            missing = [n for n in names if n not in self._collectors]
            if not missing:
                return self._collectors
            logger.debug("quantize-activations: %d tensors have no collected range; calibrating", len(missing))
        feeds = self._feeds
        if feeds is None:
            if not self.settings.calib:
                raise UsageError("quantize-activations needs calibration data: set 'calib' to an .npz of feeds")
            feeds = load_calibration(model, self.settings.calib)
        calib, _ = split_holdout(feeds, self.settings.holdout)
        return collect_ranges(model, calib, names, batch_size=self.settings.batch_size, max_abs=self.settings.max_abs)

    def _insert_qdq(self, graph: ir.Graph, x: ir.Value, lo: float, hi: float, symmetric: bool) -> ir.Value:
        scale, zero = quant_params(lo, hi, symmetric=symmetric)
        dtype = np.int8 if symmetric else np.uint8
        base = f"{x.name}_a8"
        s = _add_initializer(graph, f"{base}_scale", ir.Tensor(np.array(scale, dtype=np.float32)))
        z = _add_initializer(graph, f"{base}_zp", ir.Tensor(np.array(zero, dtype=dtype)))
        meta = {INSERTED_BY: self.name}
        q = ir.Node("", "QuantizeLinear", [x, s, z], name=f"{base}_q", metadata_props=dict(meta))
        q.outputs[0].name = f"{base}_q"
        q.outputs[0].dtype = ir.DataType.INT8 if symmetric else ir.DataType.UINT8
        q.outputs[0].shape = x.shape
        dq = ir.Node("", "DequantizeLinear", [q.outputs[0], s, z], name=f"{base}_dq", metadata_props=dict(meta))
        dq.outputs[0].name = f"{base}_dq"
        dq.outputs[0].dtype = ir.DataType.FLOAT
        dq.outputs[0].shape = x.shape
        graph.extend([q, dq])
        return dq.outputs[0]

    def _quantize_weight(self, graph: ir.Graph, site: WeightSite, done: dict[str, ir.Value]) -> None:
        key = f"{site.weight.name}/{site.axis}"
        if key in done:  # a weight shared by several nodes is quantized once
            site.node.replace_input_with(1, done[key])
            return
        assert site.weight.const_value is not None
        w = site.weight.const_value.numpy()
        q, scale = quantize_per_channel(w, site.axis)
        base = site.weight.name or "weight"
        inputs = [
            _add_initializer(graph, f"{base}_w8", ir.Tensor(q)),
            _add_initializer(graph, f"{base}_w8_scale", ir.Tensor(scale)),
        ]
        dq = ir.Node(
            "", "DequantizeLinear", inputs, attributes=[ir.AttrInt64("axis", site.axis)],
            name=f"{base}_w8_dq", metadata_props={INSERTED_BY: self.name},
        )
        dq.outputs[0].name = f"{base}_w8_dq"
        dq.outputs[0].dtype = ir.DataType.FLOAT
        dq.outputs[0].shape = ir.Shape(w.shape)
        graph.append(dq)
        done[key] = dq.outputs[0]
        site.node.replace_input_with(1, dq.outputs[0])
        if not site.weight.uses() and not site.weight.is_graph_output() and site.weight.name:
            graph.initializers.pop(site.weight.name)


def _is_runtime(value: ir.Value) -> bool:
    """Computed at run time (or a graph input): neither an initializer nor a Constant node's output."""
    if value.const_value is not None or value.is_initializer():
        return False
    producer = value.producer()
    return producer is None or producer.op_type != "Constant"


def _is_float_activation(value: ir.Value) -> bool:
    """A float32 tensor computed at run time that is not already dequantized."""
    if value.const_value is not None or value.dtype not in (ir.DataType.FLOAT, None):
        return False
    producer = value.producer()
    return producer is None or producer.op_type != "DequantizeLinear"
