"""Export all-MiniLM-L6-v2 (fp32, 4-bit weights, w8a8) to every target and record what each bundle holds.

For each source model and target, ``graphopt.export.export_model`` lowers the model, checks every
node against the target, verifies the bundle's model against the source in onnxruntime on CPU
(real sentences: standard-library docstrings, batch 8 x 128 tokens) and, for targets that run on
the CPU, measures the latency ratio bundle / source in one worker process (models alternating,
2 threads). GPU targets are checked structurally only (no GPU here) and get no CPU latency. The w8a8
model (``graphopt.quantize`` scheme ``w8a8``, calibrated on 32 other standard-library sentences) goes to
``ort-tensorrt`` only; for every ``ort-tensorrt`` export a second table gives what the TensorRT lowering
changed, the TensorRT rejections of the structural check before and after it, and the mean per-sentence
cosine of the embeddings to the fp32 model's on CPU, before (the source) and after the lowering.

Run: ``.venv/bin/python bench/export_minilm.py [--out bench/results] [--cache DIR]``; writes
``export_minilm.json`` and ``export_minilm.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import _common
from _common import log

TARGETS = ("ort-cpu", "ort-cuda", "ort-tensorrt", "ort-format", "onnx-opset17", "onnx-opset20")
CPU_TARGETS = {"ort-cpu", "ort-format", "onnx-opset17", "onnx-opset20"}
BATCH, SEQUENCE, THREADS = 8, 128, 2
W4 = {"bits": 4, "block_size": 32, "symmetric": False}
CALIBRATION = 32
SOURCE_TARGETS = {"w8a8": ("ort-tensorrt",)}
"""Sources exported to some targets only (the others go to every target)."""


def sources(cache: Path, calib: dict[str, Any]) -> dict[str, Path]:
    """The fp32 dynamo export of MiniLM, its 4-bit weight-only quantization (README recipe) and w8a8."""
    from graphopt._io import load_model, save_model
    from graphopt.frontend import export_sentence_embedder, minilm_dir
    from graphopt.passes import create_pass, run_passes

    fp32 = cache / "minilm-fp32.onnx"
    if not fp32.exists():
        log("exporting all-MiniLM-L6-v2 (dynamo)")
        with _common.stdout_to_stderr():
            export_sentence_embedder(minilm_dir(), fp32, exporter="dynamo")
    w4 = cache / "minilm-w4.onnx"
    if not w4.exists():
        log("quantizing weights to 4 bits (blocks of 32, asymmetric)")
        model = load_model(fp32)
        run_passes(model, [create_pass("fold-constants"), create_pass("quantize-weights", W4)])
        save_model(model, w4)
    w8a8 = cache / "minilm-w8a8.onnx"
    if not w8a8.exists():
        from graphopt.quantize import quantize

        log(f"quantizing w8a8 (calibration: {CALIBRATION} sentences)")
        save_model(quantize(load_model(fp32), "w8a8", calib).model, w8a8)
    return {"fp32": fp32, "w4": w4, "w8a8": w8a8}


def tensorrt_row(source: Path, bundle: Path, reference: list[Any], feeds: dict[str, Any]) -> dict[str, Any]:
    """What ``lower-tensorrt`` changes in ``source``, TensorRT rejections before/after, cosine to fp32."""
    from graphopt._io import load_model
    from graphopt.export.compatibility import check_compatibility
    from graphopt.export.targets import parse_target
    from graphopt.export.tensorrt import LowerTensorrtPass
    from graphopt.quantize import fidelity
    from graphopt.runtime import make_session

    spec = parse_target("ort-tensorrt")
    model = load_model(source)
    lowered = load_model(bundle / "model.onnx")
    lower = LowerTensorrtPass()
    lower(model.clone())

    def rejections(m: Any) -> int:
        return sum(1 for n in check_compatibility(m, spec).nodes if n.status != "native")

    def cosine(path: Path) -> float:
        return fidelity(reference, make_session(path, optimization="basic").run(None, feeds))

    return {
        "changes": dict(lower.report),
        "nodes_lowered": sum(lower.report.values()),
        "rejections_before": rejections(model),
        "rejections_after": rejections(lowered),
        "cosine_to_fp32_before": cosine(source),
        "cosine_to_fp32_after": cosine(bundle / "model.onnx"),
    }


def export_one(source: Path, target: str, folder: Path, feeds: dict[str, Any], reference: list[Any]) -> dict[str, Any]:
    from graphopt.errors import GraphoptError
    from graphopt.export import export_model

    folder.mkdir(parents=True, exist_ok=True)
    out = folder / target
    shutil.rmtree(out, ignore_errors=True)
    try:
        result = export_model(source, target, out, feeds=feeds, bench=target in CPU_TARGETS, threads=THREADS)
    except GraphoptError as exc:
        return {"target": target, "error": f"{type(exc).__name__}: {exc}"}
    manifest = result.manifest
    verification = manifest["verification"]
    tensorrt = tensorrt_row(source, out, reference, feeds) if target == "ort-tensorrt" else None
    return {
        "target": target,
        "bytes": sum(f["bytes"] for f in manifest["model"]["files"]),
        "source_bytes": manifest["source"]["bytes"],
        "files": [f["name"] for f in manifest["model"]["files"]],
        "nodes": manifest["model"]["nodes"],
        "source_nodes": manifest["source"]["nodes"],
        "lowering": [
            {"step": s["step"], "applied": s["applied"], "detail": s["detail"]} for s in manifest["lowering"]
        ],
        "compatibility": manifest["compatibility"],
        "problems": [
            {k: p[k] for k in ("op", "status", "provider", "reason")} | {"count": len(p["nodes"])}
            for p in result.compatibility.to_dict()["problems"]
        ],
        "verification": {k: verification.get(k) for k in ("ran", "passed", "max_abs", "min_cosine", "reason",
                                                          "optimization", "atol", "rtol")},
        "benchmark": manifest["benchmark"],
        "tensorrt": tensorrt,
    }


def _latency(entry: dict[str, Any]) -> str:
    bench = entry.get("benchmark")
    if not bench:
        return "- (GPU target)" if entry["target"] not in CPU_TARGETS else "-"
    if "error" in bench:
        return f"not measured: {bench['error']}"
    r = bench["latency_ratio"]
    return f"{r['median']:.3f} ({r['p10']:.2f}-{r['p90']:.2f})"


def _verification(entry: dict[str, Any]) -> str:
    v = entry["verification"]
    if not v["ran"]:
        return f"not run: {v['reason']}"
    verdict = "ok" if v["passed"] else "FAIL"
    return f"{verdict}, max abs {v['max_abs']:.2g}"


def _compatibility(entry: dict[str, Any]) -> str:
    counts = entry["compatibility"]["counts"]
    text = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    extra = "; ".join(f"{p['count']} {p['op']} -> {p['provider'] or 'none'}" for p in entry["problems"])
    return f"{text} ({extra})" if extra else text


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# graphopt export: all-MiniLM-L6-v2 per target",
        "",
        f"onnxruntime {result['machine']['versions'].get('onnxruntime')}, {result['machine']['cpu_model']}, "
        f"{THREADS} threads, feeds: {BATCH} standard-library sentences x {SEQUENCE} tokens. Latency is bundle / "
        "source, median (p10-p90) over alternating rounds in one worker; GPU targets are checked structurally "
        "and verified on CPU only.",
        "",
        "| source | target | bytes (source -> bundle) | nodes | lowering applied | compatibility | "
        "verification on CPU | latency vs source (CPU) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, entries in result["sources"].items():
        for entry in entries:
            if "error" in entry:
                lines.append(f"| {name} | {entry['target']} | - | - | - | - | {entry['error']} | - |")
                continue
            applied = ", ".join(s["step"] for s in entry["lowering"] if s["applied"]) or "none"
            skipped = [f"{s['step']} skipped" for s in entry["lowering"] if not s["applied"]]
            if skipped:
                applied += " (" + "; ".join(skipped) + ")"
            lines.append(
                f"| {name} | {entry['target']} | {entry['source_bytes']:,} -> {entry['bytes']:,} | "
                f"{entry['source_nodes']} -> {entry['nodes']} | {applied} | {_compatibility(entry)} | "
                f"{_verification(entry)} | {_latency(entry)} |"
            )
    lines += [
        "",
        "## ort-tensorrt: what the TensorRT lowering (`lower-tensorrt`) did",
        "",
        "Rejections: nodes the structural TensorRT check does not give to TensorRT, in the source and in the bundle. "
        "Cosine: mean per-sentence cosine of the embeddings to the fp32 model's, onnxruntime on CPU, before (source) "
        "and after the lowering (bundle).",
        "",
        "| source | nodes lowered | changes | TRT rejections before -> after | cosine to fp32 before -> after |",
        "|---|---|---|---|---|",
    ]
    for name, entries in result["sources"].items():
        for entry in entries:
            trt = entry.get("tensorrt")
            if not trt:
                continue
            changes = "; ".join(f"{n} {what}" for what, n in sorted(trt["changes"].items())) or "none"
            lines.append(
                f"| {name} | {trt['nodes_lowered']} | {changes} | {trt['rejections_before']} -> "
                f"{trt['rejections_after']} | {trt['cosine_to_fp32_before']:.4f} -> {trt['cosine_to_fp32_after']:.4f} |"
            )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "graphopt-bench-cache")
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args.cache.mkdir(parents=True, exist_ok=True)
    from graphopt.data import stdlib_sentences, tokenize
    from graphopt.frontend import minilm_dir
    from graphopt.runtime import make_session

    machine = _common.machine_info()
    sentences = stdlib_sentences(BATCH + CALIBRATION, seed=0)
    feeds = tokenize(minilm_dir(), sentences[:BATCH], sequence=SEQUENCE)
    models = sources(args.cache, tokenize(minilm_dir(), sentences[BATCH:], sequence=SEQUENCE))
    reference = make_session(models["fp32"], optimization="basic").run(None, feeds)
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="export-minilm-", dir=args.cache) as scratch:
        for name, path in models.items():
            results[name] = []
            for target in args.targets:
                if target not in SOURCE_TARGETS.get(name, TARGETS):
                    continue
                log(f"{name} -> {target}")
                results[name].append(export_one(path, target, Path(scratch) / name, feeds, reference))
    result = {
        "benchmark": "export_minilm",
        "settings": {"batch": BATCH, "sequence": SEQUENCE, "threads": THREADS, "w4": W4, "targets": args.targets,
                     "w8a8_calibration_sentences": CALIBRATION, "source_targets": SOURCE_TARGETS},
        "machine": machine,
        "total_seconds": round(_common.elapsed(), 1),
        "sources": results,
    }
    text = markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    _common.write_json(args.out / "export_minilm.json", result)
    _common.write_atomic(args.out / "export_minilm.md", text)
    log(f"wrote {args.out / 'export_minilm.json'} and {args.out / 'export_minilm.md'}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
