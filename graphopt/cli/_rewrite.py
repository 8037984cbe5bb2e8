"""``graphopt rewrite MODEL -o OUT --pass NAME[:key=value,...] ...``: run any registered passes in order."""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path
from typing import Any

from graphopt.cli._common import add_feed_args, emit_json, print_table, progress

__all__ = ["parse_pass_spec", "register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "rewrite",
        help="apply passes (clipped-softmax, gated-attention, lora, nola, bitdelta, merge-adapters, ...)",
        description="Apply registered passes in the order given, run the result in onnxruntime against the "
        "original on feeds, and write it atomically. Settings go after a colon, comma-separated; list "
        "values are joined with '+': --pass lora:rank=4,targets=q+v. Passes that change outputs report "
        "the difference; --verify makes any difference beyond --atol/--rtol exit 1.",
    )
    parser.add_argument("model", metavar="MODEL", help="input model (.onnx)")
    parser.add_argument("-o", "--output", help="where to write the rewritten model")
    parser.add_argument("--pass", dest="passes", action="append", default=[], metavar="NAME[:k=v,...]",
                        help="a pass and its settings (repeatable, applied in order)")
    parser.add_argument("--list-passes", action="store_true", help="list the passes and their settings, and stop")
    add_feed_args(parser)
    parser.add_argument("--verify", action="store_true", help="exit 1 (nothing written) if outputs change")
    parser.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance for --verify")
    parser.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance for --verify")
    parser.add_argument("--dry-run", action="store_true", help="print the recipe that would run, and stop")
    parser.add_argument("--save-recipe", metavar="FILE", help="write the recipe that ran (.json or .yaml)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def parse_pass_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"lora:rank=4,targets=q+v"`` -> ``("lora", {"rank": 4, "targets": ("q", "v")})``, values
    converted to the types the pass's settings declare."""
    import dataclasses

    from graphopt.errors import UsageError
    from graphopt.passes import get_pass_class

    name, _, rest = spec.partition(":")
    cls = get_pass_class(name.strip())
    hints = typing.get_type_hints(cls.Settings)
    fields = {f.name for f in dataclasses.fields(cls.Settings)}
    settings: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise UsageError(f"--pass {spec!r}: expected key=value, got {item!r}")
        if key not in fields:
            raise UsageError(f"--pass {spec!r}: pass {name!r} has no setting {key!r} "
                             f"(known: {', '.join(sorted(fields)) or 'none'})")
        settings[key] = _convert(raw.strip(), hints.get(key, str), f"--pass {spec!r}: {key}")
    return cls.name, settings


def _convert(raw: str, hint: Any, where: str) -> Any:
    from graphopt.errors import UsageError

    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    if optional and raw.lower() in ("none", "null", ""):
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType) and args:
        hint, origin = args[0], typing.get_origin(args[0])
    if origin is tuple:
        inner = typing.get_args(hint)[0] if typing.get_args(hint) else str
        return tuple(_convert(part, inner, where) for part in raw.split("+") if part)
    try:
        if hint is bool:
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if hint in (int, float):
            return hint(raw)
    except ValueError:
        raise UsageError(f"{where}: {raw!r} is not a valid {hint.__name__}") from None
    return raw


def run(args: argparse.Namespace) -> int:
    from graphopt.errors import UsageError
    from graphopt.recipes import Recipe, RecipeStep

    if args.list_passes:
        return _list_passes()
    if not args.passes:
        raise UsageError("give at least one --pass NAME[:key=value,...] (see --list-passes)")
    steps = tuple(RecipeStep(*parse_pass_spec(spec)) for spec in args.passes)
    recipe = Recipe(name="rewrite", steps=steps, atol=args.atol, rtol=args.rtol)
    passes = recipe.build()
    if args.dry_run:
        sys.stdout.write(recipe.dumps("json" if args.json else "yaml"))
        return 0
    if not args.output:
        raise UsageError("missing -o/--output")
    return _rewrite(args, recipe, passes)


def _rewrite(args: argparse.Namespace, recipe: Any, passes: list[Any]) -> int:
    from graphopt._io import atomic_output, check_output_path, load_model, save_model
    from graphopt.cli._common import resolve_feeds
    from graphopt.passes import TimingHook, run_passes
    from graphopt.verify import verify_models

    output = check_output_path(args.output, args.model)
    if args.save_recipe:
        check_output_path(args.save_recipe, args.model)
    original = load_model(args.model)
    model = load_model(args.model)
    feeds = resolve_feeds(args, original)
    timing = TimingHook()
    run_passes(model, passes, hooks=[timing], progress=None if args.json else _progress)
    report = verify_models(original, model, feeds, atol=args.atol, rtol=args.rtol, signature=original)
    result: dict[str, Any] = {"recipe": recipe.to_dict(), "passes": timing.records, "verify": report.to_dict()}
    if args.verify and not report.passed:
        _print(args, result)
        print("graphopt rewrite: outputs changed beyond tolerance; nothing written", file=sys.stderr)
        return 1
    model.metadata_props["graphopt.recipe"] = recipe.dumps("json")
    save_model(model, output)
    if args.save_recipe:
        path = Path(args.save_recipe)
        with atomic_output(path) as tmp:
            (tmp / path.name).write_text(recipe.dumps("json" if path.suffix == ".json" else "yaml"))
    result["output"] = str(output)
    _print(args, result)
    return 0


def _print(args: argparse.Namespace, result: dict[str, Any]) -> None:
    if args.json:
        emit_json(result)
        return
    print_table(("pass", "modified", "nodes after", "seconds"),
                [(r["pass"], "yes" if r["modified"] else "no", r["nodes"], r["seconds"]) for r in result["passes"]])
    outputs = result["verify"].get("outputs", [])
    if outputs:
        print()
        print_table(("output", "max abs diff", "cosine", "within tolerance"),
                    [(o["name"], o["max_abs"], o["cosine"], "yes" if o["passed"] else "no") for o in outputs])
    if "output" in result:
        print(f"wrote {result['output']}")


def _list_passes() -> int:
    from graphopt.passes import available_passes

    rows = []
    for name, cls in available_passes().items():
        settings = ", ".join(f"{s.name}={s.default!r}" for s in cls.Settings.describe())
        rows.append((name, "yes" if cls.output_preserving else "no", settings or "-"))
    print_table(("pass", "output-preserving", "settings (defaults)"), rows)
    return 0


def _progress(name: str) -> None:
    progress(f"  running {name} ...")
