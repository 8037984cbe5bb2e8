"""Rewrite passes, one module per family. Importing a module registers its passes."""

from graphopt.rewrites.cleanup import (
    DeduplicatePass,
    EliminateNoOpsPass,
    FoldConstantsPass,
    RemoveDeadCodePass,
    SimplifyShapesPass,
)
from graphopt.rewrites.fusion import FuseStandardOpsPass
from graphopt.rewrites.ort_fusion import FuseForOnnxruntimePass
from graphopt.rewrites.quantize_weights import LowerToMatMulNBitsPass, QuantizeWeightsPass

__all__ = [
    "DeduplicatePass",
    "EliminateNoOpsPass",
    "FoldConstantsPass",
    "FuseForOnnxruntimePass",
    "FuseStandardOpsPass",
    "LowerToMatMulNBitsPass",
    "QuantizeWeightsPass",
    "RemoveDeadCodePass",
    "SimplifyShapesPass",
]
