"""Provenance: which passes ran on a model, with which settings, recorded in ``metadata_props``."""

from __future__ import annotations

import json
from typing import Any

import onnx_ir as ir

__all__ = ["PROVENANCE_KEY", "read_provenance", "record_pass"]

PROVENANCE_KEY = "graphopt.provenance"


def read_provenance(model: ir.Model) -> list[dict[str, Any]]:
    """The list of pass records stored in the model (empty if none or unreadable)."""
    raw = model.metadata_props.get(PROVENANCE_KEY)
    if not raw:
        return []
    try:
        records = json.loads(raw)
    except json.JSONDecodeError:
        return []
    return records if isinstance(records, list) else []


def record_pass(model: ir.Model, pass_name: str, settings: dict[str, Any]) -> None:
    """Append one record ``{"pass", "settings", "graphopt"}`` to the model's provenance."""
    from graphopt import __version__

    records = read_provenance(model)
    records.append({"pass": pass_name, "settings": settings, "graphopt": __version__})
    model.metadata_props[PROVENANCE_KEY] = json.dumps(records, sort_keys=True, default=str)
