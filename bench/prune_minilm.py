"""Structured pruning of all-MiniLM-L6-v2 with each importance method, in one run.

Standard-library docstring sentences: the first ``CALIB`` calibrate the data-driven importance
scores (activation, wanda), the next ``EVAL`` evaluate. Per configuration (25/50% of the heads
and/or MLP neurons of every layer, 1 or 2 layers dropped) and importance method: mean cosine of the
sentence embeddings to the unpruned model, nearest-neighbour agreement (each evaluation sentence's
nearest other sentence is the same as unpruned), parameters and MACs (at 1 x 128 tokens). Latency
relative to the unpruned model at batch 8 x 128 tokens is measured once per configuration (every
importance method gives the same shapes), all models alternating in one worker process (2 threads).

Healing: the activation-importance variant of every configuration (and every importance method at
``HEAL_ALL_AT``) is distilled towards the unpruned graph with graphopt's differentiable executor
(``graphopt.executor.finetune``, what ``graphopt finetune --teacher`` runs): cosine loss on the
sentence embedding, all initializers trainable, ``HEAL_STEPS`` Adam steps at batch 8 on the
calibration sentences only (``HEAL_SEQUENCE`` tokens: no calibration sentence is longer), one torch
thread; then the same fidelity measures on the evaluation sentences, in onnxruntime.

Digits: a small CNN trained with torch on scikit-learn's digits (8x8 images), exported with the dynamo
exporter; 25/50/75% of the output channels of every convolution pruned with each importance method
(calibration: 256 training images); test accuracy, parameters, MACs and latency (batch 256, same
alternating run, ``DIGITS_LATENCY_ROUNDS`` rounds) next to the unpruned network; activation importance
of conv channels is FLAP's fluctuation score with mean compensation (see ``graphopt.rewrites.prune.channels``).
Healing: every pruned network fine-tuned with the executor on the training split (cross-entropy on
the labels, ``DIGITS_HEAL_STEPS`` steps at batch 64); the unpruned network gets the same extra training as a control.

Hidden channels (``prune-hidden``, Minitron's embedding-channel pruning, 25/50% of the 384 channels of
the residual stream): the sentence embedding shrinks with the stream, so its cosine to the unpruned
embedding is taken with the removed channels as zeros (the pruned vector scattered back into 384
dimensions at the kept indices); NN agreement needs no such choice. Every importance method is
distilled, towards the unpruned embeddings' kept channels.

Extras: ThinK (25/50% of the query/key channels) and unstructured 50% / 2:4 masked sparsity on MiniLM,
with the same fidelity measures and latency (onnxruntime's CPU kernels are dense: no gain expected).

    .venv/bin/python bench/prune_minilm.py [--quick] [--only minilm|digits|extras|heal|hidden] [--latency-rounds N]

``--only`` reruns one part and keeps the other part's results from the existing JSON file; ``--only
heal`` recomputes the pruned MiniLM models (pruning is deterministic: their cosine must equal the
stored rows) and adds the healed measures to the stored rows; ``--only hidden`` (re)measures only the
hidden-channel rows, with their own latency run against the unpruned model, and merges them in.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench import _common
from bench._common import log

CALIB, EVAL, SEQUENCE, THREADS = 64, 128, 128, 2
CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("heads 25%", {"heads": 0.25}),
    ("heads 50%", {"heads": 0.5}),
    ("mlp 25%", {"mlp": 0.25}),
    ("mlp 50%", {"mlp": 0.5}),
    ("heads+mlp 25%", {"heads": 0.25, "mlp": 0.25}),
    ("heads+mlp 50%", {"heads": 0.5, "mlp": 0.5}),
    ("1 layer", {"layers": 1}),
    ("2 layers", {"layers": 2}),
    ("hidden 25%", {"hidden": 0.25}),
    ("hidden 50%", {"hidden": 0.5}),
]
HIDDEN_CONFIGS = [c for c in CONFIGS if "hidden" in c[1]]
METHODS = ("activation", "magnitude", "wanda", "random")
CHANNEL_FRACTIONS = (0.25, 0.5, 0.75)
HEAL_STEPS, HEAL_LR, HEAL_BATCH, HEAL_SEQUENCE = 40, 1e-4, 8, 64
HEAL_ALL_AT = "heads+mlp 50%"  # every importance method is healed here; elsewhere only activation
DIGITS_HEAL_STEPS, DIGITS_HEAL_LR = 200, 3e-3
DIGITS_LATENCY_ROUNDS = 400  # alternating rounds of few-ms runs: the median needs many on a shared machine
DIGITS_LATENCY_THREADS = 1  # a 2-thread pool on a loaded 2-CPU machine measures contention (p10-p90 0.03-20x)
DIGITS_ACTIVATION = ("Var(y_c) * ||W'_c||^2 over the layers reading channel c, the removed channels' mean "
                     "folded into their bias (FLAP)")


def _scores(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    a = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    b = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-30)
    sim_a, sim_b = a @ a.T, b @ b.T
    np.fill_diagonal(sim_a, -np.inf)
    np.fill_diagonal(sim_b, -np.inf)
    return {"mean_cosine": float((a * b).sum(axis=1).mean()), "min_cosine": float((a * b).sum(axis=1).min()),
            "nn_agreement": float((sim_a.argmax(axis=1) == sim_b.argmax(axis=1)).mean())}


def _kept(model: Any) -> list[int] | None:
    """The original indices of the embedding channels that hidden pruning kept (None: all)."""
    import json

    from graphopt.rewrites.prune.hidden import HIDDEN_KEY

    raw = model.metadata_props.get(HIDDEN_KEY)
    return json.loads(raw)["sentence_embedding"] if raw else None


def _embed(model: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Sentence embeddings; after hidden pruning scattered back to 384 dims, removed channels as 0."""
    from graphopt.runtime import make_session

    session = make_session(model, threads=THREADS)
    parts = [session.run(None, {k: v[i:i + 16] for k, v in feeds.items()})[0] for i in range(0, EVAL, 16)]
    out = np.concatenate(parts)
    kept = _kept(model)
    if kept is None:
        return out
    full = np.zeros((len(out), 384), dtype=out.dtype)
    full[:, kept] = out
    return full


