"""``graphopt score``: one score per ONNX model or space architecture, in input order.

Scores come from a trained predictor (``--predictor PRED``) or a training-free metric
(``--metric NAME[,NAME]``, :mod:`graphopt.nas.metrics`); the source of the scores is one required,
mutually exclusive option group, and :func:`_scorer` has a branch per source. With several metrics
each line holds one score per metric (JSON: one object per model).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graphopt.cli._common import emit_json

#: a scorer maps ONNX paths or (space, architecture strings) to (scores, spreads or None)
Scorer = Callable[..., tuple[list[float], list[float] | None]]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score ONNX models or architectures with a predictor",
        description="Print one score per model (or per architecture of --archs), in input order. "
        "A predictor trained on a space scores ONNX files zero-shot with its graph-level head.",
    )
    parser.add_argument("models", nargs="*", metavar="MODEL.onnx", help="models to score")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictor", metavar="PRED", help="predictor file from `graphopt predictor train`")
    source.add_argument("--metric", metavar="NAME[,NAME]",
                        help="training-free metric(s): synflow, snip, grad_norm, grasp, fisher, jacov, nwot, zen, "
                        "params, flops; for transformers hidden_cov, act_dist, syn_div, syn_sal, head_imp, attn_conf")
    parser.add_argument("--space", metavar="SPACE", help="search space of the --archs file")
    parser.add_argument("--archs", metavar="FILE", help="architectures of --space, one per line ('#' comments)")
    parser.add_argument("--json", action="store_true", help="print a JSON list of numbers")
    parser.add_argument("--std", action="store_true",
                        help="also give the ensemble spread: 'score std' per line, or JSON objects")
    parser.add_argument("--cache", metavar="DIR", help="cache graph features and text embeddings in DIR")
    parser.add_argument("--inputs", metavar="FEED.npz", help="--metric: the data batch (default: seeded N(0,1) feeds)")
    parser.add_argument("--seed", type=int, default=0, help="--metric: seed of weights of --archs, data, labels")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from graphopt.errors import InputError, UsageError

    if bool(args.archs) == bool(args.models):
        raise UsageError("give either MODEL.onnx files or --space SPACE --archs FILE")
    if args.archs and not args.space:
        raise UsageError("--archs needs --space")
    if args.space and not args.archs:
        raise UsageError("--space goes with --archs FILE (ONNX models need no space)")
    if args.metric and args.std:
        raise UsageError("--std goes with --predictor (a metric has no spread)")
    if args.inputs and not args.metric:
        raise UsageError("--inputs goes with --metric")
    scorer = _scorer(args)
    if args.archs:
        path = Path(args.archs)
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: cannot read ({exc})") from exc
        archs = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not archs:
            raise InputError(f"{path}: no architectures")
        scores, spreads = scorer(space=args.space, archs=archs)
    else:
        scores, spreads = scorer(models=args.models)
    if args.metric and len(names := _metric_names(args)) > 1:
        rows = [scores[i:i + len(names)] for i in range(0, len(scores), len(names))]
        if args.json:
            emit_json([dict(zip(names, row)) for row in rows])
        else:
            for row in rows:
                print(" ".join(f"{v:.6g}" for v in row))
        return 0
    _print(scores, spreads if args.std else None, as_json=args.json)
    return 0


def _scorer(args: argparse.Namespace) -> Scorer:
    if args.metric:
        return _metric_scorer(args)
    from graphopt.predict import load_predictor

    predictor = load_predictor(args.predictor, cache_dir=args.cache)

    def score(*, models: list[str] | None = None, space: str | None = None,
              archs: list[str] | None = None) -> tuple[list[float], list[float] | None]:
        result = predictor.score_models(models) if models else predictor.score_archs(archs or [], space=space)
        return [float(v) for v in result.mean], [float(v) for v in result.std]

    return score


def _metric_scorer(args: argparse.Namespace) -> Scorer:
    from graphopt._io import load_model
    from graphopt.feeds import input_specs, load_feeds
    from graphopt.nas.metrics import score_model_all
    from graphopt.nas.spaces import get_space

    names = _metric_names(args)

    def score(*, models: list[str] | None = None, space: str | None = None,
              archs: list[str] | None = None) -> tuple[list[float], list[float] | None]:
        if models:
            graphs = (load_model(m) for m in models)
        else:
            sp = get_space(space or "")
            parsed = [sp.parse(a) for a in archs or []]
            graphs = (sp.build(a, seed=args.seed) for a in parsed)
        rows: list[float] = []
        for model in graphs:
            data = load_feeds(args.inputs, input_specs(model)) if args.inputs else None
            values = score_model_all(model, names, data=data, seed=args.seed)
            rows.extend(values[n] for n in names)
        return rows, None

    return score


def _metric_names(args: argparse.Namespace) -> list[str]:
    from graphopt.errors import UsageError
    from graphopt.nas.metrics import get_metric

    names = [get_metric(m).name for m in str(args.metric).split(",") if m.strip()]
    if not names:
        raise UsageError("--metric needs a metric name")
    return names


def _print(scores: list[float], spreads: list[float] | None, *, as_json: bool) -> None:
    if as_json:
        data: list[Any] = scores if spreads is None else [{"score": s, "std": d} for s, d in zip(scores, spreads)]
        emit_json(data)
        return
    for k, value in enumerate(scores):
        print(f"{value:.6g}" if spreads is None else f"{value:.6g} {spreads[k]:.6g}")
