"""Quantization schemes on all-MiniLM-L6-v2 and a digits classifier, side by side with onnxruntime's
quantizers (``quantize_dynamic``, ``quantize_static``, ``MatMulNBitsQuantizer``) in the same run.

MiniLM: standard-library docstring sentences, calibration and evaluation sets disjoint (the first
``CALIB`` sentences calibrate, the next ``EVAL`` evaluate). Per model: mean cosine of the sentence
embeddings to fp32, nearest-neighbour agreement (each evaluation sentence's nearest other sentence is
the same as with fp32), file bytes, and latency relative to fp32 at batch 8 and batch 1 (128 tokens),
measured in one worker process with all models alternating (2 threads).

Digits: a small transformer (rows of the 8x8 image as 8 tokens) trained on scikit-learn's digits;
test accuracy of fp32 and of every scheme. ``GRAPHOPT_SCHEMES`` is the hook other schemes plug into.

    .venv/bin/python bench/quantize_minilm.py [--quick]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench import _common
from bench._common import log

# (label, graphopt scheme, options for graphopt.quantize.quantize): add rows here for new schemes.
GRAPHOPT_SCHEMES: list[tuple[str, str, dict[str, Any]]] = [
    ("graphopt w8a8 (percentile)", "w8a8", {}),
    ("graphopt w8a8 + SmoothQuant 0.8", "w8a8", {"smooth_alpha": 0.8}),
    ("graphopt w8a8 + SmoothQuant 0.8, fidelity >= 0.998", "w8a8", {"smooth_alpha": 0.8, "target_fidelity": 0.998}),
    ("graphopt w8a8-dynamic", "w8a8-dynamic", {}),
    ("graphopt w4a16 (GPTQ, blocks of 32, MatMulNBits)", "w4a16", {}),
    ("graphopt w4a16 (RTN, blocks of 32, MatMulNBits)", "w4a16", {"weight_method": "rtn"}),
    ("graphopt w3a16 (GPTQ)", "w3a16", {}),
    ("graphopt nf4", "nf4", {}),
    ("graphopt mixed:3 (BAQ, GPTQ)", "mixed:3", {}),
    ("graphopt fp16", "fp16", {}),
    ("graphopt fp8 (E4M3 weights)", "fp8", {}),
]
CALIB, EVAL, SEQUENCE, THREADS = 64, 128, 128, 2


def _ort_dynamic(src: Path, dst: Path, calib: dict[str, np.ndarray]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


def _ort_static(src: Path, dst: Path, calib: dict[str, np.ndarray]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            n = len(next(iter(calib.values())))
            self.batches = iter([{k: v[i : i + 8] for k, v in calib.items()} for i in range(0, n, 8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    quantize_static(str(src), str(dst), Reader())


def _ort_nbits(src: Path, dst: Path, calib: dict[str, np.ndarray]) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), block_size=32, is_symmetric=False)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)


PEERS: list[tuple[str, Callable[[Path, Path, dict[str, np.ndarray]], None]]] = [
    ("onnxruntime quantize_dynamic (int8)", _ort_dynamic),
    ("onnxruntime quantize_static (QDQ, MinMax)", _ort_static),
    ("onnxruntime MatMulNBits (4-bit, blocks of 32)", _ort_nbits),
]


def _graphopt(scheme: str, options: dict[str, Any]) -> Callable[[Path, Path, dict[str, np.ndarray]], dict[str, Any]]:
    def run(src: Path, dst: Path, calib: dict[str, np.ndarray]) -> dict[str, Any]:
        from graphopt._io import load_model, save_model
        from graphopt.quantize import quantize

        result = quantize(load_model(src), scheme, calib, **options)
        save_model(result.model, dst)
        return {"fidelity": result.fidelity, "fallback": list(result.fallback), "trials": result.trials}

    return run


def _run(path: Path, feeds: dict[str, np.ndarray], batch: int = 16) -> np.ndarray:
    from graphopt.runtime import make_session

    session = make_session(path, threads=THREADS)
    n = len(next(iter(feeds.values())))
    return np.concatenate([session.run(None, {k: v[i : i + batch] for k, v in feeds.items()})[0]
                           for i in range(0, n, batch)])


def _embedding_scores(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    a = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    b = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-30)
    sim_a, sim_b = a @ a.T, b @ b.T
    np.fill_diagonal(sim_a, -np.inf)
    np.fill_diagonal(sim_b, -np.inf)
    return {
        "mean_cosine": float((a * b).sum(axis=1).mean()),
        "min_cosine": float((a * b).sum(axis=1).min()),
        "nn_agreement": float((sim_a.argmax(axis=1) == sim_b.argmax(axis=1)).mean()),
    }


def _quantize_all(original: Path, folder: Path, calib: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [{"label": "fp32 (original)", "path": original, "tool_s": 0.0}]
    tools: list[tuple[str, Callable[..., Any]]] = [
        *((label, _graphopt(scheme, options)) for label, scheme, options in GRAPHOPT_SCHEMES), *PEERS,
    ]
    for index, (label, tool) in enumerate(tools):
        dst = folder / f"model{index}.onnx"
        log(f"quantizing: {label}")
        started = time.perf_counter()
        row: dict[str, Any] = {"label": label, "path": dst}
        try:
            with _common.stdout_to_stderr():
                extra = tool(original, dst, calib)
            row.update(extra or {})
        except Exception as exc:  # a peer that fails is a result, not a crash of the benchmark
            row["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            log(f"  failed: {row['error']}")
        row["tool_s"] = round(time.perf_counter() - started, 2)
        rows.append(row)
    return rows


def _latency(rows: list[dict[str, Any]], feeds: dict[str, np.ndarray], batch: int, runs: int) -> None:
    from graphopt.bench import benchmark

    ok = [r for r in rows if "error" not in r]
    log(f"latency at batch {batch}: {len(ok)} models alternating, {runs} rounds")
    report = benchmark([r["path"] for r in ok], {k: v[:batch] for k, v in feeds.items()},
                       threads=THREADS, warmup=3, runs=runs, min_seconds=0)
    ok[0][f"latency_b{batch}"] = {"median": 1.0, "p10": 1.0, "p90": 1.0, "ms": report.models[0].median_ms}
    for ratio in report.ratios:
        ok[ratio.model][f"latency_b{batch}"] = {
            "median": ratio.median, "p10": ratio.p10, "p90": ratio.p90, "ms": report.models[ratio.model].median_ms,
        }


def minilm(cache: Path, quick: bool) -> dict[str, Any]:
    from graphopt.data import stdlib_sentences, tokenize
    from graphopt.frontend import export_sentence_embedder, minilm_dir

    original = cache / "minilm-dynamo.onnx"
    if not original.exists():
        log("exporting all-MiniLM-L6-v2 (dynamo)")
        export_sentence_embedder(minilm_dir(), original, exporter="dynamo")
    sentences = stdlib_sentences(CALIB + EVAL, seed=0)
    feeds = tokenize(minilm_dir(), sentences, sequence=SEQUENCE)
    calib = {k: v[:CALIB] for k, v in feeds.items()}
    evaluation = {k: v[CALIB:] for k, v in feeds.items()}
    folder = Path(tempfile.mkdtemp(prefix="quantize-minilm-", dir=cache))
    rows = _quantize_all(original, folder, calib)
    reference = _run(original, evaluation)
    for row in rows:
        if "error" in row:
            continue
        row.update(_embedding_scores(reference, _run(row["path"], evaluation)))
        row["bytes"] = _common.model_stats(row["path"])["bytes"]
        log(f"  {row['label']}: cosine {row['mean_cosine']:.4f}, nn {row['nn_agreement']:.3f}")
    _latency(rows, evaluation, 8, 8 if quick else 20)
    _latency(rows, evaluation, 1, 10 if quick else 40)
    for row in rows:
        row["path"] = str(row["path"])
    return {"model": "all-MiniLM-L6-v2 (dynamo export)", "calib_sentences": CALIB, "eval_sentences": EVAL,
            "sequence": SEQUENCE, "rows": rows}


def _digits_model(seed: int = 0) -> tuple[Any, dict[str, np.ndarray]]:
    """A 1-layer transformer over the 8 rows of each 8x8 digit, trained for a few seconds."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 8, 8)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)

    class Net(torch.nn.Module):
        def __init__(self, d: int = 64) -> None:
            super().__init__()
            self.embed = torch.nn.Linear(8, d)
            self.pos = torch.nn.Parameter(torch.zeros(8, d))
            self.qkv = torch.nn.Linear(d, 3 * d)
            self.proj = torch.nn.Linear(d, d)
            self.norm1, self.norm2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
            self.ff1, self.ff2 = torch.nn.Linear(d, 4 * d), torch.nn.Linear(4 * d, d)
            self.head = torch.nn.Linear(d, 10)

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            h = self.embed(pixels) + self.pos
            q, k, v = self.qkv(self.norm1(h)).chunk(3, dim=-1)
            attn = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)
            h = h + self.proj(attn @ v)
            h = h + self.ff2(torch.nn.functional.gelu(self.ff1(self.norm2(h))))
            return self.head(h.mean(dim=1))

    torch.manual_seed(seed)
    net = Net()
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _epoch in range(40):
        order = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = order[i : i + 64]
            loss = torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net.eval(), {"x_train": x_train, "x_test": x_test, "y_test": y_test}


