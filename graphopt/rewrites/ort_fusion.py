"""Fusions into onnxruntime's contrib kernels (``com.microsoft``), by family, each one guarded."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from graphopt.passes import GraphoptPass, PassSettings, register_pass, setting

__all__ = ["FuseForOnnxruntimePass", "FuseForOnnxruntimeSettings"]

logger = logging.getLogger(__name__)

_TRANSFORMER_MARKERS = frozenset(
    {"Softmax", "ReduceMean", "LayerNormalization", "SimplifiedLayerNormalization", "Erf", "Tanh", "Gelu"}
)


@dataclasses.dataclass(frozen=True)
class FuseForOnnxruntimeSettings(PassSettings):
    attention: bool = setting(True, "fuse attention (SDPA, MultiHeadAttention, Attention, GroupQueryAttention)")
    normalization: bool = setting(True, "fuse residual + norm (SkipLayerNormalization, RMSNorm variants)")
    gelu: bool = setting(True, "fuse GELU forms and their bias (Gelu, BiasGelu)")
    rotary: bool = setting(True, "fuse rotary embeddings and their cos/sin caches")
    require_attention: bool = setting(
        True,
        "keep the fusions only when attention was fused: onnxruntime finds the others itself when it "
        "loads the graph, and kept without attention they measured 1.05-1.11x the original's latency "
        "(bench/results/optimize_vs_peers.md, graphopt-all-fusions)",
    )

    @property
    def families(self) -> set[str]:
        return {name for name in _FAMILIES if getattr(self, name)}


_FAMILIES = ("attention", "normalization", "gelu", "rotary")
_ATTENTION_FUSIONS = ("sdpa", "gqa", "mha1", "mha2", "attention")


@register_pass
class FuseForOnnxruntimePass(GraphoptPass[FuseForOnnxruntimeSettings]):
    """Fuse transformer subgraphs into onnxruntime's contrib kernels (``com.microsoft`` domain).

    ``Softmax(Q·Kᵀ·s + mask)·V -> MultiHeadAttention(Q, K, V, mask)`` (and packed ``Attention``),
    ``LayerNorm(x + r) -> SkipLayerNormalization(x, r)``, ``x·Φ(x) -> Gelu(x)``,
    ``Gelu(x + b) -> BiasGelu(x, b)``, rotary embeddings and RMSNorm likewise.

    The fused graph must load in onnxruntime, else the model is left unchanged (onnxscript 0.7.2
    fuses GPT-2 dynamo attention into a MultiHeadAttention whose rank-3 output feeds a rank-2 Gemm);
    with ``require_attention=False`` the pass then retries without the attention family. By
    default the fusions are kept only when attention was fused (see ``bench/optimize_vs_peers.py``:
    the other fusions alone tie with or trail onnxruntime's own load-time fusions). The result runs
    only on onnxruntime; the ``portable`` recipe leaves this pass out.
    """

    name = "fuse-ort"
    Settings = FuseForOnnxruntimeSettings

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        ops = {node.op_type for node in model.graph.all_nodes()}
        if "MatMul" not in ops or not ops & _TRANSFORMER_MARKERS:
            # The fusions only match transformer subgraphs; on other graphs they cost seconds.
            return ir.passes.PassResult(model, False)
        families = self.settings.families
        if self.settings.require_attention and "attention" not in families:
            return ir.passes.PassResult(model, False)
        attempts = [families]
        if "attention" in families and len(families) > 1 and not self.settings.require_attention:
            attempts.append(families - {"attention"})
        before = _fingerprint(model)
        for attempt in attempts:
            candidate = model.clone()  # tensors are shared, not copied
            counts = _fuse(candidate, attempt)
            if _fingerprint(candidate) == before:
                return ir.passes.PassResult(model, False)
            if self.settings.require_attention and not any(counts.get(k) for k in _ATTENTION_FUSIONS):
                logger.info("fuse-ort: no attention fused, so no fusion kept (%s)", _nonzero(counts))
                return ir.passes.PassResult(model, False)
            problem = _onnxruntime_rejects(candidate)
            if problem is None:
                logger.info("fuse-ort: %s", _nonzero(counts))
                model.graph = candidate.graph
                model.functions.clear()
                model.functions.update(candidate.functions)
                return ir.passes.PassResult(model, True)
            logger.warning("fuse-ort: onnxruntime rejects the graph fused with %s: %s", sorted(attempt), problem)
        logger.warning("fuse-ort: no fusion applied")
        return ir.passes.PassResult(model, False)


def _nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}


def _fusions() -> list[tuple[str, str, Callable[..., int], dict[str, Any]]]:
    """(family, name, fusion, options) in the order onnxscript's ``fuse_xformers`` applies them."""
    from onnxscript.rewriter.ort_fusions import _core as f

    return [
        ("gelu", "erf_gelu", f.fuse_erfgelu, {}),
        ("normalization", "rms_normalization", f.fuse_rms_normalization, {}),
        ("normalization", "skip_layer_normalization", f.fuse_skip_layer_normalization, {}),
        ("normalization", "skip_rms_normalization", f.fuse_skip_rms_normalization, {}),
        ("rotary", "rotary_embedding", f.fuse_rotary_embedding, {}),
        ("rotary", "cos_sin_cache", f.fuse_cos_sin_cache, {}),
        ("rotary", "partial_rotary_embedding", f.fuse_partial_rotary_embedding, {}),
        ("attention", "sdpa", f.fuse_sdpa, {"apply_shape_inference": True}),
        ("attention", "gqa", f.fuse_gqa, {}),
        ("attention", "packed_qkv_for_gqa", f.fuse_qkv_gqa, {}),
        ("attention", "mha1", f.fuse_mha1, {}),
        ("attention", "mha2", f.fuse_mha2, {}),
        ("attention", "mha_scale", f.fuse_mha_scale, {}),
        ("attention", "mha_bias", f.fuse_mha_bias, {}),
        ("attention", "attention", f.fuse_attention, {}),
        ("gelu", "gelu", f.fuse_gelu, {}),
        ("gelu", "bias_gelu", f.fuse_bias_gelu, {}),
        ("attention", "sdpa_via_mha", f.replace_sdpa_by_mha, {}),
    ]


def _fuse(model: ir.Model, families: set[str]) -> dict[str, int]:
    """onnxscript's ``optimize_for_ort`` restricted to ``families``."""
    from onnxscript.optimizer import optimize
    from onnxscript.rewriter import rewrite
    from onnxscript.rewriter.ort_fusions import _core as f
    from onnxscript.rewriter.rules.common import gemm_to_matmul_add_rule

    rewrite(model, [gemm_to_matmul_add_rule])
    _prepare(model)
    counts: dict[str, int] = {}
    for family, name, fusion, options in _fusions():
        if family not in families:
            continue
        if name in {"mha_bias", "attention"} and not (counts.get("mha1") or counts.get("mha2")):
            continue  # these build on a MultiHeadAttention fused just before
        counts[name] = fusion(model, **options)
        if name == "cos_sin_cache":
            common_passes.CommonSubexpressionEliminationPass()(model)
    optimize(model)
    rewrite(model, f.ORT_PATTERN_REWRITE_RULES)
    common_passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=1)(model)
    common_passes.RemoveInitializersFromInputsPass()(model)
    common_passes.ShapeInferencePass()(model)
    return counts


def _prepare(model: ir.Model) -> None:
    """What onnxscript's ``_pre_optimize`` does before fusing (shape inference, shape-arithmetic
    rules, folding), with constant folding instead of its full optimizer run twice: the cleanup
    recipe already did the rest. Same fusions on every export in the tests, about half the time."""
    import onnxscript.optimizer
    from onnxscript.rewriter.ort_fusions import shape_optimization

    common_passes.ShapeInferencePass()(model)
    onnxscript.optimizer.fold_constants(model)
    shape_optimization.rules.apply_to_model(model)
    onnxscript.optimizer.fold_constants(model)
    common_passes.RemoveUnusedNodesPass()(model)


def _onnxruntime_rejects(model: ir.Model) -> str | None:
    from graphopt.errors import GraphoptError
    from graphopt.runtime import make_session

    try:
        make_session(model)
    except GraphoptError as exc:
        return str(exc)
    return None


def _fingerprint(model: ir.Model) -> tuple[tuple[str, str, int, int], ...]:
    nodes = tuple((n.domain, n.op_type, len(n.inputs), len(n.outputs)) for n in model.graph.all_nodes())
    return nodes + tuple((name, "initializer", 0, 0) for name in model.graph.initializers)
