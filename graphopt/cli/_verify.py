"""``graphopt verify A B``: run two models on the same feeds and compare every output."""

from __future__ import annotations

import argparse

from graphopt.cli._common import add_feed_args, emit_json, print_table, resolve_feeds


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="compare two models' outputs in onnxruntime",
        description="Run A and B in onnxruntime on the same feeds (given or synthesised from A's "
        "signature) and report max abs/rel error and cosine per output; exit 1 beyond tolerance.",
    )
    parser.add_argument("reference", metavar="A", help="reference model (.onnx)")
    parser.add_argument("candidate", metavar="B", help="model to check against A (.onnx)")
    add_feed_args(parser)
    parser.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance (default 1e-4)")
    parser.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance (default 1e-3)")
    parser.add_argument("--provider", help="onnxruntime execution provider (cpu, cuda, ...)")
    parser.add_argument("--batch-size", type=int, help="samples per run when feeds hold many samples")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from graphopt._io import load_model
    from graphopt.errors import UsageError
    from graphopt.verify import verify_models

    if args.atol < 0 or args.rtol < 0:
        raise UsageError("--atol and --rtol must be non-negative")
    reference = load_model(args.reference)
    load_model(args.candidate)
    feeds = resolve_feeds(args, reference)
    report = verify_models(
        args.reference,
        args.candidate,
        feeds,
        atol=args.atol,
        rtol=args.rtol,
        provider=args.provider,
        batch_size=args.batch_size,
        signature=reference,
    )
    if args.json:
        emit_json(report.to_dict())
    else:
        rows = [
            (o.name, o.max_abs, o.max_rel, o.cosine, "ok" if o.passed else f"FAIL {o.note}".strip())
            for o in report.outputs
        ]
        print_table(("output", "max abs", "max rel", "cosine", "verdict"), rows)
        verdict = "within" if report.passed else "BEYOND"
        print(f"{verdict} tolerance (atol {args.atol:g}, rtol {args.rtol:g}) on {report.batches} batch(es)")
    return 0 if report.passed else 1
