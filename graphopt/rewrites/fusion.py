"""Output-preserving fusions: standard ONNX ops, and onnxruntime's contrib kernels."""

from __future__ import annotations

import logging

import onnx_ir as ir
from onnxscript import rewriter
from onnxscript.rewriter.rules import common as rules

from graphopt.passes import GraphoptPass, PassSettings, register_pass

__all__ = ["FuseForOnnxruntimePass", "FuseStandardOpsPass"]

logger = logging.getLogger(__name__)

_STANDARD_RULES = (
    rules.fuse_batchnorm_into_conv_rule,
    rules.fuse_batchnorm_into_conv_transpose_rule,
    rules.fuse_batchnorm_into_gemm_rule,
    rules.fuse_pad_into_conv_rule,
    rules.normalize_pad_format_conv_rule,
    rules.successive_relu_rule,
    rules.successive_clip_rule,
    rules.successive_clip_relu_rule,
    rules.successive_relu_clip_rule,
    rules.min_min_rule,
    rules.max_max_rule,
    rules.min_max_rule,
    rules.max_min_rule,
    rules.remove_optional_bias_from_conv_rule,
    rules.remove_optional_bias_from_gemm_rule,
)


def _layer_norm_rules() -> list[rewriter.RewriteRule]:
    from onnxscript.rewriter.rules.fusion._layer_norm import layer_normalization_rules

    return list(layer_normalization_rules)


def _default_opset(model: ir.Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))


@register_pass
class FuseStandardOpsPass(GraphoptPass[PassSettings]):
    """Fuse op sequences into fewer standard ONNX ops.

    ``BatchNormalization(Conv(x, W, b)) -> Conv(x, W*s, (b-mean)*s+beta)`` with ``s = gamma/sqrt(var+eps)``,
    ``Conv(Pad(x)) -> Conv(x, pads)``, ``Relu(Relu(x)) -> Relu(x)``, ``Min(Max(x, a), b) -> Clip(x, a, b)``,
    and (opset >= 17) ``(x - mean(x)) / sqrt(var(x) + eps) * g + b -> LayerNormalization(x, g, b)``.
    """

    name = "fuse-standard"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        selected = list(_STANDARD_RULES)
        if _default_opset(model) >= 17:
            selected += _layer_norm_rules()
        result = rewriter.RewritePass(selected)(model)
        return ir.passes.PassResult(model, result.modified)


_TRANSFORMER_MARKERS = frozenset(
    {"Softmax", "ReduceMean", "LayerNormalization", "SimplifiedLayerNormalization", "Erf", "Tanh", "Gelu"}
)


@register_pass
class FuseForOnnxruntimePass(GraphoptPass[PassSettings]):
    """Fuse transformer subgraphs into onnxruntime's contrib kernels (``com.microsoft`` domain).

    ``Softmax(Q·Kᵀ·s + mask)·V -> MultiHeadAttention(Q, K, V, mask)``, ``LayerNorm(x + r) -> SkipLayerNormalization``,
    ``x·Φ(x) -> Gelu(x)``, ``Add(MatMul) + Gelu -> BiasGelu``, rotary embeddings and RMSNorm likewise.
    The result runs only on onnxruntime; use the ``portable`` recipe for other runtimes.
    """

    name = "fuse-ort"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnxscript.rewriter.ort_fusions import optimize_for_ort

        ops = {node.op_type for node in model.graph.all_nodes()}
        if "MatMul" not in ops or not ops & _TRANSFORMER_MARKERS:
            # The fusions only match transformer subgraphs; on other graphs they cost seconds.
            return ir.passes.PassResult(model, False)
        before = _fingerprint(model)
        candidate = model.clone()  # tensors are shared, not copied
        _, counts = optimize_for_ort(candidate)
        if _fingerprint(candidate) == before:
            return ir.passes.PassResult(model, False)
        problem = _onnxruntime_rejects(candidate)
        if problem:
            # onnxscript's fusions occasionally emit a graph onnxruntime cannot load (e.g. a fused
            # MultiHeadAttention feeding a rank-2 Gemm in GPT-2 dynamo exports): keep the original.
            logger.warning("fuse-ort: fusions not applied, onnxruntime rejects the fused graph: %s", problem)
            return ir.passes.PassResult(model, False)
        logger.info("fuse-ort: %s", {k: v for k, v in counts.items() if v})
        model.graph = candidate.graph
        model.functions.clear()
        model.functions.update(candidate.functions)
        return ir.passes.PassResult(model, True)


def _onnxruntime_rejects(model: ir.Model) -> str | None:
    from graphopt.errors import GraphoptError
    from graphopt.runtime import make_session

    try:
        make_session(model)
    except GraphoptError as exc:
        return str(exc)
    return None


def _fingerprint(model: ir.Model) -> tuple[tuple[str, str, int, int], ...]:
    return tuple(
        (node.domain, node.op_type, len(node.inputs), len(node.outputs)) for node in model.graph.all_nodes()
    ) + tuple((name, "init", 0, 0) for name in model.graph.initializers)