def _kept_cosine(model: Any, reference: np.ndarray, embedded: np.ndarray) -> float | None:
    """Mean cosine on the kept channels only (hidden pruning), else None."""
    kept = _kept(model)
    if kept is None:
        return None
    a, b = reference[:, kept], embedded[:, kept]
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).mean())


def _heal_data(original: Path) -> dict[str, np.ndarray]:
    """The calibration sentences at ``HEAL_SEQUENCE`` tokens and, keyed by the output name, the
    unpruned model's embeddings of them (the distillation targets, computed once)."""
    from graphopt.data import stdlib_sentences, tokenize
    from graphopt.frontend import minilm_dir
    from graphopt.runtime import make_session

    feeds = tokenize(minilm_dir(), stdlib_sentences(CALIB + EVAL, seed=0)[:CALIB], sequence=HEAL_SEQUENCE)
    truncated = int(feeds["attention_mask"][:, -1].sum())
    if truncated:
        log(f"heal: {truncated} calibration sentences truncated at {HEAL_SEQUENCE} tokens")
    session = make_session(original, threads=THREADS)
    return {**feeds, session.get_outputs()[0].name: session.run(None, feeds)[0]}


def _heal(model: Any, data: dict[str, np.ndarray], evaluation: dict[str, np.ndarray],
          reference: np.ndarray) -> dict[str, Any]:
    """Distil ``model`` (in place) towards the targets in ``data``; fidelity on the evaluation sentences."""
    import torch

    from graphopt.executor import finetune

    torch.set_num_threads(1)
    kept = _kept(model)
    if kept is not None:  # distil towards the teacher's kept channels
        data = {k: v[:, kept] if k == "sentence_embedding" else v for k, v in data.items()}
    result = finetune(model, data, trainable="all", steps=HEAL_STEPS, lr=HEAL_LR, batch_size=HEAL_BATCH,
                      loss="cosine", seed=0)
    embedded = _embed(model, evaluation)
    extra = {"kept_cosine": _kept_cosine(model, reference, embedded)} if kept is not None else {}
    return {**_scores(reference, embedded), **extra, "train_loss_before": result.loss_before,
            "train_loss_after": result.loss_after, "seconds": round(result.seconds, 1)}


def _heals(label: str, method: str) -> bool:
    return method == "activation" or label == HEAL_ALL_AT or label.startswith("hidden")


def _log_heal(row: dict[str, Any]) -> None:
    healed = row["healed"]
    log(f"{row['config']:14s} {row['importance']:10s} healed: cosine {row['mean_cosine']:.4f} -> "
        f"{healed['mean_cosine']:.4f}, nn {row['nn_agreement']:.3f} -> {healed['nn_agreement']:.3f} "
        f"({healed['seconds']:.0f} s)")


