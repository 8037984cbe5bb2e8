"""``graphopt predictor train``: fit an accuracy or latency predictor on labelled architectures or ONNX files."""

from __future__ import annotations

import argparse
import time

from graphopt.cli._common import emit_json, progress

# graphopt.predict.MODEL_KINDS, kept here for a fast --help
_MODELS = ("forest", "gbm", "ridge", "mlp", "mix", "rankgbm", "ens")
_GROUPS = ("onehot", "structural", "text", "zc")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predictor",
        help="train performance predictors (accuracy, latency) for `graphopt score`",
        description="Train and store performance predictors.",
    )
    verbs = parser.add_subparsers(dest="predictor_verb", metavar="ACTION", required=True)
    train = verbs.add_parser(
        "train",
        help="fit a predictor on a label CSV",
        description="Fit an ensemble predictor of TARGET on a CSV: with --space, an 'arch' column in the "
        "space's notation; without, a 'model' column of ONNX paths (relative to the CSV's folder). "
        "Scores come out in TARGET's units; the spread over ensemble members is the uncertainty.",
    )
    train.add_argument("--space", metavar="SPACE", help="search space of the 'arch' column (e.g. nb201, nb101)")
    train.add_argument("--labels", metavar="CSV", required=True, help="label CSV")
    target = train.add_mutually_exclusive_group(required=True)
    target.add_argument("--target", metavar="COLUMN", help="column to predict")
    target.add_argument("--measure-latency", action="store_true",
                        help="predict onnxruntime latency (ms, batch 1, 1 thread) measured here for every "
                        "training row, instead of a CSV column")
    train.add_argument("--train-size", type=int, metavar="N", help="train on N rows drawn at random (default: all)")
    train.add_argument("--seed", type=int, default=0, help="seed for the row draw and the models (default 0)")
    train.add_argument("-o", "--output", metavar="PRED", required=True, help="predictor file to write")
    train.add_argument("--model", choices=_MODELS, default="mix",
                       help="regressor: forest, gbm, ridge, mlp (pairwise ranking loss), mix (gbm + mlp; default), "
                       "rankgbm (trees boosted on a pairwise ranking loss) or ens (gbm + mlp + rankgbm)")
    train.add_argument("--features", metavar="G1,G2",
                       help=f"feature groups among {', '.join(_GROUPS)} "
                       "(default: onehot,structural with --space, structural without); zc (opt-in) adds graphopt's "
                       "synflow, jacov and nwot on natural images, 1-2 s per graph (cache them with --cache)")
    train.add_argument("--members", type=int, default=5, help="ensemble members per model (default 5)")
    train.add_argument("--holdout", type=int, default=0, metavar="N",
                       help="after training, report Kendall tau / Spearman on up to N rows not trained on")
    train.add_argument("--cache", metavar="DIR", help="cache graph features and text embeddings in DIR")
    train.add_argument("--json", action="store_true", help="print the training summary as JSON")
    train.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    import numpy as np

    from graphopt._io import check_output_path
    from graphopt.errors import UsageError
    from graphopt.predict import FeatureSpec, kendall_tau, load_labels, save_predictor, spearman, train_predictor

    check_output_path(args.output, args.labels)
    if args.members < 1:
        raise UsageError("--members must be at least 1")
    if args.holdout < 0:
        raise UsageError("--holdout must not be negative")
    default = "onehot,structural" if args.space else "structural"
    groups = tuple(g.strip() for g in (args.features or default).split(",") if g.strip())
    spec = FeatureSpec(groups, args.space)
    labels = load_labels(args.labels, args.target, space=args.space)
    target = args.target or "ort_latency_ms"
    total = len(labels.items)
    order = np.random.default_rng(args.seed).permutation(total)
    size = total if args.train_size is None else args.train_size
    if not 2 <= size <= total:
        raise UsageError(f"--train-size must be between 2 and the {total} labelled rows, got {size}")
    train, rest = order[:size], order[size:]
    targets = labels.targets.copy()
    if args.measure_latency:
        from graphopt.predict.latency import measure_arch_latency, measure_latency

        measured = np.concatenate([train, rest[: args.holdout]])
        progress(f"measuring the latency of {len(measured)} models ...")
        items = [labels.items[i] for i in measured]
        targets[measured] = measure_arch_latency(args.space, items) if args.space else measure_latency(items)
    progress(f"featurizing and fitting {size} rows ...")
    started = time.perf_counter()
    predictor = train_predictor(
        [labels.items[i] for i in train], targets[train], spec=spec, model=args.model,
        members=args.members, seed=args.seed, cache_dir=args.cache,
        info={"labels": labels.source, "target": target, "rows": total},
    )
    elapsed = time.perf_counter() - started
    summary = {"output": str(args.output), "model": args.model, "features": list(groups), "space": args.space,
               "target": target, "train_size": size, "rows": total, "train_s": round(elapsed, 2),
               "heads": sorted(predictor.heads)}
    if "zero_cost_s_per_item" in predictor.info:
        summary["zero_cost_s_per_item"] = predictor.info["zero_cost_s_per_item"]
    held = rest[: args.holdout]
    if len(held) >= 2:
        items = [labels.items[i] for i in held]
        scores = predictor.score_archs(items) if args.space else predictor.score_models(items)
        actual = targets[held]
        summary["holdout"] = {"rows": len(held), "kendall_tau": round(kendall_tau(scores.mean, actual), 4),
                              "spearman": round(spearman(scores.mean, actual), 4)}
        predictor.info["holdout"] = summary["holdout"]
    save_predictor(predictor, args.output)
    if args.json:
        emit_json(summary)
        return 0
    print(f"trained {args.model} predictor of {target} on {size} of {total} rows "
          f"(features {'+'.join(groups)}, heads {', '.join(summary['heads'])}) in {elapsed:.1f} s -> {args.output}")
    if "zero_cost_s_per_item" in summary:
        print(f"zero-cost features: {summary['zero_cost_s_per_item']:.2f} s per graph (median, computed or cached)")
    if "holdout" in summary:
        h = summary["holdout"]
        print(f"held-out {h['rows']} rows: Kendall tau {h['kendall_tau']:.3f}, Spearman {h['spearman']:.3f}")
    return 0
