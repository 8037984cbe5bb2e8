"""W8A8 with dynamic activation quantization: int8 per-channel weights, activations quantized at run time.

``quantize-dynamic`` (:class:`QuantizeDynamicPass`) needs no calibration data. With ``(x_q, s_x, z_x)
= DynamicQuantizeLinear(x)`` (uint8, range of each call's tensor) and ``W_q, s_w`` as in
:func:`graphopt.rewrites.quantize_activations.quantize_per_channel`, it emits one of two forms:

* ``form="qdq"`` (the reference): ``MatMul(x, W) -> MatMul(DequantizeLinear(x_q, s_x, z_x),
  DequantizeLinear(W_q, s_w, axis=1))``;
* ``form="integer"`` (the default, standard ONNX integer ops): ``MatMul(x, W) ->
  Mul(Cast<float>(MatMulInteger(x_q, W_q, z_x)), Mul(s_x, s_w))``, which onnxruntime's CPU fusion
  turns into ``DynamicQuantizeMatMul``.

Both compute the same values (up to float summation order). With ``embeddings`` (the default), large
Gather tables are stored as int8 per column as well (see ``quantize_gathers``). Only MatMuls with a constant float
weight are rewritten; a tensor read by several of them is quantized once. The inserted MatMul
(``qdq``) reads a DequantizeLinear output, so the pass never matches its own output.
"""

from __future__ import annotations

import dataclasses
import logging

import onnx_ir as ir

from graphopt.errors import UsageError
from graphopt.passes import GraphoptPass, PassSettings, register_pass, setting
from graphopt.rewrites.quantize_activations import INSERTED_BY, quantize_gathers, quantize_per_channel, weight_sites
from graphopt.rewrites.quantize_weights import _add_initializer

__all__ = ["QuantizeDynamicPass", "QuantizeDynamicSettings"]

logger = logging.getLogger(__name__)

_FORMS = ("integer", "qdq")


@dataclasses.dataclass(frozen=True)
class QuantizeDynamicSettings(PassSettings):
    form: str = setting("integer", "integer (MatMulInteger, fast) or qdq (reference DequantizeLinear)", search=_FORMS)
    per_channel: bool = setting(True, "one weight scale per output channel (else one per tensor)")
    exclude: tuple[str, ...] = setting((), "node or weight names kept in float")
    min_elements: int = setting(0, "leave weights with fewer elements in float")
    embeddings: bool = setting(True, "also store Gather tables (embeddings) of >= 65536 elements as int8 per column")

    def validate(self) -> None:
        if self.form not in _FORMS:
            raise UsageError(f"quantize-dynamic: form must be one of {', '.join(_FORMS)}, not {self.form!r}")
        if self.min_elements < 0:
            raise UsageError("quantize-dynamic: min_elements must not be negative")
        if isinstance(self.exclude, str) or not all(isinstance(s, str) for s in self.exclude):
            raise UsageError("quantize-dynamic: exclude must be a list of names")