def run(quick: bool, configs: list[tuple[str, dict[str, Any]]] = CONFIGS) -> dict[str, Any]:
    from graphopt._io import load_model, save_model
    from graphopt.analysis import summarize
    from graphopt.bench import benchmark
    from graphopt.data import stdlib_sentences, tokenize
    from graphopt.frontend import export_sentence_embedder, minilm_dir
    from graphopt.prune import parameter_count, prune

    folder = Path(tempfile.mkdtemp(prefix="prune-minilm-"))
    original = folder / "minilm-dynamo.onnx"
    log("exporting all-MiniLM-L6-v2 (dynamo)")
    export_sentence_embedder(minilm_dir(), original, exporter="dynamo")
    feeds = tokenize(minilm_dir(), stdlib_sentences(CALIB + EVAL, seed=0), sequence=SEQUENCE)
    calib = {k: v[:CALIB] for k, v in feeds.items()}
    evaluation = {k: v[CALIB:] for k, v in feeds.items()}
    base = load_model(original)
    reference = _embed(base, evaluation)
    base_params, base_macs = parameter_count(base), summarize(base).macs
    heal_data = _heal_data(original)
    rows: list[dict[str, Any]] = []
    latency_paths: list[Path] = [original]
    latency_rows: list[str] = ["unpruned"]
    for label, options in configs:
        for method in METHODS:
            if "layers" in options and method == "wanda":
                continue  # wanda scores weights, not whole blocks
            model = load_model(original)
            result = prune(model, importance=method, feeds=calib, **options)
            embedded = _embed(model, evaluation)
            row = {"config": label, "importance": method, **options, **_scores(reference, embedded),
                   "parameters": result.parameters_after, "parameter_ratio": result.parameters_after / base_params,
                   "mac_ratio": summarize(model).macs / base_macs, "skipped": list(result.skipped)}
            if _kept(model) is not None:
                row["kept_cosine"] = _kept_cosine(model, reference, embedded)
            rows.append(row)
            log(f"{label:14s} {method:10s} cosine {row['mean_cosine']:.4f} nn {row['nn_agreement']:.3f} "
                f"params {row['parameter_ratio']:.3f} macs {row['mac_ratio']:.3f}")
            if method == "activation":
                path = folder / f"{label.replace(' ', '_').replace('%', '').replace('+', '_')}.onnx"
                save_model(model, path)
                latency_paths.append(path)
                latency_rows.append(label)
            if _heals(label, method):
                row["healed"] = _heal(model, heal_data, evaluation, reference)
                _log_heal(row)
    log(f"latency at batch 8 x {SEQUENCE}: {len(latency_paths)} models alternating")
    report = benchmark(latency_paths, {k: v[:8] for k, v in evaluation.items()}, threads=THREADS, warmup=3,
                       runs=6 if quick else 20, min_seconds=0)
    latency = {"unpruned": {"median": 1.0, "p10": 1.0, "p90": 1.0, "ms": report.models[0].median_ms}}
    for ratio in report.ratios:
        latency[latency_rows[ratio.model]] = {"median": ratio.median, "p10": ratio.p10, "p90": ratio.p90,
                                              "ms": report.models[ratio.model].median_ms}
    for row in rows:
        row["latency_ratio"] = latency[row["config"]]
    shutil.rmtree(folder, ignore_errors=True)
    return {"model": "all-MiniLM-L6-v2 (dynamo export)", "calibration_sentences": CALIB,
            "evaluation_sentences": EVAL, "sequence": SEQUENCE, "threads": THREADS,
            "parameters": base_params, "macs": base_macs, "unpruned_latency_ms": report.models[0].median_ms,
            "rows": rows, "goals": _goals(rows) if configs is CONFIGS else {}, "heal": _heal_settings(),
            "machine": _common.machine_info()}


def merge_hidden(data: dict[str, Any], quick: bool) -> None:
    """Measure only the hidden-channel rows (own latency run) and merge them into ``data``; in place."""
    new = run(quick, HIDDEN_CONFIGS)
    labels = {label for label, _ in HIDDEN_CONFIGS}
    for row in new["rows"]:
        row["run"] = "hidden"
    data["rows"] = [r for r in data["rows"] if r["config"] not in labels] + new["rows"]
    data["goals"] = _goals(data["rows"])
    data["hidden_run"] = {"unpruned_latency_ms": new["unpruned_latency_ms"], "machine": new["machine"]}


def _heal_settings() -> dict[str, Any]:
    return {"steps": HEAL_STEPS, "lr": HEAL_LR, "batch_size": HEAL_BATCH, "sequence": HEAL_SEQUENCE,
            "loss": "cosine", "trainable": "all", "data": f"the {CALIB} calibration sentences",
            "teacher": "unpruned model", "torch_threads": 1}