def digits(cache: Path) -> dict[str, Any]:
    from graphopt.frontend import export_module

    log("digits: training a small transformer on scikit-learn's digits")
    net, data = _digits_model()
    import torch

    folder = Path(tempfile.mkdtemp(prefix="quantize-digits-", dir=cache))
    original = folder / "digits.onnx"
    export_module(net, (torch.from_numpy(data["x_test"][:4]),), original, input_names=["pixels"],
                  output_names=["logits"], dynamic_axes={"pixels": {0: "batch"}})
    calib = {"pixels": data["x_train"][:256]}
    rows = _quantize_all(original, folder, calib)
    for row in rows:
        if "error" in row:
            continue
        logits = _run(row["path"], {"pixels": data["x_test"]}, batch=64)
        row["accuracy"] = float((logits.argmax(axis=1) == data["y_test"]).mean())
        row["path"] = str(row["path"])
        log(f"  {row['label']}: accuracy {row['accuracy']:.4f}")
    for row in rows:
        row["path"] = str(row["path"])
    return {"model": "1-layer transformer (d=64) on sklearn digits", "test_samples": len(data["y_test"]),
            "calib_samples": 256, "rows": rows}


def _fmt_latency(row: dict[str, Any], key: str) -> str:
    lat = row.get(key)
    return f"{lat['median']:.3f} ({lat['p10']:.2f}-{lat['p90']:.2f})" if lat else "-"


