"""Helpers shared by CLI verbs: argument groups, tables, JSON output."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["add_feed_args", "add_shape_arg", "emit_json", "format_table", "print_table", "progress", "resolve_feeds"]


def add_feed_args(parser: argparse.ArgumentParser) -> None:
    """``--inputs FEED.npz``, ``--shape NAME=DIMS`` and ``--seed``."""
    parser.add_argument("--inputs", metavar="FEED.npz", help="feeds: .npz keyed by input name, samples on axis 0")
    add_shape_arg(parser, "shape of a synthesised input (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed for synthesised inputs")


def add_shape_arg(parser: argparse.ArgumentParser, help: str) -> None:
    """``--shape NAME=D1,D2`` (repeatable), parsed by :func:`graphopt.feeds.parse_shape_overrides`."""
    parser.add_argument("--shape", action="append", default=[], metavar="NAME=D1,D2", help=help)


def resolve_feeds(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """Feeds from ``--inputs`` (validated against ``model``) or synthesised from its signature."""
    from graphopt.feeds import input_specs, load_feeds, parse_shape_overrides, synthesize_feeds

    specs = input_specs(model)
    if args.inputs:
        if args.shape:
            from graphopt.errors import UsageError

            raise UsageError("give either --inputs or --shape, not both")
        return load_feeds(args.inputs, specs)
    return synthesize_feeds(specs, shapes=parse_shape_overrides(args.shape), seed=args.seed)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    print(format_table(headers, rows))


def emit_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1e4 or abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:.4g}"
    return str(value)


def progress(message: str) -> None:
    """A progress line on stderr, only for a person watching a terminal: scripts and logs get
    stdout's report and, on failure, the single error line."""
    if sys.stderr.isatty():
        print(message, file=sys.stderr, flush=True)