def run_heal(data: dict[str, Any]) -> None:
    """Heal the stored MiniLM rows (see ``_heals``) again, from freshly pruned models; in place."""
    from graphopt._io import load_model
    from graphopt.data import stdlib_sentences, tokenize
    from graphopt.frontend import export_sentence_embedder, minilm_dir
    from graphopt.prune import prune

    folder = Path(tempfile.mkdtemp(prefix="prune-heal-"))
    original = folder / "minilm-dynamo.onnx"
    log("heal: exporting all-MiniLM-L6-v2 (dynamo)")
    export_sentence_embedder(minilm_dir(), original, exporter="dynamo")
    feeds = tokenize(minilm_dir(), stdlib_sentences(CALIB + EVAL, seed=0), sequence=SEQUENCE)
    calib = {k: v[:CALIB] for k, v in feeds.items()}
    evaluation = {k: v[CALIB:] for k, v in feeds.items()}
    reference = _embed(load_model(original), evaluation)
    heal_data = _heal_data(original)
    options = dict(CONFIGS)
    for row in data["rows"]:
        if not _heals(row["config"], row["importance"]):
            continue
        model = load_model(original)
        prune(model, importance=row["importance"], feeds=calib, **options[row["config"]])
        before = _scores(reference, _embed(model, evaluation))["mean_cosine"]
        if abs(before - row["mean_cosine"]) > 1e-4:
            raise SystemExit(f"{row['config']} {row['importance']}: pruned again, cosine {before:.6f} differs from "
                             f"the stored {row['mean_cosine']:.6f}; rerun the whole MiniLM part")
        row["healed"] = _heal(model, heal_data, evaluation, reference)
        _log_heal(row)
    data["heal"] = _heal_settings()
    data["heal_machine"] = _common.machine_info()
    shutil.rmtree(folder, ignore_errors=True)


EXTRAS: list[tuple[str, str, dict[str, Any]]] = [
    ("ThinK key channels 25%", "prune-key-channels", {"fraction": 0.25}),
    ("ThinK key channels 50%", "prune-key-channels", {"fraction": 0.5}),
    ("unstructured 50%", "prune-unstructured", {"sparsity": 0.5}),
    ("2:4", "prune-unstructured", {"pattern": "2:4"}),
]


def run_extras(quick: bool) -> dict[str, Any]:
    """ThinK and masked sparsity on MiniLM: fidelity, and latency (dense kernels: expect none gained)."""
    from graphopt._io import load_model, save_model
    from graphopt.bench import benchmark
    from graphopt.data import stdlib_sentences, tokenize
    from graphopt.frontend import export_sentence_embedder, minilm_dir
    from graphopt.passes import create_pass
    from graphopt.prune import parameter_count

    folder = Path(tempfile.mkdtemp(prefix="prune-extras-"))
    original = folder / "minilm-dynamo.onnx"
    log("extras: exporting all-MiniLM-L6-v2 (dynamo)")
    export_sentence_embedder(minilm_dir(), original, exporter="dynamo")
    feeds = tokenize(minilm_dir(), stdlib_sentences(CALIB + EVAL, seed=0), sequence=SEQUENCE)
    calib = {k: v[:CALIB] for k, v in feeds.items()}
    evaluation = {k: v[CALIB:] for k, v in feeds.items()}
    reference = _embed(load_model(original), evaluation)
    rows: list[dict[str, Any]] = []
    paths, labels = [original], ["unpruned"]
    for label, pass_name, settings in EXTRAS:
        methods = ("activation", "magnitude") if pass_name == "prune-key-channels" else ("wanda", "magnitude")
        for method in methods:
            model = load_model(original)
            pass_ = create_pass(pass_name, {**settings, "importance": method})
            pass_.feeds = calib  # type: ignore[attr-defined]
            pass_(model)
            weights = [v.const_value.numpy() for v in model.graph.initializers.values()
                       if v.const_value is not None and v.const_value.dtype.is_floating_point()]
            zeros = sum(int((w == 0).sum()) for w in weights) / max(sum(w.size for w in weights), 1)
            row: dict[str, Any] = {"config": label, "importance": method,
                                   **_scores(reference, _embed(model, evaluation)),
                                   "parameters": parameter_count(model), "zero_fraction": zeros}
            rows.append(row)
            log(f"{label:24s} {method:10s} cosine {row['mean_cosine']:.4f} zeros {zeros:.3f}")
            if method == methods[0]:
                path = folder / f"extra-{len(paths)}.onnx"
                save_model(model, path)
                paths.append(path)
                labels.append(label)
    report = benchmark(paths, {k: v[:8] for k, v in evaluation.items()}, threads=THREADS, warmup=3,
                       runs=6 if quick else 20, min_seconds=0)
    latency = {labels[r.model]: {"median": r.median, "p10": r.p10, "p90": r.p90} for r in report.ratios}
    for row in rows:
        row["latency_ratio"] = latency[row["config"]]
    shutil.rmtree(folder, ignore_errors=True)
    return {"unpruned_latency_ms": report.models[0].median_ms, "rows": rows}


