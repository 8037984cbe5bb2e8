"""Objectives for architecture search: callables ``arch -> float`` that the search *minimises*.

An :class:`Objective` carries a name, the function and its sense; ``maximize=True`` objectives are
negated by :meth:`Objective.loss`, so that every search minimises. Sources:

``table:CSV:COLUMN[:max|min]``  a look-up in a CSV file whose first column holds architecture strings
                                of the space (benchmark tables such as NAS-Bench-201 accuracy or HW-NAS-Bench latency)
``bytes``, ``macs``, ``params`` the built ONNX graph's parameter bytes, multiply-accumulates or parameter count
                                (:func:`graphopt.analysis.summarize`)

:func:`parse_objective` turns the CLI's ``--objective`` text into an :class:`Objective`.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from graphopt.errors import InputError, UsageError
from graphopt.nas.spaces import SearchSpace

__all__ = ["Objective", "graph_objective", "parse_objective", "table_objective"]

_GRAPH_KINDS = ("bytes", "macs", "params")


@dataclasses.dataclass(frozen=True)
class Objective:
    """A named function of an architecture; ``maximize`` says which way is better."""

    name: str
    fn: Callable[[Any], float]
    maximize: bool = False

    def loss(self, arch: Hashable) -> float:
        """The value to minimise: ``fn(arch)``, negated when the objective is maximised."""
        value = float(self.fn(arch))
        return -value if self.maximize else value


class _Table:
    """A picklable look-up ``arch -> float`` (process pools need picklable objectives)."""

    def __init__(self, space: SearchSpace, values: dict[str, float], source: str) -> None:
        self.space, self.values, self.source = space, values, source

    def __call__(self, arch: Hashable) -> float:
        key = self.space.to_string(arch)
        if key not in self.values:
            raise KeyError(f"{key} not in {self.source}")
        return self.values[key]


def table_objective(space: SearchSpace, path: str | Path, column: str, *, maximize: bool = False) -> Objective:
    """Look ``column`` up in the CSV at ``path``, keyed by its first column (architecture strings of ``space``).

    Raises :class:`InputError` for a missing or unreadable file, an unknown column, a key the space
    cannot parse or a value that is not a number.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    values: dict[str, float] = {}
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header or column not in header[1:]:
                raise InputError(f"{path}: no column {column!r} (columns: {', '.join((header or [])[1:])})")
            index = header.index(column)
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                try:
                    key = space.to_string(space.parse(row[0]))
                    values[key] = float(row[index])
                except (ValueError, IndexError) as exc:
                    raise InputError(f"{path}:{line}: bad row ({exc})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from exc
    if not values:
        raise InputError(f"{path}: no rows")
    return Objective(column, _Table(space, values, path.name), maximize)


class _Graph:
    """Build the architecture's ONNX graph and read one cost from its summary."""

    def __init__(self, space: SearchSpace, kind: str) -> None:
        self.space, self.kind = space, kind

    def __call__(self, arch: Hashable) -> float:
        from graphopt.analysis import summarize

        summary = summarize(self.space.build(arch, seed=0))
        if self.kind == "bytes":
            return float(summary.parameter_bytes)
        if self.kind == "params":
            return float(summary.parameter_count)
        return float(summary.macs)


def graph_objective(space: SearchSpace, kind: str) -> Objective:
    """``bytes``, ``macs`` or ``params`` of the graph ``space.build(arch, seed=0)`` (minimised)."""
    if kind not in _GRAPH_KINDS:
        raise UsageError(f"unknown graph objective {kind!r} (choose from {', '.join(_GRAPH_KINDS)})")
    return Objective(kind, _Graph(space, kind), False)


def parse_objective(space: SearchSpace, text: str) -> Objective:
    """``table:CSV:COLUMN[:max|min]`` or one of ``bytes``, ``macs``, ``params``."""
    if text in _GRAPH_KINDS:
        return graph_objective(space, text)
    if not text.startswith("table:"):
        raise UsageError(f"bad objective {text!r} (expected table:CSV:COLUMN[:max|min], bytes, macs or params)")
    parts = text[len("table:"):].split(":")
    sense = "min"
    if len(parts) >= 3 and parts[-1] in ("max", "min"):
        sense = parts.pop()
    if len(parts) < 2 or not parts[-1] or not parts[0]:
        raise UsageError(f"bad objective {text!r} (expected table:CSV:COLUMN[:max|min])")
    column = parts.pop()
    return table_objective(space, ":".join(parts), column, maximize=sense == "max")
