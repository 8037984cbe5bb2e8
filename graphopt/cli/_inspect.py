"""``graphopt inspect MODEL``: signature, operators, parameters, MACs/FLOPs and recognised blocks."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from graphopt.cli._common import add_shape_arg

__all__ = ["format_outliers", "format_report", "register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="summarise a model: signature, ops, parameters, MACs and repeated blocks",
        description="Summarise an ONNX model: inputs and outputs, operator histogram, parameter count, "
        "MAC/FLOP estimates at concrete input shapes, and the attention blocks, MLPs and "
        "convolution stages it recognises. The model is only read.",
    )
    parser.add_argument("model", metavar="MODEL", help="the .onnx file")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON (and nothing else)")
    parser.add_argument("--activations", metavar="CALIB.npz",
                        help="calibration feeds: add per-layer outlier statistics of attention outputs "
                        "(max |x|, kurtosis)")
    add_shape_arg(
        parser,
        "input shape for the cost estimate (repeatable); dynamic dims otherwise become "
        "1 on the first axis and 128 elsewhere",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from graphopt._io import load_model
    from graphopt.analysis import summarize
    from graphopt.cli._common import emit_json
    from graphopt.feeds import parse_shape_overrides

    shapes = parse_shape_overrides(args.shape)
    model = load_model(args.model)
    summary = summarize(model, shapes=shapes)
    outliers = _outliers(model, args.activations) if args.activations else None
    if args.json:
        data = summary.to_dict()
        if outliers is not None:
            data["outliers"] = {"layers": [dataclasses.asdict(o) for o in outliers[0]], "notes": outliers[1]}
        emit_json(data)
    else:
        print(format_report(summary, source=str(args.model)))
        if outliers is not None:
            print("\n" + format_outliers(*outliers))
    return 0


def _outliers(model: Any, path: str) -> tuple[list[Any], list[str]]:
    from graphopt.analysis._outliers import outlier_statistics
    from graphopt.feeds import input_specs, load_feeds

    return outlier_statistics(model, load_feeds(path, input_specs(model)))


def format_outliers(layers: list[Any], notes: list[str]) -> str:
    """The outlier table of :func:`graphopt.analysis._outliers.outlier_statistics`."""
    from graphopt.cli._common import format_table

    rows = [(o.layer, o.tensor, o.max_abs, o.kurtosis, o.tokens) for o in layers]
    lines = [f"attention output outliers ({len(rows)} layers)",
             format_table(["#", "tensor", "max |x|", "kurtosis", "tokens"], rows)]
    return "\n".join(lines + [f"  - {note}" for note in notes])


def format_report(summary: Any, *, source: str = "") -> str:
    """The human-readable report of a :class:`graphopt.analysis.ModelSummary`."""
    from graphopt.cli._common import format_table

    cost = summary.cost
    opsets = ", ".join(f"{d} {v}" for d, v in summary.opsets.items())
    at = ", ".join(f"{name}=[{','.join(map(str, dims))}]" for name, dims in cost.input_shapes.items())
    lines = [
        f"model       {source}" if source else "",
        f"producer    {summary.producer or '?'} (IR {summary.ir_version}; opsets {opsets})",
        f"nodes       {summary.node_count}",
        f"parameters  {summary.parameter_count:,} ({_bytes(summary.parameter_bytes)})",
        f"compute     {_si(cost.macs)} MACs, {_si(cost.flops)} FLOPs at {at or 'static shapes'}"
        + (" (partial)" if cost.partial else ""),
    ]
    lines = [line for line in lines if line]
    lines += [f"            {reason}" for reason in cost.reasons]
    lines += ["", "inputs", _io_table(summary.inputs), "", "outputs", _io_table(summary.outputs)]

    rows: list[tuple[Any, ...]] = [
        (op, n, _si(cost.macs_by_op.get(op, 0), zero="-"), _si(cost.flops_by_op.get(op, 0), zero="-"))
        for op, n in summary.op_histogram.items()
    ]
    lines += ["", "operators", format_table(["op", "count", "MACs", "FLOPs"], rows)]

    if summary.attention_blocks:
        rows = []
        for i, block in enumerate(summary.attention_blocks):
            projections = "qkv" if block.qkv_fused else "/".join(
                "+" if p is not None else "-" for p in (block.q_proj, block.k_proj, block.v_proj))
            rows.append((i, block.node, block.kind, _opt(block.num_heads), _opt(block.head_size),
                         _opt(block.kv_heads), _opt(block.hidden_size), projections,
                         "yes" if block.o_proj is not None else "-", "yes" if block.mask else "-",
                         "yes" if block.residual else "-", _si(block.macs)))
        headers = ["#", "at", "kind", "heads", "head size", "kv heads", "hidden", "q/k/v", "out proj", "mask",
                   "residual", "MACs"]
        lines += ["", f"attention blocks ({len(rows)})", format_table(headers, rows)]
    if summary.mlp_blocks:
        rows = [(i, b.up.node, b.down.node, b.activation, _opt(b.up.in_features), _opt(b.hidden_size),
                 _si(b.macs)) for i, b in enumerate(summary.mlp_blocks)]
        lines += ["", f"MLP blocks ({len(rows)})", format_table(
            ["#", "up", "down", "activation", "in", "hidden", "MACs"], rows)]
    if summary.conv_stages:
        rows = [(i, "x".join(map(str, s.resolution)) if s.resolution else "?",
                 ",".join(map(str, s.channels)) or "?", s.convs, _si(s.macs))
                for i, s in enumerate(summary.conv_stages)]
        lines += ["", f"conv stages ({len(rows)})", format_table(
            ["#", "resolution", "channels", "convs", "MACs"], rows)]
    if summary.notes:
        lines += ["", "notes"] + [f"  - {note}" for note in summary.notes]
    return "\n".join(lines)


def _io_table(infos: Any) -> str:
    from graphopt.cli._common import format_table

    rows = []
    for info in infos:
        shape = "?"
        if info.shape is not None:
            shape = "[" + ", ".join("?" if d is None else str(d) for d in info.shape) + "]"
        rows.append((info.name, info.dtype or "?", shape))
    return format_table(["name", "dtype", "shape"], rows)


def _opt(value: Any) -> str:
    return "?" if value is None else str(value)


def _si(value: int | None, *, zero: str = "0") -> str:
    """``4194304 -> '4.19M'``, ``None -> '?'``."""
    if value is None:
        return "?"
    if value == 0:
        return zero
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return str(value)


def _bytes(value: int) -> str:
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"