def _global_mean_class() -> Any:
    import torch

    class GlobalMean(torch.nn.Module):
        """``x.mean((2, 3))``: exports as one ReduceMean (AdaptiveAvgPool2d + Flatten export as a Gather)."""

        def forward(self, x: Any) -> Any:
            return x.mean(dim=(2, 3))

    return GlobalMean


def _digits_cnn(folder: Path) -> tuple[Path, dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray, np.ndarray,
                                       dict[str, Any]]:
    """Train the CNN on 75% of digits (seed 0), export it; return path, calib feeds, the training split
    (images and labels keyed by input and output name), test x, test y, info."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from graphopt.frontend import export_module

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None]
    x_train, x_test, y_train, y_test = train_test_split(images, data.target, test_size=0.25, random_state=0,
                                                        stratify=data.target)
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    global_mean = _global_mean_class()
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(),
        global_mean(), torch.nn.Linear(32, 10))
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train).long()
    epochs = 25
    for _ in range(epochs):
        order = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            batch = order[i:i + 64]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[batch]), yt[batch]).backward()
            optimizer.step()
    net.eval()
    path = folder / "digits-cnn.onnx"
    export_module(net, (torch.from_numpy(x_test[:4]),), path, input_names=["x"], output_names=["logits"],
                  dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, exporter="dynamo")
    info = {"train_images": len(x_train), "test_images": len(x_test), "epochs": epochs,
            "layers": "conv16-conv32-maxpool-conv32-gap-linear10"}
    train = {"x": x_train, "logits": y_train.astype(np.int64)}
    return path, {"x": x_train[:256]}, train, x_test, y_test, info


def run_digits(quick: bool, rounds: int = DIGITS_LATENCY_ROUNDS) -> dict[str, Any]:
    from graphopt._io import load_model, save_model
    from graphopt.analysis import summarize
    from graphopt.bench import benchmark
    from graphopt.passes import create_pass
    from graphopt.prune import parameter_count
    from graphopt.runtime import make_session

    folder = Path(tempfile.mkdtemp(prefix="prune-digits-"))
    log("digits: training the CNN")
    original, calib, train, x_test, y_test, info = _digits_cnn(folder)

    def accuracy(model: Any) -> float:
        logits = make_session(model, threads=THREADS).run(None, {"x": x_test})[0]
        return float((logits.argmax(axis=1) == y_test).mean())

    def heal(model: Any) -> float:
        import torch

        from graphopt.executor import finetune

        torch.set_num_threads(1)
        finetune(model, train, trainable="all", steps=DIGITS_HEAL_STEPS, lr=DIGITS_HEAL_LR, batch_size=64,
                 loss="ce", seed=0)
        return accuracy(model)

    base = load_model(original)
    shapes = {"x": (1, 1, 8, 8)}
    base_params, base_macs = parameter_count(base), summarize(base, shapes=shapes).macs
    rows: list[dict[str, Any]] = [{"fraction": 0.0, "importance": "-", "accuracy": accuracy(base),
                                   "accuracy_healed": heal(load_model(original)),
                                   "parameter_ratio": 1.0, "mac_ratio": 1.0}]
    log(f"digits unpruned accuracy {rows[0]['accuracy']:.4f}, after the same extra training "
        f"{rows[0]['accuracy_healed']:.4f}")
    paths, labels = [original], ["unpruned"]
    for fraction in CHANNEL_FRACTIONS:
        for method in METHODS:
            model = load_model(original)
            pass_ = create_pass("prune-channels", {"fraction": fraction, "importance": method})
            pass_.feeds = calib  # type: ignore[attr-defined]
            pass_(model)
            row = {"fraction": fraction, "importance": method, "accuracy": accuracy(model),
                   "parameter_ratio": parameter_count(model) / base_params,
                   "mac_ratio": summarize(model, shapes=shapes).macs / base_macs,
                   "skipped": list(pass_.skipped)}  # type: ignore[attr-defined]
            rows.append(row)
            log(f"digits {fraction:.2f} {method:10s} accuracy {row['accuracy']:.4f} macs {row['mac_ratio']:.3f}")
            if method == "activation":
                path = folder / f"channels-{int(fraction * 100)}.onnx"
                save_model(model, path)
                paths.append(path)
                labels.append(str(fraction))
            row["accuracy_healed"] = heal(model)
            log(f"digits {fraction:.2f} {method:10s} healed: accuracy {row['accuracy']:.4f} -> "
                f"{row['accuracy_healed']:.4f}")
    log(f"digits: latency, {10 if quick else rounds} alternating rounds, {DIGITS_LATENCY_THREADS} thread(s)")
    report = benchmark(paths, {"x": x_test[:256]}, threads=DIGITS_LATENCY_THREADS, warmup=5,
                       runs=10 if quick else rounds, min_seconds=0)
    base_ms = report.models[0].median_ms
    latency = {"unpruned": {"median": 1.0, "p10": 1.0, "p90": 1.0, "ms": base_ms, "of_medians": 1.0}}
    for ratio in report.ratios:
        ms = report.models[ratio.model].median_ms
        latency[labels[ratio.model]] = {"median": ratio.median, "p10": ratio.p10, "p90": ratio.p90, "ms": ms,
                                        "of_medians": ms / base_ms}
    for row in rows:
        row["latency_ratio"] = latency["unpruned" if row["fraction"] == 0.0 else str(row["fraction"])]
    shutil.rmtree(folder, ignore_errors=True)
    return {**info, "parameters": base_params, "macs": base_macs, "unpruned_latency_ms": report.models[0].median_ms,
            "latency_rounds": 10 if quick else rounds, "latency_threads": DIGITS_LATENCY_THREADS,
            "activation_criterion": DIGITS_ACTIVATION,
            "machine": _common.machine_info(),
            "heal": {"steps": DIGITS_HEAL_STEPS, "lr": DIGITS_HEAL_LR, "batch_size": 64, "loss": "ce",
                     "trainable": "all", "data": f"the {info['train_images']} training images", "torch_threads": 1},
            "rows": rows}


def _goals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    both = next(r for r in rows if r["config"] == "heads+mlp 50%")
    lat = both["latency_ratio"]["median"]
    wins: list[str] = []
    losses: list[str] = []
    for config, _ in CONFIGS:
        by = {r["importance"]: r["mean_cosine"] for r in rows if r["config"] == config}
        for other in ("magnitude", "random"):
            if other in by and "activation" in by:
                (wins if by["activation"] > by[other] else losses).append(f"{config} vs {other}")
    return {"heads+mlp 50% latency <= 0.6x": {"value": lat, "met": lat <= 0.6},
            "heads+mlp 50% MAC ratio": both["mac_ratio"],
            "activation beats magnitude and random": {"met": not losses, "losses": losses, "wins": len(wins)}}


def _markdown(data: dict[str, Any]) -> str:
    lines = [
        "# Structured pruning of all-MiniLM-L6-v2", "",
        f"{data['evaluation_sentences']} evaluation / {data['calibration_sentences']} calibration standard-library "
        f"sentences, {data['sequence']} tokens; latency at batch 8, {data['threads']} threads, relative to the "
        f"unpruned model ({data['unpruned_latency_ms']:.1f} ms), median (p10-p90), one run.", "",
    ]
    heal = data.get("heal")
    if heal:
        lines += [
            f"After distillation: {heal['steps']} Adam steps (lr {heal['lr']:g}, batch {heal['batch_size']} x "
            f"{heal['sequence']} tokens, {heal['loss']} loss, all initializers trainable) towards the unpruned "
            f"model on {heal['data']} with graphopt's torch executor (`graphopt finetune --teacher`), then "
            f"measured in onnxruntime on the evaluation sentences; activation importance for every config, every "
            f"method at {HEAL_ALL_AT}; '-' not distilled."
            + (" Distilled in a later run (`--only heal`), from the same pruned models." if "heal_machine" in data
               else ""), ""]
    hidden_run = data.get("hidden_run")
    if hidden_run:
        lines += [
            "The `hidden` rows come from a separate run (`--only hidden`, "
            f"{hidden_run['machine']['date'][:16].replace('T', ' ')} UTC): their latency is relative to the unpruned "
            f"model measured in that run ({hidden_run['unpruned_latency_ms']:.1f} ms, load average "
            f"{hidden_run['machine']['load_average'][0]:.1f} on {hidden_run['machine']['cpu_count']} CPUs); every "
            "other row comes from the run above.", ""]
    if any(r["config"].startswith("hidden") for r in data["rows"]):
        lines += [
            "Hidden rows: the 384-d embedding becomes 288-d (25%) or 192-d (50%), and LayerNorm normalises over "
            "the kept channels only. Their cosine is to the unpruned embedding with the removed channels as "
            "zeros; the cosine on the kept channels alone is listed below the table. Every importance method "
            "is distilled (towards the kept channels of the unpruned embedding).", ""]
    lines += [
        "| config | importance | mean cosine | min cosine | NN agreement | cosine after distillation | "
        "NN after distillation | params | MACs | latency |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        lat = r["latency_ratio"]
        healed = r.get("healed")
        after = (f"{healed['mean_cosine']:.4f} | {healed['nn_agreement']:.3f}" if healed else "- | -")
        lines.append(f"| {r['config']} | {r['importance']} | {r['mean_cosine']:.4f} | {r['min_cosine']:.4f} | "
                     f"{r['nn_agreement']:.3f} | {after} | {r['parameter_ratio']:.3f} | {r['mac_ratio']:.3f} | "
                     f"{lat['median']:.3f} ({lat['p10']:.2f}-{lat['p90']:.2f}) |")
    kept_rows = [r for r in data["rows"] if "kept_cosine" in r]
    if kept_rows:
        lines += ["", "Hidden rows, mean cosine on the kept channels only (before -> after distillation): "
                  + "; ".join(f"{r['config']} {r['importance']} {r['kept_cosine']:.4f}"
                              + (f" -> {r['healed']['kept_cosine']:.4f}" if "healed" in r else "")
                              for r in kept_rows)]
    goals = data["goals"]
    lines += ["", "Goals:",
              f"- heads+mlp 50%: latency {goals['heads+mlp 50% latency <= 0.6x']['value']:.3f}x "
              f"(goal <= 0.6x: {'met' if goals['heads+mlp 50% latency <= 0.6x']['met'] else 'NOT met'}), "
              f"MACs {goals['heads+mlp 50% MAC ratio']:.3f}x",
              f"- activation importance above magnitude and random in mean cosine: "
              f"{'met' if goals['activation beats magnitude and random']['met'] else 'NOT met'} "
              f"(losses: {', '.join(goals['activation beats magnitude and random']['losses']) or 'none'})"]
    healed_rows = [r for r in data["rows"] if "healed" in r]
    if healed_rows:
        gains = [r["healed"]["mean_cosine"] - r["mean_cosine"] for r in healed_rows]
        nn_gains = [r["healed"]["nn_agreement"] - r["nn_agreement"] for r in healed_rows]
        lines.append(f"- distillation: mean cosine up in {sum(g > 0 for g in gains)} of {len(gains)} distilled rows "
                     f"(by {min(gains):+.4f} to {max(gains):+.4f}), NN agreement up in "
                     f"{sum(g > 0 for g in nn_gains)} (by {min(nn_gains):+.3f} to {max(nn_gains):+.3f})")
    digits = data.get("digits")
    if digits:
        lines += ["", "## CNN on scikit-learn digits: output channels of every convolution pruned", "",
                  f"{digits['layers']}, trained {digits['epochs']} epochs on {digits['train_images']} images; "
                  f"accuracy on {digits['test_images']} test images; latency at batch 256 relative to unpruned "
                  f"({digits['unpruned_latency_ms']:.2f} ms"
                  + (f", {digits.get('latency_threads', data['threads'])} onnxruntime thread(s); median (p10-p90) "
                     f"of the per-round ratios over {digits['latency_rounds']} alternating rounds, then the "
                     "ratio of the median latencies" if "latency_rounds" in digits else "") + ")."
                  + (f" Fine-tuned: {digits['heal']['steps']} Adam steps (lr {digits['heal']['lr']:g}, batch "
                     f"{digits['heal']['batch_size']}, cross-entropy on the labels, all initializers) on "
                     f"{digits['heal']['data']} with graphopt's torch executor; the unpruned row got the same "
                     f"extra training (control)." if "heal" in digits else ""), ""]
        if "machine" in digits:
            lines += [f"These rows come from a separate run (`--only digits`, "
                      f"{digits['machine']['date'][:16].replace('T', ' ')} UTC, load average "
                      f"{digits['machine']['load_average'][0]:.1f} on {digits['machine']['cpu_count']} CPUs). "
                      f"Activation importance of a channel c: {digits['activation_criterion']}.", ""]
        per_ms = all("of_medians" in r["latency_ratio"] for r in digits["rows"])
        lines += ["| channels pruned | importance | accuracy | accuracy after fine-tuning | params | MACs | latency |"
                  + (" latency, ratio of medians |" if per_ms else ""),
                  "|---|---|---|---|---|---|---|" + ("---|" if per_ms else "")]
        for r in digits["rows"]:
            lat = r["latency_ratio"]
            healed = f"{r['accuracy_healed']:.4f}" if "accuracy_healed" in r else "-"
            lines.append(f"| {r['fraction']:.0%} | {r['importance']} | {r['accuracy']:.4f} | {healed} | "
                         f"{r['parameter_ratio']:.3f} | {r['mac_ratio']:.3f} | "
                         f"{lat['median']:.3f} ({lat['p10']:.2f}-{lat['p90']:.2f}) |"
                         + (f" {lat['of_medians']:.3f} ({lat['ms']:.2f} ms) |" if per_ms else ""))
        verdicts = []
        for fraction in CHANNEL_FRACTIONS:
            by = {r["importance"]: r["accuracy"] for r in digits["rows"] if r["fraction"] == fraction}
            if "activation" in by:
                beaten = [m for m in ("magnitude", "random") if m in by and by["activation"] <= by[m]]
                verdicts.append(f"{fraction:.0%} " + ("met" if not beaten else f"NOT met (<= {', '.join(beaten)})"))
        lines += ["", "Goal, activation importance above magnitude and random in accuracy before fine-tuning: "
                  + "; ".join(verdicts) + "."]
        previous = digits.get("previous_activation")
        if previous:
            lines += ["", f"Before (issue 5), activation importance was {previous['criterion']}: accuracy "
                      + ", ".join(f"{r['fraction']:.0%} {r['accuracy']:.4f} (fine-tuned {r['accuracy_healed']:.4f})"
                                  for r in previous["rows"]) + f", from the run of {previous['date'][:16]} UTC."]
    extras = data.get("extras")
    if extras:
        lines += ["", "## ThinK key-channel pruning and masked sparsity on MiniLM", "",
                  "ThinK removes query/key channels of every head (static, score mean q^2 * mean k^2); unstructured "
                  "and 2:4 sparsity zero weights of every linear layer (the graph keeps its dense shapes). Latency "
                  f"at batch 8 relative to unpruned ({extras['unpruned_latency_ms']:.1f} ms), measured for the "
                  "first importance method of each row pair.", "",
                  "| config | importance | mean cosine | NN agreement | zero weights | latency |",
                  "|---|---|---|---|---|---|"]
        for r in extras["rows"]:
            lat = r["latency_ratio"]
            lines.append(f"| {r['config']} | {r['importance']} | {r['mean_cosine']:.4f} | {r['nn_agreement']:.3f} | "
                         f"{r['zero_fraction']:.3f} | {lat['median']:.3f} ({lat['p10']:.2f}-{lat['p90']:.2f}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer latency rounds")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="results folder")
    parser.add_argument("--latency-rounds", type=int, default=DIGITS_LATENCY_ROUNDS,
                        help="alternating latency rounds of the digits CNN")
    parser.add_argument("--only", choices=("minilm", "digits", "extras", "heal", "hidden"),
                        help="rerun one part, keep the others (heal: distil the stored MiniLM rows again; "
                        "hidden: measure the hidden-channel rows and merge them in)")
    args = parser.parse_args()
    out = Path(args.out)
    if args.only:
        import json

        data = json.loads((out / "prune_minilm.json").read_text())
    if args.only in (None, "minilm"):
        kept = {k: data[k] for k in ("digits", "extras") if args.only and k in data}
        data = {**run(args.quick), **kept}
    if args.only in (None, "digits"):
        digits = run_digits(args.quick, args.latency_rounds)
        if args.only:  # re-read: the stored file may have changed during the run
            data = json.loads((out / "prune_minilm.json").read_text())
        old = data.get("digits") if args.only else None
        data["digits"] = digits
        if old and "previous_activation" in old:
            data["digits"]["previous_activation"] = old["previous_activation"]
        elif old and "activation_criterion" not in old:  # stored before the criterion changed: keep for comparison
            data["digits"]["previous_activation"] = {
                "criterion": "the mean |y_c| of the channel alone", "date": data["machine"]["date"],
                "rows": [{k: r[k] for k in ("fraction", "accuracy", "accuracy_healed")}
                         for r in old["rows"] if r["importance"] == "activation"]}
    if args.only in (None, "extras"):
        data["extras"] = run_extras(args.quick)
    if args.only == "heal":
        run_heal(data)
    if args.only == "hidden":
        merge_hidden(data, args.quick)
    _common.write_json(out / "prune_minilm.json", data)
    _common.write_atomic(out / "prune_minilm.md", _markdown(data))
    print(_markdown(data))


if __name__ == "__main__":
    main()
