"""``graphopt bench``: latency, throughput and peak memory of a model, or of two models side by side."""

from __future__ import annotations

import argparse

from graphopt.cli._common import add_feed_args, progress


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure latency, throughput and peak memory (optionally against another model)",
        description=(
            "Measure a model with onnxruntime in a separate process: latency (median, p90), throughput, "
            "session creation time and peak memory. With --vs, both models run in alternation on the "
            "same feeds and the latency ratio OTHER / MODEL is reported per pair of runs."
        ),
    )
    parser.add_argument("model", metavar="MODEL", help="ONNX model to measure")
    parser.add_argument("--vs", metavar="OTHER", help="a second model to compare against MODEL")
    add_feed_args(parser)
    parser.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                        help="intra-op threads (default: onnxruntime's default)")
    parser.add_argument("--provider", default=None, metavar="P",
                        help="execution provider: cpu, cuda, tensorrt or a full name (default: cpu)")
    parser.add_argument("--warmup", type=_non_negative_int, default=5, metavar="N",
                        help="untimed runs per model before timing (default: 5)")
    parser.add_argument("--runs", type=_positive_int, default=30, metavar="N",
                        help="timed runs per model, at least (default: 30)")
    parser.add_argument("--min-seconds", type=float, default=0.5, metavar="S",
                        help="keep running (up to 1000 runs per model) until the timed runs took S "
                             "seconds in all (default: 0.5)")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="S",
                        help="stop the measurement after S seconds (default: 600)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON only")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import gc

    from graphopt._io import load_model
    from graphopt.bench import benchmark
    from graphopt.cli._common import emit_json, format_table, resolve_feeds
    from graphopt.feeds import input_specs, iter_batches, validate_feeds

    model = load_model(args.model)
    other = load_model(args.vs) if args.vs else None
    feeds = resolve_feeds(args, model)
    specs = input_specs(model)
    if other is not None:
        feeds = validate_feeds(feeds, input_specs(other), source=f"feeds for {args.vs}")
    if any(s.shape and isinstance(s.shape[0], int) and s.shape[0] > 0 for s in specs):
        feeds = next(iter_batches(feeds, specs))  # a model with a fixed batch gets one batch
    del model, other, specs  # the worker loads the models itself; free ours first
    gc.collect()

    paths = [args.model] + ([args.vs] if args.vs else [])
    progress(f"measuring {' and '.join(paths)} in a worker process ({args.warmup} warm-up, "
             f"at least {args.runs} timed runs each) ...")
    report = benchmark(
        paths, feeds, threads=args.threads, provider=args.provider, warmup=args.warmup, runs=args.runs,
        min_seconds=args.min_seconds, timeout=args.timeout,
    )
    if args.json:
        emit_json(report.to_dict())
        return 0
    rows = [
        [m.path, m.median_ms, m.p90_ms, m.min_ms, m.throughput, m.session_ms, m.peak_mib]
        for m in report.models
    ]
    print(format_table(
        ["model", "median ms", "p90 ms", "min ms", "samples/s", "session ms", "peak MiB"], rows,
    ))
    threads = args.threads if args.threads else "onnxruntime default"
    print(f"batch {report.batch_size}; {report.rounds} timed runs per model"
          f"{' (alternating)' if len(paths) > 1 else ''} after {report.warmup} warm-up; "
          f"threads: {threads}; {', '.join(report.models[0].providers)}; onnxruntime {report.onnxruntime}")
    print("peak MiB: largest rise of the worker's resident memory while creating the session and warming up")
    ratio = report.ratio
    if ratio is not None:
        print(f"{args.vs} / {args.model} latency: {ratio.median:.2f}x "
              f"(p10 {ratio.p10:.2f}, p90 {ratio.p90:.2f})")
    return 0


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or a positive integer, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
