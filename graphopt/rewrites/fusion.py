"""Output-preserving fusions into standard ONNX ops (onnxruntime's kernels: :mod:`.ort_fusion`)."""

from __future__ import annotations

import logging

import onnx_ir as ir
from onnxscript import rewriter
from onnxscript.rewriter.rules import common as rules

from graphopt.passes import GraphoptPass, PassSettings, register_pass

__all__ = ["FuseStandardOpsPass"]

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
