"""``graphopt quantize MODEL -o OUT --scheme SCHEME``: quantize with calibration and accuracy fallback."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from graphopt.cli._common import emit_json, print_table, progress

_METHODS = ("minmax", "percentile", "entropy", "mse")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quantize",
        help="quantize a model (w8a8, w8a8-dynamic, w4a16, ...)",
        description="Quantize MatMul/Gemm weights (and activations) with a named scheme, calibrating on "
        "an .npz of feeds or on a text file, optionally keeping the most sensitive layers in float until "
        "a fidelity target is met. The result records its scheme and settings in its metadata.",
    )
    parser.add_argument("model", nargs="?", help="input model (.onnx)")
    parser.add_argument("-o", "--output", help="where to write the quantized model")
    parser.add_argument("--scheme", default="w8a8", help="quantization scheme (default w8a8; see --list-schemes)")
    parser.add_argument("--list-schemes", action="store_true", help="list the schemes and stop")
    calib = parser.add_argument_group("calibration data")
    calib.add_argument("--calib", metavar="CALIB.npz", help="feeds keyed by input name, samples on axis 0")
    calib.add_argument("--calib-text", metavar="FILE", help="text file, one calibration sample per line")
    calib.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder for --calib-text")
    calib.add_argument("--sequence", type=int, default=128, help="tokens per sample for --calib-text (default 128)")
    calib.add_argument("--max-samples", type=int, default=512, help="lines of --calib-text used (default 512)")
    calib.add_argument("--save-calib", metavar="FILE.npz", help="write the feeds built from --calib-text")
    parser.add_argument("--method", choices=_METHODS, default="percentile", help="activation calibration method")
    parser.add_argument("--percentile", type=float, default=99.999, help="percentile for --method percentile")
    parser.add_argument("--activation-type", choices=("uint8", "int8"), default="uint8",
                        help="asymmetric uint8 (default, fuses best in onnxruntime) or symmetric int8")
    parser.add_argument("--smooth-alpha", type=float, help="apply SmoothQuant with this migration strength")
    parser.add_argument("--residual", action="store_true",
                        help="w8a8: also quantize the residual stream (inputs of residual Adds and LayerNorms)")
    parser.add_argument("--target-fidelity", type=float,
                        help="keep the most sensitive layers in float until the mean cosine to the float model "
                        "on held-out calibration samples reaches this; exit 1 if impossible")
    parser.add_argument("--holdout", type=float, default=0.25, help="fraction of samples held out (default 0.25)")
    parser.add_argument("--keep-embeddings", action="store_true",
                        help="leave Gather tables (embeddings) in float")
    parser.add_argument("--weight-method", choices=("auto", "rtn", "gptq", "awq"), default="auto",
                        help="weight-only schemes: rounding (auto: gptq with calibration data, else rtn)")
    parser.add_argument("--grouping", choices=("output", "input", "adadim"), default="output",
                        help="weight-only schemes: blocks along K (output), along N (input), or per layer by "
                        "reconstruction error (adadim, needs calibration)")
    parser.add_argument("--exclude", action="append", default=[], metavar="NAME", help="node or weight kept float")
    parser.add_argument("--dry-run", action="store_true", help="print the recipe that would run, and stop")
    parser.add_argument("--save-recipe", metavar="FILE", help="write the recipe that ran (.json or .yaml)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from graphopt.errors import UsageError
    from graphopt.quantize import SCHEMES, QuantizeOptions, parse_scheme, scheme_recipe

    if args.list_schemes:
        print_table(("scheme", "calibration", "description"),
                    [(f"{s.name}:{s.arguments}" if s.arguments else s.name, "yes" if s.needs_calibration else
                      "optional", s.description) for s in SCHEMES.values()])
        return 0
    scheme, _ = parse_scheme(args.scheme)  # unknown scheme or bad arguments: one line, exit 2
    if args.residual and scheme.name != "w8a8":
        raise UsageError(f"--residual applies to the w8a8 scheme, not {scheme.name!r}")
    if args.calib and args.calib_text:
        raise UsageError("give either --calib or --calib-text, not both")
    if args.calib_text and not args.tokenizer:
        raise UsageError("--calib-text needs --tokenizer DIR")
    if args.save_calib and not args.calib_text:
        raise UsageError("--save-calib needs --calib-text")
    options = QuantizeOptions(
        method=args.method, percentile=args.percentile, activation_type=args.activation_type,
        smooth_alpha=args.smooth_alpha, exclude=tuple(args.exclude), target_fidelity=args.target_fidelity,
        holdout=args.holdout, embeddings=not args.keep_embeddings, calib_path=args.calib or args.save_calib or "",
        weight_method=args.weight_method, grouping=args.grouping, residual=args.residual,
    )
    options.validate()
    if args.dry_run:
        sys.stdout.write(scheme_recipe(args.scheme, options).dumps("json" if args.json else "yaml"))
        return 0
    return _quantize(args, options)


def _quantize(args: argparse.Namespace, options: Any) -> int:
    import dataclasses

    from graphopt._io import check_output_path, load_model, model_bytes, save_model
    from graphopt.errors import UsageError
    from graphopt.quantize import feeds_from_text, parse_scheme, quantize

    if not args.model:
        raise UsageError("missing the input MODEL")
    if not args.output:
        raise UsageError("missing -o/--output")
    output = check_output_path(args.output, args.model)
    for extra in (args.save_recipe, args.save_calib):
        if extra:
            check_output_path(extra, args.model)
    if parse_scheme(args.scheme)[0].needs_calibration and not (args.calib or args.calib_text):
        raise UsageError(f"scheme {args.scheme!r} needs calibration data: --calib CALIB.npz or --calib-text FILE")
    model = load_model(args.model)
    calib: Any = None
    if args.calib:
        calib = args.calib
    elif args.calib_text:
        calib = feeds_from_text(model, args.calib_text, args.tokenizer, sequence=args.sequence,
                                max_samples=args.max_samples)
    before = model_bytes(model)
    result = quantize(model, args.scheme, calib, progress=None if args.json else _progress,
                      **{f.name: getattr(options, f.name) for f in dataclasses.fields(options)})
    if args.save_calib:
        from graphopt.feeds import save_feeds

        save_feeds(calib, args.save_calib)
    save_model(result.model, output)
    if args.save_recipe:
        from graphopt._io import atomic_output

        path = Path(args.save_recipe)
        with atomic_output(path) as tmp:
            (tmp / path.name).write_text(result.recipe.dumps("json" if path.suffix == ".json" else "yaml"))
    report = {**result.to_dict(), "weight_bytes": {"before": before, "after": model_bytes(result.model)},
              "output": str(output)}
    if args.json:
        emit_json(report)
        return 0
    rows: list[tuple[Any, ...]] = [
        ("scheme", args.scheme),
        ("weight bytes", f"{before} -> {report['weight_bytes']['after']} "
                         f"({report['weight_bytes']['after'] / max(before, 1):.3f}x)"),
    ]
    if result.fidelity is not None:
        rows.append(("fidelity (held-out mean cosine)", f"{result.fidelity:.5f} (target {args.target_fidelity:g})"))
        rows.append(("kept in float", ", ".join(result.fallback) or "none"))
    print_table(("", "value"), rows)
    print(f"wrote {output}")
    return 0


def _progress(message: str) -> None:
    progress(f"  {message} ...")
