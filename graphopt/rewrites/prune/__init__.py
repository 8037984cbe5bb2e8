"""Pruning at the ONNX level: attention heads, MLP neurons, hidden channels, layers, conv channels, masked weights.

Passes: ``prune-heads``, ``prune-mlp``, ``prune-hidden``, ``prune-channels`` (settings: ``fraction``, ``importance``,
``calibration``, ``seed``), ``prune-layers`` (``count``, ...), ``prune-key-channels`` (ThinK) and
``prune-unstructured`` (``sparsity`` or an N:M ``pattern``). The dependency analysis (which tensors shrink together, or
why a block cannot be pruned) is :func:`analyze`, and :func:`hidden_groups` for the residual stream; the facade
is :mod:`graphopt.prune`.
"""

from graphopt.rewrites.prune._dependency import HeadGroup, LayerGroup, MlpGroup, PruneAnalysis, analyze
from graphopt.rewrites.prune._importance import METHODS
from graphopt.rewrites.prune.channels import ChannelGroup, PruneChannelsPass, channel_groups, prune_channel_group
from graphopt.rewrites.prune.heads import PruneHeadsPass, prune_head_group
from graphopt.rewrites.prune.hidden import HiddenGroup, PruneHiddenPass, hidden_groups, prune_hidden_group
from graphopt.rewrites.prune.layers import PruneLayersPass, drop_layers
from graphopt.rewrites.prune.mlp import PruneMlpPass, prune_mlp_group
from graphopt.rewrites.prune.think import PruneKeyChannelsPass, prune_key_channels
from graphopt.rewrites.prune.unstructured import PruneUnstructuredPass, mask_weight

__all__ = [
    "METHODS",
    "ChannelGroup",
    "HeadGroup",
    "HiddenGroup",
    "LayerGroup",
    "MlpGroup",
    "PruneAnalysis",
    "PruneChannelsPass",
    "PruneHeadsPass",
    "PruneHiddenPass",
    "PruneKeyChannelsPass",
    "PruneLayersPass",
    "PruneMlpPass",
    "PruneUnstructuredPass",
    "analyze",
    "channel_groups",
    "drop_layers",
    "hidden_groups",
    "mask_weight",
    "prune_channel_group",
    "prune_head_group",
    "prune_hidden_group",
    "prune_key_channels",
    "prune_mlp_group",
]
