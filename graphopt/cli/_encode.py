"""``graphopt encode MODEL``: the ONNX-Net style text encoding of a graph, or its feature vector."""

from __future__ import annotations

import argparse

from graphopt.cli._common import add_shape_arg, emit_json, print_table

_VARIANTS = ("ops", "params", "shapes", "full")  # graphopt.predict.VARIANTS, kept here for a fast --help


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "encode",
        help="write a model as ONNX-Net style text (operator chains) or structural features",
        description="Print the ONNX-Net style text encoding of MODEL's graph (operator chains, named "
        "multi-input nodes, Param[dims], attributes, inferred shapes); --features prints the "
        "structural feature vector instead, --json both.",
    )
    parser.add_argument("model", metavar="MODEL", help="model to encode (.onnx)")
    parser.add_argument(
        "--variant",
        choices=_VARIANTS,
        default="full",
        help="what the text keeps: ops (operators and topology), params (+Param[dims]), "
        "shapes (+tensor shapes), full (all, with attributes; default)",
    )
    parser.add_argument("--features", action="store_true", help="print the structural feature vector instead")
    parser.add_argument("--json", action="store_true", help="print encoding and features as JSON")
    add_shape_arg(parser, "concrete shape of an input (repeatable)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from graphopt._io import load_model
    from graphopt.feeds import parse_shape_overrides
    from graphopt.predict import encode_graph, structural_features

    model = load_model(args.model)
    shapes = parse_shape_overrides(args.shape)
    if args.json:
        emit_json(
            {
                "model": str(args.model),
                "variant": args.variant,
                "encoding": encode_graph(model, variant=args.variant, shapes=shapes),
                "features": structural_features(model, shapes=shapes),
            }
        )
    elif args.features:
        features = structural_features(model, shapes=shapes)
        print_table(("feature", "value"), [(k, _number(v)) for k, v in features.items()])
    else:
        print(encode_graph(model, variant=args.variant, shapes=shapes))
    return 0


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value
