"""Model analysis: signature, op histogram, parameters, MAC/FLOP estimates and recognised blocks.

``summarize(model, shapes=...)`` returns a :class:`ModelSummary` (frozen dataclasses, ``to_dict()``
for JSON). The model is never modified: costs and blocks are computed on a copy with concrete
input shapes. Counting rules are documented in :mod:`graphopt.analysis._cost`, block patterns in
:mod:`graphopt.analysis._blocks`.
"""

from graphopt.analysis._attention import AttentionBlock
from graphopt.analysis._blocks import ConvStage, MlpBlock
from graphopt.analysis._graph import Projection
from graphopt.analysis._shapes import DEFAULT_BATCH, DEFAULT_SEQUENCE, concrete_copy
from graphopt.analysis._summary import CostSummary, ModelSummary, TensorInfo, summarize

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_SEQUENCE",
    "AttentionBlock",
    "ConvStage",
    "CostSummary",
    "MlpBlock",
    "ModelSummary",
    "Projection",
    "TensorInfo",
    "concrete_copy",
    "summarize",
]
