"""``graphopt search``: multi-objective architecture search over a space (:mod:`graphopt.nas.search`).

Writes into ``-o OUTDIR``: ``front.json`` (the Pareto front), ``front.png`` (its plot), ``checkpoint.json``
(every real query; ``--resume`` continues from it) and, with ``--export-front``, ``front/<i>.onnx``.
"""

from __future__ import annotations

import argparse

from graphopt.cli._common import progress


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search",
        help="search a space for the Pareto front of several objectives",
        description="NSGA-II, random or predictor-in-the-loop (LINAS) search; objectives are minimised unless "
        "marked :max.",
    )
    parser.add_argument("--space", default="nb201", help="search space (supported: nb201)")
    parser.add_argument("--objective", action="append", default=[], metavar="SPEC", required=True,
                        help="table:CSV:COLUMN[:max|min], bytes, macs or params (repeatable)")
    parser.add_argument("--budget", type=int, default=200, help="real queries at most (default 200)")
    parser.add_argument("--algorithm", choices=("nsga2", "random", "linas"), default="nsga2")
    parser.add_argument("--pop-size", type=int, default=20, help="NSGA-II population (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the results")
    parser.add_argument("--resume", action="store_true", help="continue from OUTDIR/checkpoint.json")
    parser.add_argument("--export-front", action="store_true", help="also write the front's graphs as ONNX")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from graphopt._io import save_model
    from graphopt.errors import InputError, UsageError
    from graphopt.nas.objectives import parse_objective
    from graphopt.nas.search import encoding_for, load_checkpoint, plot_front, search, write_front_json
    from graphopt.nas.spaces import get_space

    if args.budget < 1:
        raise UsageError("--budget must be >= 1")
    if args.pop_size < 2:
        raise UsageError("--pop-size must be >= 2")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    if not out.parent.is_dir():
        raise InputError(f"{out}: folder {out.parent} does not exist")
    checkpoint = out / "checkpoint.json"
    if args.resume and not checkpoint.is_file():
        raise InputError(f"{checkpoint}: no checkpoint to resume from")
    if not args.resume and checkpoint.exists():
        raise UsageError(f"{out} holds a search already: pass --resume, or choose another folder")
    space = get_space(args.space)
    encoding = encoding_for(space)
    objectives = [parse_objective(space, text) for text in args.objective]
    history = load_checkpoint(checkpoint) if args.resume else []
    out.mkdir(exist_ok=True)
    result = search(encoding, objectives, budget=args.budget, algorithm=args.algorithm, seed=args.seed,
                    pop_size=args.pop_size, history=history, checkpoint=checkpoint,
                    progress=lambda done, total: progress(f"search: {done}/{total} queries"))
    write_front_json(out / "front.json", result, space=args.space, algorithm=args.algorithm, seed=args.seed)
    plot_front(out / "front.png", result)
    if args.export_front:
        (out / "front").mkdir(exist_ok=True)
        for old in (out / "front").glob("*.onnx"):  # a resumed search's front replaces the last one
            old.unlink()
        for i, record in enumerate(result.front_records()):
            save_model(space.build(space.parse(record["arch"]), seed=0), out / "front" / f"{i}.onnx")
    failures = sum(r["values"] is None for r in result.records)
    print(f"{len(result.records)} queries ({failures} failed), {len(result.front)} on the front -> {out}/front.json")
    for record in result.front_records():
        print(record["arch"], " ".join(f"{n}={v:.6g}" for n, v in zip(result.objectives, record["values"])))
    return 0
