"""``graphopt prune MODEL -o OUT``: structured pruning (heads, MLP neurons, layers, ThinK key channels,
hidden channels, conv channels) and masked unstructured / N:M sparsity."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from graphopt.cli._common import emit_json, print_table

_METHODS = ("activation", "magnitude", "wanda", "random")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prune",
        help="remove attention heads, MLP neurons, layers, key or hidden channels, or conv channels",
        description="Structured pruning: the pruned graph is physically smaller (fewer parameters and MACs). "
        "Units are ranked by --importance; activation and wanda read calibration feeds (--calib). Blocks "
        "that cannot be pruned safely are reported and left alone. Provenance is recorded in the model.",
    )
    parser.add_argument("model", help="input model (.onnx)")
    parser.add_argument("-o", "--output", help="where to write the pruned model")
    parser.add_argument("--heads", type=float, default=0.0, metavar="F", help="fraction of heads removed per layer")
    parser.add_argument("--mlp", type=float, default=0.0, metavar="F", help="fraction of MLP neurons removed per layer")
    parser.add_argument("--layers", type=int, default=0, metavar="N", help="number of layers dropped")
    parser.add_argument("--think", type=float, default=0.0, metavar="F",
                        help="fraction of every head's query/key channels removed (ThinK; importance activation "
                        "or magnitude)")
    parser.add_argument("--hidden", type=float, default=0.0, metavar="F",
                        help="fraction of the residual stream's hidden channels removed (embeddings, norms, every "
                        "projection); an output on the stream, e.g. a sentence embedding, shrinks with it")
    parser.add_argument("--channels", type=float, default=0.0, metavar="F",
                        help="fraction of conv output channels removed per prunable conv")
    parser.add_argument("--unstructured", type=float, default=0.0, metavar="F",
                        help="zero this fraction of every linear layer's weights (masked, not smaller)")
    parser.add_argument("--nm", metavar="N:M", default="", help="zero weights in an N:M pattern, e.g. 2:4")
    parser.add_argument("--importance", choices=_METHODS, default="magnitude", help="how units are ranked")
    parser.add_argument("--calib", metavar="CALIB.npz", help="calibration feeds keyed by input name")
    parser.add_argument("--seed", type=int, default=0, help="seed of --importance random")
    parser.add_argument("--multiple-of", type=int, default=1, metavar="N",
                        help="round the kept MLP neurons, hidden and conv channels of every block to a multiple of N "
                        "(8 or 16 keep onnxruntime's CPU kernels on their fast paths)")
    parser.add_argument("--dry-run", action="store_true", help="print the recipe that would run, and stop")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def _recipe(args: argparse.Namespace) -> Any:
    from graphopt.recipes import Recipe, RecipeStep

    common = {"importance": args.importance, "calibration": args.calib or "", "seed": args.seed}
    layer_importance = "activation" if args.importance == "wanda" else args.importance
    steps = []
    if args.layers:
        steps.append(RecipeStep("prune-layers", {**common, "count": args.layers, "importance": layer_importance}))
    if args.heads:
        steps.append(RecipeStep("prune-heads", {**common, "fraction": args.heads}))
    widths = {"multiple_of": args.multiple_of}
    if args.mlp:
        steps.append(RecipeStep("prune-mlp", {**common, **widths, "fraction": args.mlp}))
    if args.think:
        if args.importance not in ("activation", "magnitude"):
            from graphopt.errors import UsageError

            raise UsageError(f"--think ranks key channels by activation or magnitude, not {args.importance}")
        steps.append(RecipeStep("prune-key-channels", {**common, "fraction": args.think}))
    if args.hidden:
        steps.append(RecipeStep("prune-hidden", {**common, **widths, "fraction": args.hidden}))
    if args.channels:
        steps.append(RecipeStep("prune-channels", {**common, **widths, "fraction": args.channels}))
    if args.unstructured or args.nm:
        if args.importance == "random":
            from graphopt.errors import UsageError

            raise UsageError("--unstructured/--nm rank weights by magnitude or wanda, not random")
        method = "magnitude" if args.importance == "magnitude" else "wanda"
        steps.append(RecipeStep("prune-unstructured", {"sparsity": args.unstructured, "pattern": args.nm,
                                                       "importance": method, "calibration": args.calib or ""}))
    return Recipe("prune", tuple(steps), description="structured pruning")


def run(args: argparse.Namespace) -> int:
    from graphopt._io import check_output_path, load_model, save_model
    from graphopt.errors import UsageError
    from graphopt.passes import run_passes
    from graphopt.prune import parameter_count

    recipe = _recipe(args)
    passes = recipe.build()  # validates every setting before anything is read
    if not passes:
        raise UsageError("nothing to prune: give --heads, --mlp, --layers, --think, --hidden, --channels, "
                         "--unstructured or --nm")
    if args.importance in ("activation", "wanda") and not args.calib:
        raise UsageError(f"--importance {args.importance} needs calibration data: --calib CALIB.npz")
    if args.dry_run:
        sys.stdout.write(recipe.dumps("json" if args.json else "yaml"))
        return 0
    if not args.output:
        raise UsageError("missing -o/--output")
    output = check_output_path(args.output, args.model)
    model = load_model(args.model)
    before = parameter_count(model)
    skipped: list[str] = []
    applied: list[str] = []
    for pass_ in passes:
        if run_passes(model, [pass_]):
            applied.append(pass_.name)
        skipped.extend(getattr(pass_, "skipped", []))
    if not applied:
        raise UsageError(f"nothing was pruned{': ' + '; '.join(skipped) if skipped else ''}")
    _check_runs(model)
    save_model(model, output)
    after = parameter_count(model)
    widths = _output_widths(model)
    report = {"parameters": {"before": before, "after": after}, "applied": applied, "skipped": skipped,
              "output": str(output), **({"hidden_channels_kept": widths} if widths else {})}
    if args.json:
        emit_json(report)
        return 0
    rows: list[tuple[Any, ...]] = [("parameters", f"{before} -> {after} ({after / max(before, 1):.3f}x)"),
                                   ("passes", ", ".join(applied))]
    rows += [(f"output {name}", f"{len(kept)} channels kept (indices in metadata {_hidden_key()})")
             for name, kept in widths.items()]
    rows += [("skipped", line) for line in skipped]
    print_table(("", "value"), rows)
    print(f"wrote {output}")
    return 0


def _hidden_key() -> str:
    from graphopt.rewrites.prune.hidden import HIDDEN_KEY

    return HIDDEN_KEY


def _output_widths(model: Any) -> dict[str, list[int]]:
    """Graph outputs that hidden pruning narrowed, with the original indices of the channels kept."""
    import json

    raw = model.metadata_props.get(_hidden_key())
    return json.loads(raw) if raw else {}


def _check_runs(model: Any) -> None:
    """Run the pruned graph once on synthesised inputs: never write a graph onnxruntime rejects."""
    from graphopt.errors import CheckFailed, one_line
    from graphopt.feeds import input_specs, synthesize_feeds
    from graphopt.runtime import make_session

    try:
        feeds = synthesize_feeds(input_specs(model), batch=1, sequence=8)
        make_session(model).run(None, feeds)
    except Exception as exc:
        raise CheckFailed(f"the pruned graph does not run in onnxruntime: {one_line(exc)}") from exc