@register_pass
class QuantizeDynamicPass(GraphoptPass[QuantizeDynamicSettings]):
    """Dynamic W8A8 (see the module docstring)."""

    name = "quantize-dynamic"
    Settings = QuantizeDynamicSettings
    output_preserving = False

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        sites = [
            site
            for site in weight_sites(graph, exclude=self.settings.exclude, min_elements=self.settings.min_elements)
            if site.node.op_type == "MatMul" and site.node.inputs[0] is not None
            and site.node.inputs[0].dtype in (ir.DataType.FLOAT, None)
        ]
        gathers = 0
        if self.settings.embeddings:
            gathers = quantize_gathers(graph, inserted_by=self.name, exclude=self.settings.exclude)
        if not sites:
            return ir.passes.PassResult(model, gathers > 0)
        quantized: dict[int, tuple[ir.Value, ir.Value, ir.Value]] = {}
        for site in sites:
            x = site.node.inputs[0]
            assert x is not None
            if id(x) not in quantized:
                quantized[id(x)] = self._dynamic_quantize(graph, x)
            xq, xs, xz = quantized[id(x)]
            assert site.weight.const_value is not None
            w = site.weight.const_value.numpy()
            if self.settings.per_channel:
                q, scale = quantize_per_channel(w, 1)
            else:
                q, scale = quantize_per_channel(w.reshape(-1, 1), 1)
                q = q.reshape(w.shape)
            base = site.weight.name or "weight"
            wq = _add_initializer(graph, f"{base}_w8", ir.Tensor(q))
            ws = _add_initializer(graph, f"{base}_w8_scale", ir.Tensor(scale))
            if self.settings.form == "qdq":
                self._qdq(graph, site.node, xq, xs, xz, wq, ws, w.shape)
            else:
                self._integer(graph, site.node, xq, xs, xz, wq, ws)
            if not site.weight.uses() and not site.weight.is_graph_output() and site.weight.name:
                graph.initializers.pop(site.weight.name)
        graph.sort()
        logger.info("quantize-dynamic: %d MatMuls (%s form)", len(sites), self.settings.form)
        return ir.passes.PassResult(model, True)

    def _node(self, op: str, inputs: list[ir.Value | None], name: str, outputs: int = 1, **attrs: int) -> ir.Node:
        node = ir.Node(
            "", op, inputs, attributes=[ir.AttrInt64(k, v) for k, v in attrs.items()], name=name,
            num_outputs=outputs, metadata_props={INSERTED_BY: self.name},
        )
        for i, out in enumerate(node.outputs):
            out.name = f"{name}_{i}" if len(node.outputs) > 1 else name
        return node

    def _dynamic_quantize(self, graph: ir.Graph, x: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
        node = self._node("DynamicQuantizeLinear", [x], f"{x.name}_dq8", outputs=3)
        xq, xs, xz = node.outputs
        xq.dtype, xq.shape = ir.DataType.UINT8, x.shape
        xs.dtype, xs.shape = ir.DataType.FLOAT, ir.Shape([])
        xz.dtype, xz.shape = ir.DataType.UINT8, ir.Shape([])
        graph.append(node)
        return xq, xs, xz

    def _qdq(
        self, graph: ir.Graph, matmul: ir.Node, xq: ir.Value, xs: ir.Value, xz: ir.Value,
        wq: ir.Value, ws: ir.Value, shape: tuple[int, ...],
    ) -> None:
        base = matmul.name or (wq.name or "matmul")
        axis = {"axis": 1} if ws.shape is not None and ws.shape.rank() == 1 and ws.shape[0] != 1 else {}
        dx = self._node("DequantizeLinear", [xq, xs, xz], f"{base}_x_dq")
        dx.outputs[0].dtype = ir.DataType.FLOAT
        dw = self._node("DequantizeLinear", [wq, ws], f"{base}_w_dq", **axis)
        dw.outputs[0].dtype, dw.outputs[0].shape = ir.DataType.FLOAT, ir.Shape(shape)
        graph.extend([dx, dw])
        matmul.replace_input_with(0, dx.outputs[0])
        matmul.replace_input_with(1, dw.outputs[0])

    def _integer(
        self, graph: ir.Graph, matmul: ir.Node, xq: ir.Value, xs: ir.Value, xz: ir.Value, wq: ir.Value, ws: ir.Value
    ) -> None:
        base = matmul.name or (wq.name or "matmul")
        mm = self._node("MatMulInteger", [xq, wq, xz], f"{base}_i8")
        mm.outputs[0].dtype = ir.DataType.INT32
        cast = self._node("Cast", [mm.outputs[0]], f"{base}_i8_float", to=ir.DataType.FLOAT)
        cast.outputs[0].dtype = ir.DataType.FLOAT
        scale = self._node("Mul", [xs, ws], f"{base}_i8_scale")
        scale.outputs[0].dtype = ir.DataType.FLOAT
        out = self._node("Mul", [cast.outputs[0], scale.outputs[0]], f"{base}_i8_out")
        out.outputs[0].type, out.outputs[0].shape = matmul.outputs[0].type, matmul.outputs[0].shape
        ir.convenience.replace_nodes_and_values(
            graph, matmul, [matmul], [mm, cast, scale, out], matmul.outputs, out.outputs
        )

