"""``graphopt optimize MODEL -o OUT``: apply a recipe, verify it, measure it, write the result."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from graphopt.cli._common import add_feed_args, emit_json, print_table, progress, resolve_feeds


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "optimize",
        help="rewrite a model with a recipe (default: output-preserving cleanup)",
        description="Apply a recipe of passes, verify the result against the original in onnxruntime, "
        "compare latency, and write the model atomically. The input is never modified.",
    )
    parser.add_argument("model", help="input model (.onnx)")
    parser.add_argument("-o", "--output", help="where to write the optimized model")
    parser.add_argument(
        "--recipe", default="default", help="named recipe (default, portable, minimal) or a .json/.yaml recipe file"
    )
    add_feed_args(parser)
    parser.add_argument("--atol", type=float, help="verification tolerance (default: the recipe's)")
    parser.add_argument("--rtol", type=float, help="verification tolerance (default: the recipe's)")
    parser.add_argument("--no-verify", action="store_true", help="skip verification (not recommended)")
    parser.add_argument(
        "--no-repair", action="store_true", help="fail instead of leaving out a pass after which verification fails"
    )
    parser.add_argument("--no-bench", action="store_true", help="skip the latency comparison")
    parser.add_argument("--threads", type=int, help="onnxruntime threads for the latency comparison")
    parser.add_argument("--dry-run", action="store_true", help="print the recipe that would run, and stop")
    parser.add_argument("--save-recipe", metavar="FILE", help="write the recipe (.json or .yaml) to replay this run")
    parser.add_argument("--external-data", action="store_true", help="store weights in OUT.data")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from graphopt._io import check_output_path, load_model, model_bytes, save_model
    from graphopt.errors import UsageError
    from graphopt.pipeline import optimize_verified
    from graphopt.recipes import resolve_recipe

    recipe = resolve_recipe(args.recipe)
    if args.atol is not None or args.rtol is not None:
        recipe = dataclasses.replace(
            recipe,
            atol=recipe.atol if args.atol is None else args.atol,
            rtol=recipe.rtol if args.rtol is None else args.rtol,
        )
    if args.dry_run:
        sys.stdout.write(recipe.dumps("json" if args.json else "yaml"))
        return 0
    if not args.output:
        raise UsageError("missing -o/--output")
    output = check_output_path(args.output, args.model)
    if args.save_recipe:
        check_output_path(args.save_recipe, args.model)
    original = load_model(args.model)
    before = _stats(original, model_bytes(original), Path(args.model))
    feeds = None if args.no_verify and args.no_bench else resolve_feeds(args, original)

    result = optimize_verified(
        args.model,
        recipe,
        feeds or {},
        verify=not args.no_verify,
        max_skips=0 if args.no_repair else 3,
        progress=None if args.json else _progress,
        original=original,
    )
    del original
    model = result.model
    report: dict[str, Any] = {
        "recipe": recipe.to_dict(),
        "output_preserving": recipe.output_preserving,
        "passes": list(result.passes),
    }
    if result.skipped:
        report["skipped"] = [dataclasses.asdict(s) for s in result.skipped]
        for step in result.skipped:
            print(
                f"graphopt optimize: left out step {step.index + 1} ({step.pass_name}): {step.reason}", file=sys.stderr
            )
    if not args.no_verify:
        report["verify"] = result.report.to_dict() if result.report else {"passed": False, "error": result.failure}
        if not result.passed and recipe.output_preserving:
            _print(args, report, before, None, None)
            print(f"graphopt optimize: verification failed ({result.failure}); nothing written", file=sys.stderr)
            return 1

    model.metadata_props["graphopt.recipe"] = recipe.dumps("json")
    save_model(model, output, external_data=True if args.external_data else None)
    if args.save_recipe:
        _write_recipe(recipe, Path(args.save_recipe))
    after = _stats(model, model_bytes(model), output)
    del model

    latency = None
    if not args.no_bench:
        from graphopt.bench import benchmark

        assert feeds is not None
        latency = benchmark([Path(args.model), output], feeds, threads=args.threads, warmup=3, runs=15)
        report["bench"] = latency.to_dict()
    _print(args, report, before, after, latency)
    return 0


def _stats(model: Any, weight_bytes: int, path: Path) -> dict[str, Any]:
    nodes = sum(1 for _ in model.graph.all_nodes())
    file_bytes = path.stat().st_size if path.exists() else 0
    data = path.with_name(path.name + ".data")
    if data.exists():
        file_bytes += data.stat().st_size
    return {"nodes": nodes, "weight_bytes": weight_bytes, "file_bytes": file_bytes}


def _write_recipe(recipe: Any, path: Path) -> None:
    from graphopt._io import atomic_output

    with atomic_output(path) as tmp:
        (tmp / path.name).write_text(recipe.dumps("json" if path.suffix == ".json" else "yaml"))


def _progress(name: str) -> None:
    progress(f"  running {name} ...")


def _print(
    args: argparse.Namespace, report: dict[str, Any], before: dict[str, Any], after: dict[str, Any] | None, latency: Any
) -> None:
    report["before"], report["after"] = before, after
    if args.json:
        emit_json(report)
        return
    rows: list[tuple[Any, ...]] = []
    for key, label in (("nodes", "nodes"), ("weight_bytes", "weight bytes"), ("file_bytes", "file bytes")):
        new = after[key] if after else "-"
        ratio = f"{after[key] / before[key]:.3f}x" if after and before[key] else "-"
        rows.append((label, before[key], new, ratio))
    if latency is not None and latency.ratio is not None:
        first, second = latency.models
        ratio = latency.ratio
        rows.append(
            (
                "latency ms (median)",
                first.median_ms,
                second.median_ms,
                f"{ratio.median:.3f}x (p10 {ratio.p10:.2f}, p90 {ratio.p90:.2f})",
            )
        )
    if report.get("verify", {}).get("outputs"):
        worst = max(o["max_abs"] for o in report["verify"]["outputs"])
        cosine = min(o["cosine"] for o in report["verify"]["outputs"])
        if report["verify"]["passed"]:
            verdict = "ok"
        else:
            verdict = "FAIL" if report["output_preserving"] else "changed (recipe changes outputs)"
        rows.append(("max abs error", "", worst, verdict))
        rows.append(("min cosine", "", cosine, ""))
    print_table(("", "before", "after", "after/before"), rows)
    if after:
        print(f"wrote {args.output}")
