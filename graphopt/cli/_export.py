"""``graphopt export MODEL --target TARGET -o DIR``: lower for a runtime and write a deployable bundle."""

from __future__ import annotations

import argparse
from typing import Any

from graphopt.cli._common import add_feed_args, emit_json, progress, resolve_feeds

_TARGET_HELP = "ort-cpu, ort-cuda, ort-tensorrt, ort-format (.ort for mobile/edge) or onnx-opsetN (e.g. onnx-opset17)"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="lower a model for a runtime target and write a deployable bundle",
        description="Lower MODEL for TARGET (MatMulNBits, float16, opset conversion, onnxruntime's offline "
        "optimisation, .ort format), report every node that would fall back to another execution provider "
        "or is unsupported, verify against MODEL in onnxruntime (on the target's GPU provider where this machine "
        "has it, else on CPU), and write DIR atomically: the model, manifest.json, compatibility.json and "
        "run_example.py.",
    )
    parser.add_argument("model", help="input model (.onnx)")
    parser.add_argument("--target", required=True, help=_TARGET_HELP)
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="bundle folder to create")
    parser.add_argument("--force", action="store_true", help="replace DIR if it exists and is not empty")
    add_feed_args(parser)
    parser.add_argument("--no-verify", action="store_true", help="skip verification against MODEL")
    parser.add_argument("--bench", action="store_true",
                        help="also measure the latency ratio vs MODEL (on the provider verification ran on)")
    parser.add_argument(
        "--on-device", choices=("auto", "require", "off"), default="auto",
        help="GPU targets: verify, read node placement and bench on the target's provider when it is usable "
        "here (auto, the default), fail when it is not (require), or stay on CPU (off)",
    )
    parser.add_argument("--threads", type=int, help="onnxruntime threads for --bench")
    parser.add_argument(
        "--external-data-mib", type=float, metavar="MIB",
        help="store weights in model.onnx.data when they total at least MIB MiB (default 1024)",
    )
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from graphopt._io import EXTERNAL_DATA_THRESHOLD, load_model
    from graphopt.errors import UsageError
    from graphopt.export.bundle import check_output_dir
    from graphopt.export.exporter import export_model
    from graphopt.export.targets import parse_target

    spec = parse_target(args.target)
    if args.external_data_mib is not None and args.external_data_mib < 0:
        raise UsageError("--external-data-mib must not be negative")
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be at least 1")
    check_output_dir(args.output, force=args.force, inputs=(args.model,))
    original = load_model(args.model)
    feeds = None if args.no_verify and not args.bench else resolve_feeds(args, original)
    threshold = EXTERNAL_DATA_THRESHOLD if args.external_data_mib is None else int(args.external_data_mib * (1 << 20))
    result = export_model(
        args.model, spec, args.output, feeds=feeds, original=original, force=args.force,
        verify=not args.no_verify, bench=args.bench, threads=args.threads, external_data_threshold=threshold,
        progress=None if args.json else lambda message: progress(f"  {message} ..."), on_device=args.on_device,
    )
    if args.json:
        emit_json(result.manifest)
    else:
        _print(result.manifest, result.compatibility)
        print(f"wrote {args.output}")
    return 0


def _print(manifest: dict[str, Any], compatibility: Any) -> None:
    rows = [
        ("target", manifest["target"]["name"]),
        ("model", ", ".join(f"{f['name']} ({f['bytes']} bytes)" for f in manifest["model"]["files"])),
        ("nodes", f"{manifest['source']['nodes']} -> {manifest['model']['nodes']}"),
    ]
    for step in manifest["lowering"]:
        rows.append((step["step"], step["detail"] if step["applied"] else f"not applied: {step['detail']}"))
    counts = compatibility.counts
    rows.append(("compatibility", f"{compatibility.method}: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)))
    verification = manifest["verification"]
    if verification.get("ran"):
        where = "CPU" if verification["provider"] == "CPUExecutionProvider" else verification["provider"]
        rows.append(("verification", f"ok on {where}, max abs error {verification['max_abs']:.3g}, "
                                     f"min cosine {verification['min_cosine']:.6f}"))
    else:
        rows.append(("verification", f"not run: {verification['reason']}"))
    device = manifest.get("device") or {}
    if device.get("placement"):
        placed = device["placement"]
        rows.append(("node placement", ", ".join(f"{n} on {p}" for p, n in placed["counts"].items())
                     + " (onnxruntime's optimised graph)"))
    elif device.get("provider") not in (None, "CPUExecutionProvider"):
        rows.append(("on device", f"not run: {device['reason']}"))
    if manifest.get("benchmark") and "error" in manifest["benchmark"]:
        rows.append(("latency vs source", f"not measured: {manifest['benchmark']['error']}"))
    elif manifest.get("benchmark"):
        ratio = manifest["benchmark"]["latency_ratio"]
        rows.append(("latency vs source", f"{ratio['median']:.3f}x (p10 {ratio['p10']:.2f}, p90 {ratio['p90']:.2f})"))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    for problem in compatibility.to_dict()["problems"]:
        where = problem["provider"] or "nowhere"
        print(f"  {problem['status']}: {problem['op']} x{len(problem['nodes'])} -> {where}: {problem['reason']}")
