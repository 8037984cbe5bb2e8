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

__all__ = [
    "DeduplicatePass",
    "EliminateNoOpsPass",
    "FoldConstantsPass",
    "FuseForOnnxruntimePass",
    "FuseStandardOpsPass",
    "RemoveDeadCodePass",
    "SimplifyShapesPass",
]
