"""``graphopt search``: multi-objective architecture search over a space (:mod:`graphopt.nas.search`).

Writes into ``-o OUTDIR``: ``front.json`` (the Pareto front, and the failed candidates with their errors),
``front.png`` (its plot), ``checkpoint.json`` (every real query; ``--resume`` continues from it) and, with
``--export-front``, ``front/<i>.onnx``. ``--space subnet --model M.onnx`` searches the sub-networks of a given
model (layers, heads and MLP width per layer). Candidates are evaluated in a local process pool
(``--workers``, default ``min(4, cpus)``; 1: in this process) or on Ray (``--backend ray [--address ADDR]``).
"""

from __future__ import annotations

import argparse
from typing import Any

from graphopt.cli._common import progress


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search",
        help="search a space for the Pareto front of several objectives",
        description="NSGA-II, random or predictor-in-the-loop (LINAS) search; objectives are minimised unless "
        "marked :max.",
    )
    parser.add_argument("--space", default="nb201", help="search space: nb201, or subnet (with --model)")
    parser.add_argument("--objective", action="append", default=[], metavar="SPEC", required=True,
                        help="table:CSV:COLUMN[:max|min], bytes, macs, params, latency[:batch=B,sequence=S,"
                        "threads=T,repeats=R,warmup=W,feeds=NPZ], predictor:PATH[:max|min], metric:NAME[:max|min], "
                        "eval:DATA.npz[:accuracy|cosine|mse], py:MODULE|FILE.py:FUNCTION[:max|min] (repeatable)")
    sub = parser.add_argument_group("sub-network space (--space subnet)")
    sub.add_argument("--model", metavar="M.onnx", help="the transformer (or CNN) whose sub-networks are searched")
    sub.add_argument("--layers", metavar="N,N,...", help="numbers of layers that may be kept (default: 1 to all)")
    sub.add_argument("--head-fractions", metavar="F,F,...", default="0.25,0.5,0.75,1",
                     help="fractions of heads per layer (default 0.25,0.5,0.75,1)")
    sub.add_argument("--mlp-fractions", metavar="F,F,...", default="0.25,0.5,0.75,1",
                     help="fractions of MLP width per layer (CNN: channels per convolution; default 0.25,0.5,0.75,1)")
    sub.add_argument("--importance", choices=("magnitude", "activation", "wanda", "random", "first"),
                     default="magnitude",
                     help="which heads, neurons and layers are kept (default magnitude; first: the first ones, "
                     "for weight-shared super-networks)")
    sub.add_argument("--calib", metavar="CALIB.npz", help="model inputs for activation / wanda importance")
    where = parser.add_argument_group("evaluation")
    where.add_argument("--backend", choices=("local", "ray"), default="local",
                       help="local process pool (default) or a Ray cluster")
    where.add_argument("--workers", type=int, help="local processes (default min(4, cpus); 1: in this process)")
    where.add_argument("--address", help="Ray cluster address (auto, ray://HOST:10001); default: a local Ray")
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
    from graphopt.nas.backends import create_backend
    from graphopt.nas.objectives import parse_objective
    from graphopt.nas.search import encoding_for, load_checkpoint, plot_front, search, write_front_json

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
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be >= 1")
    space = _space(args)
    encoding = encoding_for(space)
    objectives = [parse_objective(space, text) for text in args.objective]
    history = load_checkpoint(checkpoint) if args.resume else []
    with create_backend(objectives, args.backend, workers=args.workers, address=args.address) as backend:
        out.mkdir(exist_ok=True)
        result = search(encoding, objectives, budget=args.budget, algorithm=args.algorithm, seed=args.seed,
                        pop_size=args.pop_size, history=history, checkpoint=checkpoint, backend=backend,
                        progress=lambda done, total: progress(f"search: {done}/{total} queries"))
    extra = {"model": str(args.model)} if args.model else {}
    write_front_json(out / "front.json", result, space=args.space, algorithm=args.algorithm, seed=args.seed, **extra)
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


def _fractions(text: str, flag: str) -> list[float]:
    from graphopt.errors import UsageError

    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag}: expected numbers separated by commas, got {text!r}") from None


def _space(args: argparse.Namespace) -> Any:
    from graphopt.errors import UsageError
    from graphopt.nas.spaces import MODEL_SPACES, get_space

    if args.space not in MODEL_SPACES:
        if args.model:
            raise UsageError(f"--model is for --space {', '.join(MODEL_SPACES)}")
        return get_space(args.space)
    if not args.model:
        raise UsageError(f"--space {args.space} needs --model M.onnx")
    try:
        layers = [int(v) for v in args.layers.split(",") if v.strip()] if args.layers else None
    except ValueError:
        raise UsageError(f"--layers: expected integers separated by commas, got {args.layers!r}") from None
    fractions = _fractions(args.mlp_fractions, "--mlp-fractions")
    return get_space(args.space, model_path=args.model, layer_choices=layers,
                     head_fractions=_fractions(args.head_fractions, "--head-fractions"), mlp_fractions=fractions,
                     channel_fractions=fractions, importance=args.importance, calibration=args.calib)
