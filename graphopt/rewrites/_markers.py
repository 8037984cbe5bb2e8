"""Name prefixes of initializers that rewrites insert, so that other tools can select them.

Adapters (LoRA, NOLA, BitDelta) are named ``graphopt.adapter.<layer>.<proj>.<part>`` and attention gates
``graphopt.gate.<layer>.<part>``; the differentiable executor selects trainable parameters by these prefixes.
"""

from __future__ import annotations

__all__ = ["ADAPTER_PREFIX", "FROZEN_PARTS", "GATE_PREFIX", "INSERTED_BY_KEY", "is_adapter", "is_gate", "is_trainable"]

ADAPTER_PREFIX = "graphopt.adapter."
GATE_PREFIX = "graphopt.gate."
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


def is_trainable(name: str) -> bool:
    """True for an inserted adapter or gate parameter that fine-tuning updates."""
    return (is_adapter(name) or is_gate(name)) and name.rsplit(".", 1)[-1] not in FROZEN_PARTS
