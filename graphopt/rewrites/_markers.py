"""Name prefixes of initializers that rewrites insert, so that other tools can select them.

Adapters (LoRA, NOLA, BitDelta) are named ``graphopt.adapter.<layer>.<proj>.<part>``, attention gates
``graphopt.gate.<layer>.<part>`` and trainable clipped-softmax parameters ``graphopt.clip.<layer>.gamma`` /
``.zeta``; the differentiable executor selects trainable parameters by these prefixes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

__all__ = [
    "ADAPTER_PREFIX",
    "CLIP_PREFIX",
    "FROZEN_PARTS",
    "GATE_PREFIX",
    "INSERTED_BY_KEY",
    "MarkedNodes",
    "is_adapter",
    "is_clip",
    "is_gate",
    "is_trainable",
]

ADAPTER_PREFIX = "graphopt.adapter."
GATE_PREFIX = "graphopt.gate."
CLIP_PREFIX = "graphopt.clip."
# metadata_props key set on every node a graphopt rewrite inserts (value: the pass name)
INSERTED_BY_KEY = "graphopt.inserted_by"
# last name parts of inserted initializers that stay frozen in training (NOLA's random bases, BitDelta's signs)
FROZEN_PARTS = frozenset({"basis_A", "basis_B", "sign"})


def is_adapter(name: str) -> bool:
    """True for an initializer inserted by an adapter pass."""
    return name.startswith(ADAPTER_PREFIX)


def is_gate(name: str) -> bool:
    """True for an initializer inserted by the gated-attention pass."""
    return name.startswith(GATE_PREFIX)


def is_clip(name: str) -> bool:
    """True for a clipping parameter (gamma, zeta) inserted by the clipped-softmax pass."""
    return name.startswith(CLIP_PREFIX)


def is_trainable(name: str) -> bool:
    """True for an inserted adapter, gate or clipping parameter that fine-tuning updates."""
    return (is_adapter(name) or is_gate(name) or is_clip(name)) and name.rsplit(".", 1)[-1] not in FROZEN_PARTS


class MarkedNodes:
    """Builds nodes named ``<prefix><op>_<n>`` and marked with the inserting pass, for insertion into a graph."""

    def __init__(self, pass_name: str, prefix: str) -> None:
        self.pass_name, self.prefix = pass_name, prefix
        self.nodes: list[ir.Node] = []

    def op(self, op_type: str, inputs: list[ir.Value | None], **attributes: Any) -> ir.Value:
        name = f"{self.prefix}{op_type}_{len(self.nodes)}"
        node = ir.node(op_type, inputs, attributes=attributes or None, name=name,
                       metadata_props={INSERTED_BY_KEY: self.pass_name})
        node.outputs[0].name = name
        self.nodes.append(node)
        return node.outputs[0]

    def const(self, array: np.ndarray) -> ir.Value:
        return self.op("Constant", [], value=ir.tensor(array))
