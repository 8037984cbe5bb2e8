"""Outliers and quantizability: clipped softmax and gated attention (Bondarenko et al., 2023), at small scale.

Part 1, from scratch. A small BERT-style encoder (``transformers.BertForMaskedLM`` from a config, random
weights, eager attention) is exported to ONNX once; its vocabulary is the most frequent MiniLM word pieces
of the training text (others map to ``[UNK]``). Three graphs are made from that one export: *vanilla* (no
rewrite), *clipped softmax* (``clipped-softmax`` with its defaults: ``gamma = -alpha / T``, ``alpha = 4``,
``zeta = 1``) and *gated attention* (``gated-attention`` with ``mode=scratch``). Every initializer is trained
with graphopt's torch executor (``TorchExecutor(trainable="all")``, one torch thread) on masked-LM over
standard-library docstring sentences (15% of tokens picked; 80% ``[MASK]``, 10% random, 10% kept; the
loss is cross-entropy on the picked positions only, so the loop lives here rather than in ``finetune``),
with the same data order and masks for all three, and written back. On held-out sentences (fixed masks):
MLM perplexity in fp32 with onnxruntime, max |x| and kurtosis of every attention block's output
(``graphopt.analysis`` outlier statistics, padding excluded) and the perplexity after
``quantize(model, "w8a8", calib)`` (static QDQ, per-channel int8 weights, uint8 activations).

Part 2, fine-tuning the real all-MiniLM-L6-v2 (dynamo export): ``gated-attention`` in its fine-tuning mode
(gates start at exactly 1), only the gates trained (``finetune(trainable="gates", teacher=original,
loss="cosine")``); then the same with an outlier penalty added to the loss (the mean over layers of
``mean_token(kurtosis) / 3`` of the attention outputs, made graph outputs for training only). Reported:
kurtosis and max |x| before/after and the embedding cosine to the original on held-out sentences.

Run: ``.venv/bin/python bench/outliers.py [--steps N] [--quick] [--out bench/results]``; ``--minilm-only
--minilm-lr LR`` reruns part 2 alone and appends it to the existing results.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _common
import numpy as np
from _common import log

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD, UNK, CLS, SEP, MASK = range(5)


# --------------------------------------------------------------------------- data


def build_data(train: int, held: int, vocab: int, sequence: int, seed: int) -> dict[str, Any]:
    """Token ids of disjoint train / held-out sentences in a compact vocabulary of the ``vocab`` most
    frequent MiniLM word pieces of the training text (special tokens first)."""
    from graphopt.data import stdlib_sentences, tokenize
    from graphopt.frontend import minilm_dir

    sentences = stdlib_sentences(train + held, seed=seed)
    feeds = tokenize(minilm_dir(), sentences, sequence=sequence, input_names=("input_ids", "attention_mask"))
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    special = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL]
    counts = collections.Counter(ids[:train][mask[:train] != 0].tolist())
    for s in special:
        counts.pop(s, None)
    kept = [t for t, _ in counts.most_common(vocab - len(special))]
    table = np.full(int(ids.max()) + 1, UNK, dtype=np.int64)
    for new, old in enumerate(special + kept):
        table[old] = new
    compact = table[ids]
    real = mask != 0
    coverage = float((compact[:train][real[:train]] != UNK).mean())
    return {
        "train": (compact[:train], mask[:train]), "held": (compact[train:], mask[train:]),
        "vocab": len(special) + len(kept), "coverage": coverage,
        "tokens_per_sentence": float(real.sum(1).mean()),
    }


def mask_tokens(ids: np.ndarray, mask: np.ndarray, vocab: int, rng: np.random.Generator,
                rate: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """BERT masking: ``(inputs, labels)`` with labels -1 where no prediction is asked."""
    candidates = (mask != 0) & (ids != CLS) & (ids != SEP)
    picked = candidates & (rng.random(ids.shape) < rate)
    labels = np.where(picked, ids, -1)
    draw = rng.random(ids.shape)
    inputs = ids.copy()
    inputs[picked & (draw < 0.8)] = MASK
    swap = picked & (draw >= 0.8) & (draw < 0.9)
    inputs[swap] = rng.integers(len(SPECIAL), vocab, size=int(swap.sum()))
    return inputs, labels


# --------------------------------------------------------------------------- models


def export_encoder(path: Path, vocab: int, layers: int, hidden: int, heads: int, sequence: int, seed: int) -> None:
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from graphopt.frontend import export_module

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=4 * hidden, max_position_embeddings=sequence, type_vocab_size=1,
                        pad_token_id=PAD, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        attn_implementation="eager")  # type: ignore[call-arg]
    model = BertForMaskedLM(config).eval()

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).logits

    ids = torch.randint(len(SPECIAL), vocab, (2, 16))
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
    with _common.stdout_to_stderr():
        result = export_module(Logits(), (ids, torch.ones_like(ids)), path, input_names=["input_ids", "attention_mask"],
                               output_names=["logits"], dynamic_axes=axes)
    log(f"exported the encoder with the {result.exporter} exporter ({sum(p.numel() for p in model.parameters())} "
        "parameters)")


def variants(path: Path) -> dict[str, Any]:
    import onnx_ir as ir

    from graphopt.passes import create_pass

    out = {}
    for name, spec in (("vanilla", None), ("clipped-softmax", ("clipped-softmax", {})),
                       ("gated-attention", ("gated-attention", {"mode": "scratch"}))):
        model = ir.load(path)
        if spec is not None:
            result = create_pass(spec[0], spec[1])(model)
            if not result.modified:
                raise SystemExit(f"{spec[0]} did not change the encoder")
            model = result.model
        out[name] = model
    return out


# --------------------------------------------------------------------------- training and metrics


def train_mlm(model: Any, data: dict[str, Any], steps: int, batch: int, lr: float, seed: int) -> dict[str, Any]:
    """Masked-LM training of every initializer; the trained values are written back into ``model``."""
    import torch
    import torch.nn.functional as F

    from graphopt.executor import TorchExecutor

    torch.manual_seed(seed)
    executor = TorchExecutor(model, trainable="all")
    params = [p for _, p in executor.named_trainable_parameters()]
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                                  lr=lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))))
    ids, mask = data["train"]
    rng = np.random.default_rng(seed)
    losses = []
    started = time.perf_counter()
    for step in range(steps):
        rows = rng.integers(0, len(ids), batch)
        inputs, labels = mask_tokens(ids[rows], mask[rows], data["vocab"], rng)
        logits = executor({"input_ids": inputs, "attention_mask": mask[rows]})["logits"]
        target = torch.from_numpy(labels)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.item()))
        if (step + 1) % max(1, steps // 10) == 0:
            log(f"  step {step + 1}/{steps}: loss {np.mean(losses[-50:]):.3f}")
    seconds = time.perf_counter() - started
    executor.write_back(model)
    return {"steps": steps, "batch": batch, "lr": lr, "seconds": round(seconds, 1),
            "first_loss": round(float(np.mean(losses[:20])), 3), "last_loss": round(float(np.mean(losses[-50:])), 3)}


def perplexity(model: Any, inputs: np.ndarray, mask: np.ndarray, labels: np.ndarray) -> float:
    """exp(mean cross-entropy) over the labelled positions, run with onnxruntime."""
    from graphopt.runtime import make_session

    session = make_session(model, threads=2)
    total, count = 0.0, 0
    for start in range(0, len(inputs), 32):
        part = slice(start, start + 32)
        logits = session.run(["logits"], {"input_ids": inputs[part], "attention_mask": mask[part]})[0]
        logits = logits.astype(np.float64)
        picked = labels[part] >= 0
        rows = logits[picked]
        top = rows.max(-1, keepdims=True)
        logz = np.log(np.exp(rows - top).sum(-1)) + top[:, 0]
        total += float((logz - rows[np.arange(len(rows)), labels[part][picked]]).sum())
        count += int(picked.sum())
    return math.exp(total / count)


def outliers(model: Any, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    from graphopt.analysis._outliers import outlier_statistics

    layers, notes = outlier_statistics(model, feeds)
    if not layers:
        raise SystemExit(f"no attention outputs found for outlier statistics: {notes}")
    return {
        "max_abs": max(layer.max_abs for layer in layers), "kurtosis": max(layer.kurtosis for layer in layers),
        "layers": [{"layer": layer.layer, "max_abs": round(layer.max_abs, 3), "kurtosis": round(layer.kurtosis, 2)}
                   for layer in layers],
    }


def w8a8_perplexity(model: Any, calib: dict[str, np.ndarray], evaluation: tuple[np.ndarray, ...],
                    method: str) -> float:
    from graphopt.quantize import quantize

    with _common.stdout_to_stderr():
        result = quantize(model, "w8a8", calib, method=method)
    return perplexity(result.model, *evaluation)


# --------------------------------------------------------------------------- part 2: MiniLM


def minilm_part(steps: int, lr: float, calib: int, held: int, sequence: int, penalty: float,
                seed: int) -> dict[str, Any]:
    import onnx_ir as ir
    import torch

    from graphopt.data import stdlib_sentences, tokenize
    from graphopt.executor import TorchExecutor, finetune
    from graphopt.frontend import export_sentence_embedder, minilm_dir
    from graphopt.passes import create_pass
    from graphopt.runtime import make_session

    with tempfile.TemporaryDirectory(prefix="graphopt-outliers-") as scratch:
        path = Path(scratch) / "minilm.onnx"
        with _common.stdout_to_stderr():
            export_sentence_embedder(minilm_dir(), path, exporter="dynamo")
        original = ir.load(path)
    sentences = stdlib_sentences(calib + held, seed=seed + 1)
    train_feeds = tokenize(minilm_dir(), sentences[:calib], sequence=sequence)
    held_feeds = tokenize(minilm_dir(), sentences[calib:], sequence=sequence)
    reference = make_session(original, threads=2).run(None, held_feeds)[0]

    def measure(model: ir.Model) -> dict[str, Any]:
        embeddings = make_session(model, threads=2).run(None, held_feeds)[0]
        cos = (embeddings * reference).sum(-1) / (np.linalg.norm(embeddings, axis=-1)
                                                  * np.linalg.norm(reference, axis=-1))
        return {**outliers(model, held_feeds), "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}

    rows: dict[str, Any] = {"original": measure(original)}
    log(f"MiniLM original: kurtosis {rows['original']['kurtosis']:.1f}, max|x| {rows['original']['max_abs']:.1f}")

    gated = create_pass("gated-attention", {"mode": "finetune"})(original.clone()).model
    result = finetune(gated, train_feeds, teacher=original, trainable="gates", steps=steps, lr=lr, batch_size=8,
                      loss="cosine", seed=seed)
    rows["gated, cosine distillation"] = {**measure(gated), "train": result.to_dict()}
    log(f"MiniLM gated (distillation only): {rows['gated, cosine distillation']['kurtosis']:.1f}")

    gated = create_pass("gated-attention", {"mode": "finetune"})(original.clone()).model
    rows[f"gated, distillation + {penalty:g} x kurtosis penalty"] = {
        **finetune_with_penalty(gated, original, train_feeds, steps, lr, penalty, seed, torch, TorchExecutor),
    }
    key = f"gated, distillation + {penalty:g} x kurtosis penalty"
    rows[key] = {**measure(gated), "train": rows[key]}
    log(f"MiniLM gated (with penalty): kurtosis {rows[key]['kurtosis']:.1f}, cosine {rows[key]['cosine_mean']:.4f}")
    return {"calibration_sentences": calib, "held_out_sentences": held, "sequence": sequence, "steps": steps,
            "lr": lr, "penalty": penalty, "rows": rows}


def finetune_with_penalty(model: Any, teacher: Any, feeds: dict[str, np.ndarray], steps: int, lr: float,
                          weight: float, seed: int, torch: Any, executor_class: Any) -> dict[str, Any]:
    """Train only the gates on ``1 - cos(y, teacher) + weight * mean_layers(mean_tokens(kurtosis) / 3)``
    (padding excluded); the attention outputs are graph outputs of a training copy only."""
    from graphopt.analysis._attention import find_attention
    from graphopt.analysis._outliers import _after_bias
    from graphopt.runtime import make_session

    work = model.clone()
    located: list[dict[str, Any]] = []
    find_attention(work.graph, [], located=located)
    taps = [_after_bias(w["o"].outputs[0]) for w in located if w.get("o") is not None]
    out_name = work.graph.outputs[0].name
    for tap in taps:
        work.graph.outputs.append(tap)
    executor = executor_class(work, trainable="gates")
    params = [p for _, p in executor.named_trainable_parameters()]
    optimizer = torch.optim.Adam(params, lr=lr)
    target = make_session(teacher, threads=2).run(None, feeds)[0]
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    total = len(target)
    history = []
    started = time.perf_counter()
    for _ in range(steps):
        rows = rng.integers(0, total, 8)
        out = executor({k: v[rows] for k, v in feeds.items()})
        keep = torch.from_numpy(feeds["attention_mask"][rows] != 0)
        cos = torch.nn.functional.cosine_similarity(out[out_name], torch.from_numpy(target[rows]), dim=-1)
        kurt = []
        for tap in taps:
            x = out[tap.name][keep]
            c = x - x.mean(-1, keepdim=True)
            kurt.append(((c ** 4).mean(-1) / (c ** 2).mean(-1) ** 2).mean() / 3)
        distil = (1 - cos).mean()
        loss = distil + weight * torch.stack(kurt).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append((float(distil.detach()), float(torch.stack(kurt).detach().mean() * 3)))
    executor.write_back(model)
    return {"steps": steps, "seconds": round(time.perf_counter() - started, 1),
            "first": {"distil": history[0][0], "mean_kurtosis": history[0][1]},
            "last": {"distil": history[-1][0], "mean_kurtosis": history[-1][1]}}


# --------------------------------------------------------------------------- report


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        "# Outliers and quantizability: clipped softmax and gated attention (small scale)", "",
        f"BERT-style encoder trained from scratch with graphopt's torch executor: {s['layers']} layers, hidden "
        f"{s['hidden']}, {s['heads']} heads, vocabulary {report['data']['vocab']} word pieces (covering "
        f"{report['data']['coverage']:.1%} of training tokens), sequence {s['sequence']}, {s['steps']} steps of "
        f"batch {s['batch']} ({s['train']} training sentences, about {report['data']['tokens_per_sentence']:.0f} "
        f"tokens each), masked-LM. Held-out: {s['held']} sentences with fixed masks. Max |x| and kurtosis: of the "
        "attention outputs, the largest over layers. W8A8: `quantize(model, 'w8a8', calib)` on "
        f"{s['calib']} masked training sentences, percentile and min-max activation ranges.", "",
        "| model | train loss first / last | train time (s) | fp32 perplexity | max \\|x\\| | kurtosis | "
        "W8A8 perplexity (percentile) | W8A8 perplexity (min-max) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in report["scratch"].items():
        t = row["train"]
        lines.append(f"| {name} | {t['first_loss']:.2f} / {t['last_loss']:.2f} | {t['seconds']:.0f} | "
                     f"{row['ppl_fp32']:.2f} | {row['max_abs']:.2f} | {row['kurtosis']:.2f} | "
                     f"{row['ppl_w8a8_percentile']:.2f} | {row['ppl_w8a8_minmax']:.2f} |")
    lines += ["", "Per layer (max |x| / kurtosis): " + "; ".join(
        f"{name}: " + ", ".join(f"{x['max_abs']:.1f}/{x['kurtosis']:.1f}" for x in row["layers"])
        for name, row in report["scratch"].items()), ""]
    runs = report.get("minilm") or []
    for m in runs if isinstance(runs, list) else [runs]:
        lines += [
            f"## Fine-tuning all-MiniLM-L6-v2 with gated attention (only the gates trained), lr {m.get('lr', 1e-2):g}",
            "", f"{m['calibration_sentences']} training and {m['held_out_sentences']} held-out sentences, sequence "
            f"{m['sequence']}, {m['steps']} Adam steps (lr {m.get('lr', 1e-2):g}, batch 8). Kurtosis / max |x|: "
            "largest over the 6 attention outputs on the held-out sentences; cosine: sentence embeddings to the "
            "original model.", "",
            "| model | max \\|x\\| | kurtosis | mean cosine | min cosine |", "|---|---|---|---|---|",
        ]
        for name, row in m["rows"].items():
            lines.append(f"| {name} | {row['max_abs']:.2f} | {row['kurtosis']:.2f} | {row['cosine_mean']:.5f} | "
                         f"{row['cosine_min']:.5f} |")
        lines.append("")
    lines += [f"Total run time {report['seconds']:.0f} s on {report['machine']['cpus_usable']} shared CPU cores "
              f"(load average {report['machine']['load_average'][0]:.1f} at start).", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--sequence", type=int, default=48)
    parser.add_argument("--train", type=int, default=7000)
    parser.add_argument("--held", type=int, default=512)
    parser.add_argument("--calib", type=int, default=128)
    parser.add_argument("--minilm-steps", type=int, default=150)
    parser.add_argument("--penalty", type=float, default=0.05)
    parser.add_argument("--minilm-lr", type=float, default=1e-2)
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--minilm-only", action="store_true",
                        help="rerun part 2 only and replace its section in the existing outliers.json / .md")
    parser.add_argument("--quick", action="store_true", help="tiny run to check the script end to end")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.train, args.held, args.calib, args.minilm_steps = 20, 600, 64, 32, 5
    import torch

    torch.set_num_threads(1)
    report: dict[str, Any]
    if args.minilm_only:
        report = json.loads((args.out / "outliers.json").read_text())
        earlier = report.get("minilm") or []
        run = minilm_part(args.minilm_steps, args.minilm_lr, 4 * args.calib, args.held // 2, 64, args.penalty,
                          args.seed)
        run["machine"] = _common.machine_info()
        report["minilm"] = [*(earlier if isinstance(earlier, list) else [earlier]), run]
        _common.write_json(args.out / "outliers.json", report)
        _common.write_atomic(args.out / "outliers.md", markdown(report))
        print(markdown(report))
        return 0
    report = {"machine": _common.machine_info(), "settings": {
        k: v for k, v in vars(args).items() if k not in ("out", "quick", "skip_minilm", "minilm_only")}}
    data = build_data(args.train, args.held, args.vocab, args.sequence, args.seed)
    report["data"] = {k: data[k] for k in ("vocab", "coverage", "tokens_per_sentence")}
    log(f"data: vocabulary {data['vocab']}, coverage {data['coverage']:.3f}")
    held_ids, held_mask = data["held"]
    held_inputs, held_labels = mask_tokens(held_ids, held_mask, data["vocab"], np.random.default_rng(args.seed + 7))
    evaluation = (held_inputs, held_mask, held_labels)
    calib_ids, calib_mask = data["train"][0][: args.calib], data["train"][1][: args.calib]
    calib_inputs, _ = mask_tokens(calib_ids, calib_mask, data["vocab"], np.random.default_rng(args.seed + 11))
    calib = {"input_ids": calib_inputs, "attention_mask": calib_mask}
    report["scratch"] = {}
    with tempfile.TemporaryDirectory(prefix="graphopt-outliers-") as scratch:
        path = Path(scratch) / "encoder.onnx"
        export_encoder(path, data["vocab"], args.layers, args.hidden, args.heads, args.sequence, args.seed)
        for name, model in variants(path).items():
            log(f"{name}: training {args.steps} steps")
            train = train_mlm(model, data, args.steps, args.batch, args.lr, args.seed)
            row: dict[str, Any] = {"train": train, "ppl_fp32": perplexity(model, *evaluation)}
            row.update(outliers(model, {"input_ids": held_ids, "attention_mask": held_mask}))
            for method in ("percentile", "minmax"):
                row[f"ppl_w8a8_{method}"] = w8a8_perplexity(model, calib, evaluation, method)
            report["scratch"][name] = row
            log(f"{name}: ppl {row['ppl_fp32']:.2f}, max|x| {row['max_abs']:.2f}, kurtosis {row['kurtosis']:.2f}, "
                f"W8A8 ppl {row['ppl_w8a8_percentile']:.2f} / {row['ppl_w8a8_minmax']:.2f}")
    if not args.skip_minilm:
        report["minilm"] = [minilm_part(args.minilm_steps, args.minilm_lr, 4 * args.calib, args.held // 2, 64,
                                        args.penalty, args.seed)]
    report["seconds"] = _common.elapsed()
    if args.quick:
        print(markdown(report))
        return 0
    _common.write_json(args.out / "outliers.json", report)
    _common.write_atomic(args.out / "outliers.md", markdown(report))
    print(markdown(report))
    print(json.dumps({"seconds": report["seconds"]}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