def markdown(result: dict[str, Any]) -> str:
    m = result["minilm"]
    ort_version = result["machine"]["versions"]["onnxruntime"]
    lines = [
        "# Quantization on all-MiniLM-L6-v2 and a digits classifier",
        "",
        f"{m['calib_sentences']} calibration and {m['eval_sentences']} disjoint evaluation sentences from "
        f"standard-library docstrings, {m['sequence']} tokens; latency relative to fp32 (median, p10-p90), "
        f"models alternating in one worker, {THREADS} threads, onnxruntime {ort_version}.",
        "",
        "| model | mean cosine | min cosine | NN agreement | bytes | latency b8 | latency b1 | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in m["rows"]:
        if "error" in row:
            lines.append(f"| {row['label']} | - | - | - | - | - | - | failed: {row['error'][:120]} |")
            continue
        note = ""
        if row.get("fidelity"):
            note = f"fallback: {len(row['fallback'])} site(s), held-out fidelity {row['fidelity']:.4f}"
        lines.append(
            f"| {row['label']} | {row['mean_cosine']:.4f} | {row['min_cosine']:.4f} | {row['nn_agreement']:.3f} | "
            f"{row['bytes'] / 1e6:.1f} MB | {_fmt_latency(row, 'latency_b8')} | {_fmt_latency(row, 'latency_b1')} | "
            f"{note} |"
        )
    d = result["digits"]
    lines += ["", f"## {d['model']}: test accuracy ({d['test_samples']} images)", ""]
    lines += ["| model | accuracy |", "|---|---|"]
    for row in d["rows"]:
        lines.append(f"| {row['label']} | {row['accuracy']:.4f} |" if "accuracy" in row
                     else f"| {row['label']} | failed: {row.get('error', '')[:120]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer latency rounds (a smoke test)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "graphopt-quantize-bench")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    args.cache.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"benchmark": "quantize_minilm", "quick": args.quick, "machine": _common.machine_info()}
    result["minilm"] = minilm(args.cache, args.quick)
    result["digits"] = digits(args.cache)
    result["total_seconds"] = round(_common.elapsed(), 1)
    text = markdown(result)
    _common.write_json(args.out / "quantize_minilm.json", result)
    _common.write_atomic(args.out / "quantize_minilm.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
