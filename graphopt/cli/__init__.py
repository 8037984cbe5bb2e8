"""The ``graphopt`` command line: ``graphopt <verb> ...``.

Each verb lives in its own module (``graphopt.cli._<verb>``) exposing ``register(subparsers)``;
heavy imports happen inside the command so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Sequence

from graphopt import __version__
from graphopt.errors import GraphoptError

__all__ = ["main"]

_VERBS = (
    "inspect", "optimize", "quantize", "prune", "rewrite", "finetune", "verify", "bench",
    "encode", "score", "predictor", "search", "export", "demo",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graphopt",
        description="Rewrite ONNX graphs to make models smaller and faster, verified with onnxruntime.",
    )
    parser.add_argument("--version", action="version", version=f"graphopt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what each pass does")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in _VERBS:
        importlib.import_module(f"graphopt.cli._{verb}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 1 a check failed, 2 bad usage or input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    if args.verb is None:
        parser.print_help(sys.stderr)
        return 2
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except GraphoptError as exc:
        if args.debug:
            traceback.print_exc()
        message = " ".join(str(exc).splitlines())  # names may hold newlines; the error stays one line
        print(f"graphopt {args.verb}: error: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"graphopt {args.verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        print(
            f"graphopt {args.verb}: error: {type(exc).__name__}: {text} (rerun with --debug for details)",
            file=sys.stderr,
        )
        return 2
