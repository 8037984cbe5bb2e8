"""``graphopt finetune MODEL -o OUT --data TRAIN.npz``: train initializers with the torch executor."""

from __future__ import annotations

import argparse

from graphopt.cli._common import emit_json, progress


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="train chosen initializers (adapters, gates, clip, all) and write them back",
        description="Run MODEL with graphopt's differentiable torch executor, train the chosen initializers "
        "with Adam against labels in the data (keyed by output name) or the outputs of a teacher graph "
        "(distillation, teacher run in onnxruntime), write the trained values into OUT, and check that "
        "onnxruntime runs OUT (basic graph optimizations) and matches the executor.",
    )
    parser.add_argument("model", metavar="MODEL", help="model to fine-tune (.onnx)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="where to write the fine-tuned model")
    parser.add_argument("--data", required=True, metavar="TRAIN.npz",
                        help="training data: graph inputs (and targets keyed by output name), samples on axis 0")
    parser.add_argument("--teacher", metavar="ORIGINAL.onnx", help="distil towards this model's outputs")
    parser.add_argument("--eval-data", metavar="EVAL.npz", help="held-out data for the loss before/after")
    parser.add_argument("--trainable", default="all", metavar="adapters|gates|clip|all|NAMES",
                        help="what to train: adapters, gates, clip (clipped-softmax gamma/zeta), all, or "
                        "comma-separated names/globs (default all)")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps (default 100)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per step (default 8)")
    parser.add_argument("--loss", choices=("mse", "cosine", "ce"), default="mse", help="training loss (default mse)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample order (default 0)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--atol", type=float, default=1e-4, help="tolerance of the onnxruntime check (default 1e-4)")
    parser.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance of that check (default 1e-3)")
    parser.add_argument("--dry-run", action="store_true", help="print the settings as JSON and stop")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from graphopt._io import atomic_output, check_output_path, load_model, save_model
    from graphopt.errors import CheckFailed, UsageError
    from graphopt.feeds import load_feeds

    if args.steps < 1 or args.batch_size < 1 or not args.lr > 0:
        raise UsageError("--steps and --batch-size must be positive and --lr above 0")
    if args.atol < 0 or args.rtol < 0:
        raise UsageError("--atol and --rtol must be non-negative")
    settings = {
        "model": args.model, "output": args.output, "data": args.data, "teacher": args.teacher,
        "eval_data": args.eval_data, "trainable": args.trainable, "steps": args.steps, "lr": args.lr,
        "batch_size": args.batch_size, "loss": args.loss, "seed": args.seed,
    }
    if args.dry_run:
        emit_json({"command": "finetune", "settings": settings})
        return 0
    sources = [args.model] + ([args.teacher] if args.teacher else [])
    out = check_output_path(args.output, *sources)
    model = load_model(args.model)
    if args.teacher:
        load_model(args.teacher)
    data = load_feeds(args.data)
    eval_data = load_feeds(args.eval_data) if args.eval_data else None

    import torch

    from graphopt.executor import TorchExecutor, finetune
    from graphopt.executor.train import split_data

    if args.threads is not None:
        if args.threads < 1:
            raise UsageError("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    every = max(1, args.steps // 20)

    def report(step: int, steps: int, loss: float) -> None:
        if step % every == 0 or step == steps:
            progress(f"finetune: step {step}/{steps} loss {loss:.6g}")

    result = finetune(
        model, data, teacher=args.teacher, trainable=args.trainable, steps=args.steps, lr=args.lr,
        batch_size=args.batch_size, loss=args.loss, seed=args.seed, eval_data=eval_data, progress=report,
    )
    feeds, _ = split_data(model, data)
    check = {k: v[: args.batch_size] for k, v in feeds.items()}
    from graphopt.runtime import make_session

    with atomic_output(out) as tmp:
        staged = save_model(result.model, tmp / out.name)
        expected = TorchExecutor(result.model).run(check)
        # Basic level: onnxruntime's fusions at higher levels may change the arithmetic itself (its
        # DequantizeLinear + MatMul fusion differs by ~5e-3 on a 4-bit MiniLM before any training).
        got = make_session(staged, optimization="basic").run(list(expected), check)
        worst, passed = 0.0, True
        for ref, value in zip(expected.values(), got):
            diff = np.abs(value.astype(np.float64) - ref.astype(np.float64))
            worst = max(worst, float(diff.max()) if diff.size else 0.0)
            passed &= bool(np.all(diff <= args.atol + args.rtol * np.abs(ref)))
        if not passed:
            raise CheckFailed(
                f"onnxruntime's outputs of the fine-tuned model differ from the executor's by {worst:.3g} "
                f"(atol {args.atol:g}, rtol {args.rtol:g}); nothing written"
            )
    summary = result.to_dict() | {"output": str(out), "max_abs_vs_onnxruntime": worst}
    if args.json:
        emit_json(summary)
    else:
        print(
            f"trained {len(result.trainable)} initializer(s), {result.parameters} parameters, "
            f"{len(result.losses)} steps in {result.seconds:.1f} s ({summary['seconds_per_step']} s/step)"
        )
        print(f"{args.loss} loss {result.loss_before:.6g} -> {result.loss_after:.6g}"
              f" on the {'evaluation' if eval_data is not None else 'training'} data")
        print(f"onnxruntime matches the executor (max abs diff {worst:.3g}); wrote {out}")
    return 0
