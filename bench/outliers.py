"""Outliers and quantizability: clipped softmax and gated attention (Bondarenko et al., 2023), at small scale.

Part 1, from scratch. A small BERT-style encoder (``transformers.BertForMaskedLM`` from a config, random
weights, eager attention; 4 layers by default) is exported to ONNX once, every parameter kept as its own
initializer (see :func:`export_encoder`); its vocabulary is the most frequent MiniLM word pieces of the
training text (others map to ``[UNK]``). The text is packed as in BERT pre-training, ``[CLS] s1 [SEP] s2
[SEP] ...`` blocks of ``--sequence`` tokens, so that delimiters, the tokens the paper's "no-op" heads
attend to, are frequent (``--no-pack``: one padded sentence per row). Three graphs are made from that one
export: *vanilla* (no rewrite), *clipped softmax* (``clipped-softmax``, ``gamma = -alpha / T``, ``zeta = 1``,
``--clip-alpha``, default 0.5: from scratch the attention is near uniform, ``1 / T``, and any
``alpha >= T / (T - 1)`` clips every probability to 0, through which Clip passes no gradient) and *gated
attention* (``gated-attention`` with ``mode=scratch``). Every initializer is trained with graphopt's torch
executor (``TorchExecutor(trainable="all")``) on masked-LM over
standard-library docstring sentences (15% of tokens picked; 80% ``[MASK]``, 10% random, 10% kept; the
loss is cross-entropy on the picked positions only, so the loop lives here rather than in ``finetune``),
with the same data order and masks for all three, and written back. On held-out sentences (fixed masks):
MLM perplexity in fp32 with onnxruntime, max |x| and kurtosis of every attention block's output
(``graphopt.analysis`` outlier statistics, padding excluded), of the attention layer's output after its
residual Add and LayerNorm and of the feed-forward output (:func:`stream_statistics`), and the perplexity
after ``quantize(model, "w8a8", calib)`` (static QDQ, per-channel int8 weights, uint8 activations), with
activation QDQ on the MatMul inputs only (graphopt's default) and with ``residual=True`` (also the inputs of
residual Adds and LayerNorms, per tensor: the paper quantizes all activations). Every
``--check-every`` steps the same statistics are taken with the executor, to show the trend.

Part 2, fine-tuning the real all-MiniLM-L6-v2 (dynamo export): ``gated-attention`` in its fine-tuning mode
(gates start at exactly 1), only the gates trained (``finetune(trainable="gates", teacher=original,
loss="cosine")``); then the same with an outlier penalty added to the loss (the mean over layers of
``mean_token(kurtosis) / 3`` of the attention outputs, made graph outputs for training only); then every
weight trained (``--minilm-all-steps``, ``--minilm-all-lr``) with distillation plus ``--stream-penalty`` x the
log of the whole-tensor kurtosis of the residual stream (attention-layer and feed-forward outputs), with the
gates and, as the control, without them. Reported: kurtosis and max |x| before/after (attention outputs and
the residual stream), the embedding cosine to the original on held-out sentences, and that cosine after
W8A8 (percentile ranges) with activation QDQ on MatMul inputs only and with the residual stream quantized.

Run: ``.venv/bin/python bench/outliers.py [--steps N] [--quick] [--out bench/results]``; ``--minilm-only
--minilm-lr LR`` reruns part 2 alone and appends it to the existing results. On few cores the variants can
run in parallel: ``--data-cache D.npz --encoder E.onnx --prepare`` once, then one process per
``--variants NAME --out DIR_NAME`` (same settings), then ``--merge DIR_*/outliers.json --out bench/results``
(which keeps the MiniLM part of the existing report, marked as earlier). ``--save-models DIR`` keeps the
trained models and a snapshot every ``--check-every`` steps; ``--rescore DIR_*/outliers.json --save-models DIR``
adds the W8A8 scores of both modes to such runs, with a trend over the snapshots (``--rescore-every``).
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


def build_data(train: int, held: int, vocab: int, sequence: int, seed: int, pack: bool = True) -> dict[str, Any]:
    """Token ids of disjoint train / held-out sentences in a compact vocabulary of the ``vocab`` most
    frequent MiniLM word pieces of the training text (special tokens first).

    ``pack``: sentences are concatenated into blocks of ``sequence`` tokens, ``[CLS] s1 [SEP] s2 [SEP] ...``
    (BERT pre-training's format, rich in delimiters, no padding); otherwise one padded sentence per row."""
    from transformers import AutoTokenizer

    from graphopt.data import stdlib_sentences, tokenize
    from graphopt.frontend import minilm_dir

    sentences = stdlib_sentences(train + held, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    special = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL]
    if pack:
        pieces = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in sentences]
        counts = collections.Counter(t for p in pieces[:train] for t in p)
    else:
        feeds = tokenize(minilm_dir(), sentences, sequence=sequence, input_names=("input_ids", "attention_mask"))
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        counts = collections.Counter(ids[:train][mask[:train] != 0].tolist())
    for s in special:
        counts.pop(s, None)
    kept = [t for t, _ in counts.most_common(vocab - len(special))]
    table = dict(zip(special + kept, range(len(special) + len(kept))))
    if pack:
        parts = [_pack([[table.get(t, UNK) for t in p] for p in chunk], sequence)
                 for chunk in (pieces[:train], pieces[train:])]
        data = {"train": (parts[0], np.ones_like(parts[0])), "held": (parts[1], np.ones_like(parts[1]))}
    else:
        compact = np.vectorize(lambda t: table.get(int(t), UNK), otypes=[np.int64])(ids)
        data = {"train": (compact[:train], mask[:train]), "held": (compact[train:], mask[train:])}
    ids_train, mask_train = data["train"]
    words = (mask_train != 0) & (ids_train > MASK)
    real = ids_train[(mask_train != 0) & (ids_train != CLS) & (ids_train != SEP)]
    return {
        **data, "vocab": len(special) + len(kept), "coverage": float((real != UNK).mean()),
        "tokens_per_sentence": float(words.sum() / max(1, int((ids_train == SEP).sum()))),
        "delimiter_share": float(np.isin(ids_train[mask_train != 0], (CLS, SEP)).mean()),
        "blocks": {"train": len(ids_train), "held": len(data["held"][0])},
    }


def _pack(sentences: list[list[int]], sequence: int) -> np.ndarray:
    """``[CLS] s1 [SEP] s2 [SEP] ...`` cut into rows of ``sequence`` tokens (each row starts with ``[CLS]``;
    the last, partial row is dropped)."""
    rows, row = [], [CLS]
    for sentence in sentences:
        for token in [*sentence, SEP]:
            row.append(token)
            if len(row) == sequence:
                rows.append(row)
                row = [CLS]
    return np.array(rows, dtype=np.int64)


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
    """Export a freshly initialised ``BertForMaskedLM`` with every parameter a distinct initializer.

    BERT starts its biases at 0 and LayerNorm scales at 1, and the exporter's optimizer folds
    ``x + 0`` away and merges identical initializers: trained in the graph, every layer would then
    share one LayerNorm scale and have no biases at all. So 1-vector and 0-vector parameters get
    noise of std 1e-3 first (negligible next to the weights' 0.02), and the export is checked to
    keep as many trainable values as the torch model has."""
    import onnx_ir as ir
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from graphopt.frontend import export_module

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=4 * hidden, max_position_embeddings=sequence, type_vocab_size=1,
                        pad_token_id=PAD, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        attn_implementation="eager")  # type: ignore[call-arg]
    model = BertForMaskedLM(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 1:
                parameter.add_(torch.randn_like(parameter) * 1e-3)

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
    expected = sum(p.numel() for p in model.parameters())
    exported = sum(v.const_value.size for v in ir.load(path).graph.initializers.values()
                   if v.const_value is not None and v.const_value.dtype.is_floating_point()
                   and v.const_value.size > 1)
    if exported != expected:
        raise SystemExit(f"the export keeps {exported} trainable values of the model's {expected}: "
                         "parameters were folded or merged")
    log(f"exported the encoder with the {result.exporter} exporter ({expected} parameters, all initializers)")


def variants(path: Path, clip_alpha: float = 4.0) -> dict[str, Any]:
    """The three graphs from one export; clipped softmax with ``gamma = -clip_alpha / T``."""
    import onnx_ir as ir

    from graphopt.passes import create_pass

    out = {}
    for name, spec in (("vanilla", None), ("clipped-softmax", ("clipped-softmax", {"alpha": clip_alpha})),
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


def train_mlm(model: Any, data: dict[str, Any], steps: int, batch: int, lr: float, seed: int,
              check_every: int = 0, weight_decay: float = 0.01, snapshots: Path | None = None) -> dict[str, Any]:
    """Masked-LM training of every initializer; the trained values are written back into ``model``.

    Every ``check_every`` steps the outlier statistics of :func:`stream_taps` are taken on 64 held-out
    rows with the executor itself (the taps are extra outputs of a training copy), to follow the trend;
    with ``snapshots`` (a path prefix) the model of that step is also saved as ``<prefix>-step<N>.onnx``."""
    import onnx_ir as ir
    import torch
    import torch.nn.functional as F

    from graphopt.executor import TorchExecutor

    torch.manual_seed(seed)
    work = model.clone()
    taps = stream_taps(work)
    values = {v.name: v for node in work.graph for v in node.outputs}
    for name in dict.fromkeys(n for tap in taps for n in tap.values()):
        work.graph.outputs.append(values[name])
    executor = TorchExecutor(work, trainable="all")
    params = [p for _, p in executor.named_trainable_parameters()]
    decay = [p for p in params if p.dim() >= 2]  # no decay on biases and LayerNorm scales
    rest = [p for p in params if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": rest, "weight_decay": 0.0}],
                                  lr=lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))))
    ids, mask = data["train"]
    rng = np.random.default_rng(seed)
    losses: list[float] = []
    trend: list[dict[str, Any]] = []
    held = {"input_ids": data["held"][0][:64], "attention_mask": data["held"][1][:64]}

    def check(step: int) -> None:
        with torch.no_grad():
            out = executor(held)
        keep = held["attention_mask"] != 0
        row: dict[str, Any] = {"step": step, "loss": round(float(np.mean(losses[-50:])), 3) if losses else None}
        for kind in ("proj", "attention", "ffn"):
            stats = [_moments(out[tap[kind]].numpy()[keep]) for tap in taps if kind in tap]
            if stats:
                row[kind] = {"max_abs": round(max(x[0] for x in stats), 2),
                             "kurtosis": round(max(x[1] for x in stats), 2)}
        trend.append(row)
        log("  trend " + json.dumps(row))
        if snapshots is not None:
            snapshot = executor.write_back(model.clone())
            target = snapshots.with_name(f"{snapshots.name}-step{step}.onnx")
            with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".onnx", delete=False) as tmp:
                ir.save(snapshot, tmp.name)
            os.replace(tmp.name, target)

    if check_every:
        check(0)
    started = time.perf_counter()
    checking = 0.0
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
        if check_every and ((step + 1) % check_every == 0 or step + 1 == steps):
            tick = time.perf_counter()
            check(step + 1)
            checking += time.perf_counter() - tick
        elif (step + 1) % max(1, steps // 10) == 0:
            log(f"  step {step + 1}/{steps}: loss {np.mean(losses[-50:]):.3f}")
    seconds = time.perf_counter() - started - checking
    executor.write_back(model)
    return {"steps": steps, "batch": batch, "lr": lr, "seconds": round(seconds, 1), "trend": trend,
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


def stream_taps(model: Any) -> list[dict[str, str]]:
    """Per attention block, the names of: ``proj`` its output projection's output after bias (what
    ``graphopt.analysis`` measures), ``attention`` the attention layer's output after the residual Add and
    LayerNorm (the paper's "output of an attention layer" in post-LN BERT, where its outliers show), and
    ``ffn`` the following feed-forward block's output (before its residual Add), where the paper finds the
    largest outliers. Parts that cannot be followed are left out."""
    from graphopt.analysis._attention import find_attention
    from graphopt.analysis._outliers import _after_bias

    def consumer(value: Any, op_type: str) -> Any:
        return next((node for node, _ in value.uses() if node.op_type == op_type), None)

    located: list[dict[str, Any]] = []
    find_attention(model.graph, [], located=located)
    taps = []
    for where in located:
        if where.get("o") is None:
            continue
        proj = _after_bias(where["o"].outputs[0])
        tap = {"proj": proj.name or ""}
        residual = consumer(proj, "Add")
        norm = consumer(residual.outputs[0], "LayerNormalization") if residual is not None else None
        if norm is not None:
            tap["attention"] = norm.outputs[0].name or ""
            second = consumer(norm.outputs[0], "Add")
            if second is not None:
                other = [v for v in second.inputs if v is not norm.outputs[0]]
                if other and other[0] is not None and other[0].name:
                    tap["ffn"] = other[0].name
        taps.append(tap)
    return taps


def _moments(x: np.ndarray) -> tuple[float, float, float]:
    """max |x|, the per-token kurtosis averaged over tokens, and the kurtosis of the whole tensor."""
    x = x.reshape(-1, x.shape[-1]).astype(np.float64)
    centred = x - x.mean(-1, keepdims=True)
    token = float(((centred ** 4).mean(-1) / (centred ** 2).mean(-1) ** 2).mean())
    flat = x - x.mean()
    return float(np.abs(x).max()), token, float((flat ** 4).mean() / (flat ** 2).mean() ** 2)


def stream_statistics(model: Any, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    """max |x| and kurtosis (per token, and of the whole tensor) of every tap of :func:`stream_taps`,
    over the held-out feeds, run with onnxruntime; per kind the largest over layers."""
    from graphopt.calibration import iter_activations

    taps = stream_taps(model)
    names = [name for tap in taps for name in tap.values()]
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for batch in iter_activations(model, feeds, names, batch_size=32):
        for name in names:
            chunks[name].append(np.asarray(batch[name]))
    layers = []
    for i, tap in enumerate(taps):
        row: dict[str, Any] = {"layer": i}
        for kind, name in tap.items():
            peak, token, whole = _moments(np.concatenate(chunks[name]))
            row[kind] = {"max_abs": round(peak, 3), "kurtosis": round(token, 2), "kurtosis_tensor": round(whole, 2)}
        layers.append(row)
    summary = {kind: {key: max(layer[kind][key] for layer in layers if kind in layer)
                      for key in ("max_abs", "kurtosis", "kurtosis_tensor")}
               for kind in ("proj", "attention", "ffn") if any(kind in layer for layer in layers)}
    return {"summary": summary, "layers": layers}


def w8a8_perplexity(model: Any, calib: dict[str, np.ndarray], evaluation: tuple[np.ndarray, ...],
                    method: str, residual: bool = False) -> float:
    """Perplexity after ``quantize(model, "w8a8", calib, method=..., residual=...)``: QDQ on the MatMul
    inputs only, or with ``residual`` also on the residual stream (the inputs of residual Adds and of
    LayerNormalization, per tensor, as the paper's W8A8 quantizes all activations)."""
    from graphopt.quantize import quantize

    with _common.stdout_to_stderr():
        result = quantize(model, "w8a8", calib, method=method, residual=residual)
    return perplexity(result.model, *evaluation)


def w8a8_scores(model: Any, calib: dict[str, np.ndarray], evaluation: tuple[np.ndarray, ...],
                methods: tuple[str, ...] = ("percentile", "minmax")) -> dict[str, float]:
    """``ppl_w8a8_<method>`` (MatMul inputs) and ``ppl_w8a8_residual_<method>`` (and the residual stream)."""
    out = {}
    for method in methods:
        out[f"ppl_w8a8_{method}"] = w8a8_perplexity(model, calib, evaluation, method)
        out[f"ppl_w8a8_residual_{method}"] = w8a8_perplexity(model, calib, evaluation, method, residual=True)
    return out


def score_snapshot(path: Path, step: int, evaluation: tuple[np.ndarray, ...], calib: dict[str, np.ndarray],
                   held: dict[str, np.ndarray]) -> dict[str, Any]:
    """fp32 and W8A8 (both modes, percentile) perplexity and stream statistics of one snapshot, cached
    next to it as ``<snapshot>.score.json`` (so that snapshots can be scored while training goes on)."""
    import onnx_ir as ir

    cache = path.with_suffix(".score.json")
    if cache.exists() and cache.stat().st_mtime >= path.stat().st_mtime:
        return dict(json.loads(cache.read_text()))
    model = ir.load(path)
    point = {"step": step, "ppl_fp32": perplexity(model, *evaluation),
             **w8a8_scores(model, calib, evaluation, ("percentile",)),
             "stream": stream_statistics(model, held)["summary"]}
    _common.write_json(cache, point)
    return point


def rescore(paths: list[Path], models: Path, data: dict[str, Any], seed: int, calib_rows: int,
            every: int) -> None:
    """Add the W8A8 scores of both modes to runs made with ``--save-models`` (their ``outliers.json``,
    rewritten in place): for the final model of each variant, and, as a trend, for its snapshots every
    ``every`` steps (fp32 and W8A8 perplexity, percentile ranges; stream statistics on the held-out data).
    The final model's fp32 perplexity is recomputed and must match the run's."""
    import onnx_ir as ir

    evaluation, calib = evaluation_data(data, seed, calib_rows)
    held = {"input_ids": data["held"][0], "attention_mask": data["held"][1]}
    for path in paths:
        part = json.loads(path.read_text())
        for name, row in part["scratch"].items():
            model = ir.load(models / f"{name}.onnx")
            ppl = perplexity(model, *evaluation)
            if not math.isclose(ppl, row["ppl_fp32"], rel_tol=1e-4):
                raise SystemExit(f"{name}: the saved model's perplexity is {ppl:.4f}, the run's {row['ppl_fp32']:.4f}")
            row.update(w8a8_scores(model, calib, evaluation))
            log(f"{name}: W8A8 " + json.dumps({k: round(v, 2) for k, v in row.items() if k.startswith("ppl_")}))
            trend = []
            for step in range(0, part["settings"]["steps"] + 1, every):
                snapshot = models / f"{name}-step{step}.onnx"
                if not snapshot.exists():
                    continue
                point = score_snapshot(snapshot, step, evaluation, calib, held)
                trend.append(point)
                log(f"  {name} step {step}: " + json.dumps({k: round(v, 2) for k, v in point.items()
                                                             if k.startswith("ppl_")}))
            row["w8a8_trend"] = trend
        _common.write_json(path, part)


def _io_save(model: Any, path: Path) -> None:
    from graphopt._io import save_model

    save_model(model, path)


# --------------------------------------------------------------------------- part 2: MiniLM


def minilm_part(steps: int, lr: float, calib: int, held: int, sequence: int, penalty: float,
                seed: int, all_steps: int = 300, all_lr: float = 5e-5, stream_penalty: float = 0.05) -> dict[str, Any]:
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

    def cosine(model: ir.Model) -> np.ndarray:
        embeddings = make_session(model, threads=2).run(None, held_feeds)[0]
        return np.asarray((embeddings * reference).sum(-1) / (np.linalg.norm(embeddings, axis=-1)
                                                              * np.linalg.norm(reference, axis=-1)))

    def measure(model: ir.Model) -> dict[str, Any]:
        from graphopt.quantize import quantize

        cos = cosine(model)
        row = {**outliers(model, held_feeds), "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
               "stream": stream_statistics(model, held_feeds)["summary"]}
        for residual in (False, True):  # W8A8 (percentile ranges) calibrated on the training sentences
            with _common.stdout_to_stderr():
                quantized = quantize(model, "w8a8", train_feeds, method="percentile", residual=residual).model
            row[f"w8a8{'_residual' if residual else ''}_cosine"] = float(cosine(quantized).mean())
        return row

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

    # Every weight trained, against the residual stream's outliers (what W8A8 + residual trips on): with
    # gates, and without them as the control that tells what the gates add.
    for name, rewrite in (("gated", True), ("no gates", False)):
        model = create_pass("gated-attention", {"mode": "finetune"})(original.clone()).model if rewrite else \
            original.clone()
        train = finetune_with_penalty(model, original, train_feeds, all_steps, all_lr, stream_penalty, seed, torch,
                                      TorchExecutor, trainable="all", taps="stream")
        key = f"{name}, all weights, distillation + {stream_penalty:g} x log stream kurtosis"
        rows[key] = {**measure(model), "train": train}
        log(f"MiniLM {key}: cosine {rows[key]['cosine_mean']:.4f}, W8A8 + residual "
            f"{rows[key]['w8a8_residual_cosine']:.4f}, stream {json.dumps(rows[key]['stream'])}")
    return {"calibration_sentences": calib, "held_out_sentences": held, "sequence": sequence, "steps": steps,
            "lr": lr, "penalty": penalty, "all_steps": all_steps, "all_lr": all_lr, "stream_penalty": stream_penalty,
            "rows": rows}


def finetune_with_penalty(model: Any, teacher: Any, feeds: dict[str, np.ndarray], steps: int, lr: float,
                          weight: float, seed: int, torch: Any, executor_class: Any, trainable: str = "gates",
                          taps: str = "proj") -> dict[str, Any]:
    """Train ``trainable`` on a cosine distillation loss plus an outlier penalty (padding excluded), the
    tapped values made graph outputs of a training copy only. ``taps="proj"``: the attention outputs,
    penalty ``weight * mean_layers(mean_tokens(kurtosis) / 3)``; ``taps="stream"``: every attention
    layer's output and feed-forward output (:func:`stream_taps`), penalty ``weight * log(mean_taps(
    kurtosis / 3))`` with the kurtosis of the whole tensor (per-tensor ranges are what W8A8 pays for; the
    log keeps a penalty that starts in the thousands from swamping the distillation)."""
    from graphopt.analysis._attention import find_attention
    from graphopt.analysis._outliers import _after_bias
    from graphopt.runtime import make_session

    work = model.clone()
    if taps == "proj":
        located: list[dict[str, Any]] = []
        find_attention(work.graph, [], located=located)
        tapped = [_after_bias(w["o"].outputs[0]) for w in located if w.get("o") is not None]
    else:
        names = {name for tap in stream_taps(work) for kind, name in tap.items() if kind in ("attention", "ffn")}
        tapped = [v for node in work.graph for v in node.outputs if v.name in names]
    out_name = work.graph.outputs[0].name
    for tap in tapped:
        work.graph.outputs.append(tap)
    executor = executor_class(work, trainable=trainable)
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
        for tap in tapped:
            x = out[tap.name][keep]
            if taps == "proj":
                c = x - x.mean(-1, keepdim=True)
                kurt.append(((c ** 4).mean(-1) / (c ** 2).mean(-1) ** 2).mean() / 3)
            else:
                c = x - x.mean()
                kurt.append((c ** 4).mean() / (c ** 2).mean() ** 2 / 3)
        distil = (1 - cos).mean()
        mean_kurtosis = torch.stack(kurt).mean()
        loss = distil + weight * (mean_kurtosis if taps == "proj" else torch.log(mean_kurtosis))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append((float(distil.detach()), float(torch.stack(kurt).detach().mean() * 3)))
    executor.write_back(model)
    return {"steps": steps, "lr": lr, "trainable": trainable, "penalty_taps": taps,
            "seconds": round(time.perf_counter() - started, 1),
            "first": {"distil": history[0][0], "mean_kurtosis": history[0][1]},
            "last": {"distil": history[-1][0], "mean_kurtosis": history[-1][1]}}


# --------------------------------------------------------------------------- report


def markdown(report: dict[str, Any]) -> str:
    s, d = report["settings"], report["data"]
    fmt = ("{blocks} packed blocks of {seq} tokens (`[CLS] s1 [SEP] s2 [SEP] ...`, {share:.0%} delimiters)"
           if s.get("pack", False) else "{train} padded sentences of up to {seq} tokens")
    layout = fmt.format(blocks=d.get("blocks", {}).get("train"), seq=s["sequence"], share=d.get("delimiter_share", 0),
                        train=s["train"])
    lines = [
        "# Outliers and quantizability: clipped softmax and gated attention (small scale)", "",
        f"BERT-style encoder (post-LayerNorm) trained from scratch with graphopt's torch executor: {s['layers']} "
        f"layers, hidden {s['hidden']}, {s['heads']} heads, vocabulary {d['vocab']} word pieces (covering "
        f"{d['coverage']:.1%} of training tokens); masked-LM on {layout} from {s['train']} standard-library "
        f"sentences (about {d['tokens_per_sentence']:.0f} tokens each); {s['steps']} AdamW steps of batch "
        f"{s['batch']}, peak lr {s['lr']:g}, weight decay {s.get('weight_decay', 0.01):g} on matrices only. "
        f"Held-out: {s['held']} other sentences, fixed masks. Outliers on the held-out data, largest over layers: "
        "*o-proj* = the attention output projection's output (`graphopt inspect --activations`), *attention "
        "layer* = after its residual Add and LayerNorm (the paper's \"output of an attention layer\"), *FFN* = "
        "the feed-forward output before its residual Add (where the paper sees the largest outliers); kurtosis "
        "per token (3 for a Gaussian), averaged over tokens. W8A8: `quantize(model, 'w8a8', calib)` on "
        f"{s['calib']} masked training rows, percentile (99.999) and min-max activation ranges; *MatMul*: "
        "activation QDQ on MatMul inputs only (graphopt's default), *+ residual*: `residual=True` "
        "(`graphopt quantize --residual`), also the inputs of every residual Add and LayerNorm, per tensor, as "
        "the paper's W8A8 quantizes all activations. Clipped softmax: gamma = -alpha / T with alpha "
        f"{s.get('clip_alpha', 4.0):g}, T = {s['sequence']}, zeta = 1.", "",
        "| model | train loss first / last | train time (s) | fp32 perplexity | o-proj max \\|x\\| / kurtosis | "
        "attention layer max \\|x\\| / kurtosis | FFN max \\|x\\| / kurtosis | W8A8 MatMul (percentile / "
        "min-max) | W8A8 + residual (percentile / min-max) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def ppl(row: dict[str, Any], prefix: str) -> str:
        values = [row.get(f"{prefix}_{m}") for m in ("percentile", "minmax")]
        return " / ".join(f"{v:.2f}" for v in values) if all(v is not None for v in values) else "-"

    def cell(row: dict[str, Any], kind: str) -> str:
        x = row.get("stream", {}).get("summary", {}).get(kind)
        return f"{x['max_abs']:.1f} / {x['kurtosis']:.1f}" if x else "-"

    for name, row in report["scratch"].items():
        t = row["train"]
        lines.append(f"| {name} | {t['first_loss']:.2f} / {t['last_loss']:.2f} | {t['seconds']:.0f} | "
                     f"{row['ppl_fp32']:.2f} | {row['max_abs']:.2f} / {row['kurtosis']:.2f} | {cell(row, 'attention')} "
                     f"| {cell(row, 'ffn')} | {ppl(row, 'ppl_w8a8')} | {ppl(row, 'ppl_w8a8_residual')} |")
    lines += ["", "Per layer, o-proj (max |x| / kurtosis): " + "; ".join(
        f"{name}: " + ", ".join(f"{x['max_abs']:.1f}/{x['kurtosis']:.1f}" for x in row["layers"])
        for name, row in report["scratch"].items()), ""]
    trends = {name: row["train"].get("trend") for name, row in report["scratch"].items() if row["train"].get("trend")}
    if trends:
        lines += ["Trend during training (executor, 64 held-out rows; largest over layers; "
                  "o-proj kurtosis / attention layer kurtosis / FFN max |x|):", "",
                  "| step | " + " | ".join(trends) + " |", "|---" * (len(trends) + 1) + "|"]
        steps = [r["step"] for r in next(iter(trends.values()))]
        for i, step in enumerate(steps):
            cells = []
            for rows in trends.values():
                r = rows[i] if i < len(rows) else {}
                cells.append(f"{r['proj']['kurtosis']:.1f} / {r['attention']['kurtosis']:.1f} / "
                             f"{r['ffn']['max_abs']:.1f}" if "attention" in r and "ffn" in r else "-")
            lines.append(f"| {step} | " + " | ".join(cells) + " |")
        lines.append("")
    scored = {name: row["w8a8_trend"] for name, row in report["scratch"].items() if row.get("w8a8_trend")}
    if scored:
        lines += ["Perplexity of the snapshots during training (onnxruntime, all held-out rows; fp32 / W8A8 MatMul / "
                  "W8A8 + residual, percentile ranges) and FFN max |x| / attention-layer kurtosis:", "",
                  "| step | " + " | ".join(scored) + " |", "|---" * (len(scored) + 1) + "|"]
        for step in sorted({p["step"] for rows in scored.values() for p in rows}):
            cells = []
            for rows in scored.values():
                p = next((r for r in rows if r["step"] == step), None)
                cells.append("-" if p is None else
                             f"{p['ppl_fp32']:.1f} / {p['ppl_w8a8_percentile']:.1f} / "
                             f"{p['ppl_w8a8_residual_percentile']:.1f}; {p['stream']['ffn']['max_abs']:.1f} / "
                             f"{p['stream']['attention']['kurtosis']:.1f}")
            lines.append(f"| {step} | " + " | ".join(cells) + " |")
        lines.append("")
    runs = report.get("minilm") or []
    for m in runs if isinstance(runs, list) else [runs]:
        lines += minilm_markdown(m)
    threads = s.get("threads", 1)
    parallel = (f", the {report['parallel_runs']} variants in parallel processes ({threads} torch "
                f"thread{'s' if threads != 1 else ''} each)") if report.get("parallel_runs") else ""
    lines += [f"Total run time {report['seconds']:.0f} s on {report['machine']['cpus_usable']} CPU cores{parallel} "
              f"(load average {report['machine']['load_average'][0]:.1f} at start).", ""]
    if report.get("notes"):
        lines += ["Notes:", "", *[f"- {note}" for note in report["notes"]], ""]
    return "\n".join(lines)


def minilm_markdown(m: dict[str, Any]) -> list[str]:
    """The section of one MiniLM fine-tuning run (runs before the stream statistics show "-" there)."""
    earlier = f" (from an earlier run, {m['machine']['date']})" if m.get("earlier") and m.get("machine") else (
        " (from an earlier run)" if m.get("earlier") else "")
    streamed = any("stream" in row for row in m["rows"].values())
    lines = [
        f"## Fine-tuning all-MiniLM-L6-v2 with gated attention, gates lr {m.get('lr', 1e-2):g}" + earlier, "",
        f"{m['calibration_sentences']} training and {m['held_out_sentences']} held-out sentences, sequence "
        f"{m['sequence']}, batch 8, Adam: gates only, {m['steps']} steps at lr {m.get('lr', 1e-2):g}"
        + (f"; all weights, {m['all_steps']} steps at lr {m['all_lr']:g}" if "all_steps" in m else "")
        + ". Attention output: largest max |x| and per-token kurtosis over the 6 attention outputs on the "
        "held-out sentences; cosine: sentence embeddings to the original model.", ""]
    if streamed:
        lines += ["Also the residual stream (largest over layers): *attention layer* = after the residual Add and "
                  "LayerNorm (per-token kurtosis), *FFN* = the feed-forward output before its residual Add (max |x| "
                  "and the kurtosis of the whole tensor, what a per-tensor range pays for); W8A8: mean cosine of "
                  "`quantize(model, 'w8a8', train sentences, method='percentile')` to the original fp32 model, "
                  "activation QDQ on MatMul inputs only, and with `residual=True` (also every residual Add and "
                  "LayerNorm input).", "",
                  "| model | attention output max \\|x\\| / kurtosis | attention layer kurtosis | FFN max \\|x\\| / "
                  "tensor kurtosis | mean / min cosine | W8A8 cosine | W8A8 + residual cosine |",
                  "|---|---|---|---|---|---|---|"]
        for name, row in m["rows"].items():
            att, ffn = row.get("stream", {}).get("attention"), row.get("stream", {}).get("ffn")
            att_cell = f"{att['kurtosis']:.1f}" if att else "-"
            ffn_cell = f"{ffn['max_abs']:.1f} / {ffn['kurtosis_tensor']:.0f}" if ffn else "-"
            w8a8 = [f"{row[k]:.4f}" if k in row else "-" for k in ("w8a8_cosine", "w8a8_residual_cosine")]
            lines.append(f"| {name} | {row['max_abs']:.2f} / {row['kurtosis']:.2f} | {att_cell} | {ffn_cell} | "
                         f"{row['cosine_mean']:.4f} / {row['cosine_min']:.4f} | {w8a8[0]} | {w8a8[1]} |")
    else:
        lines += ["| model | max \\|x\\| | kurtosis | mean cosine | min cosine |", "|---|---|---|---|---|"]
        for name, row in m["rows"].items():
            lines.append(f"| {name} | {row['max_abs']:.2f} | {row['kurtosis']:.2f} | {row['cosine_mean']:.5f} | "
                         f"{row['cosine_min']:.5f} |")
    return [*lines, ""]


def evaluation_data(data: dict[str, Any], seed: int, calib_rows: int) -> tuple[tuple[np.ndarray, ...],
                                                                               dict[str, np.ndarray]]:
    """``((inputs, mask, labels) held out with fixed masks, calibration feeds)``: the first ``calib_rows``
    training rows, masked as in training."""
    held_ids, held_mask = data["held"]
    held_inputs, held_labels = mask_tokens(held_ids, held_mask, data["vocab"], np.random.default_rng(seed + 7))
    calib_ids, calib_mask = data["train"][0][:calib_rows], data["train"][1][:calib_rows]
    calib_inputs, _ = mask_tokens(calib_ids, calib_mask, data["vocab"], np.random.default_rng(seed + 11))
    return (held_inputs, held_mask, held_labels), {"input_ids": calib_inputs, "attention_mask": calib_mask}


def cached_data(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`build_data` for the arguments, through ``--data-cache`` when given (so that a run on another
    machine trains on the same tokens without the tokenizer)."""
    keys = ("vocab", "coverage", "tokens_per_sentence", "delimiter_share")
    if args.data_cache is not None and args.data_cache.exists():
        with np.load(args.data_cache) as z:
            data: dict[str, Any] = {k: z[k].item() for k in keys}
            data["train"], data["held"] = (z["train_ids"], z["train_mask"]), (z["held_ids"], z["held_mask"])
        data["blocks"] = {"train": len(data["train"][0]), "held": len(data["held"][0])}
        return data
    data = build_data(args.train, args.held, args.vocab, args.sequence, args.seed, pack=args.pack)
    if args.data_cache is not None:
        arrays: dict[str, Any] = {k: np.asarray(data[k]) for k in keys}
        arrays.update(train_ids=data["train"][0], train_mask=data["train"][1], held_ids=data["held"][0],
                      held_mask=data["held"][1])
        args.data_cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.data_cache, **arrays)
    return data


def merge(paths: list[Path], out: Path, notes: list[str] | None = None) -> int:
    """One report from runs of single variants (same settings): their rows in the given order, the
    MiniLM part of the existing report in ``out`` kept and marked as earlier."""
    parts = [json.loads(p.read_text()) for p in paths]
    report = {**parts[0], "scratch": {}, "seconds": max(p["seconds"] for p in parts),
              "parallel_runs": len(parts), "notes": list(notes or [])}
    for part in parts:
        diff = {k for k in part["settings"] if k != "variants" and part["settings"][k] != parts[0]["settings"][k]}
        if diff:
            raise SystemExit(f"cannot merge runs with different settings: {sorted(diff)}")
        report["scratch"].update(part["scratch"])
    report["settings"] = {**parts[0]["settings"], "variants": ",".join(report["scratch"])}
    if (out / "outliers.json").exists():
        old = json.loads((out / "outliers.json").read_text())
        earlier = old.get("minilm") or []
        report["minilm"] = [{**m, "earlier": True, "machine": m.get("machine", old.get("machine"))}
                            for m in (earlier if isinstance(earlier, list) else [earlier])]
    _common.write_json(out / "outliers.json", report)
    _common.write_atomic(out / "outliers.md", markdown(report))
    print(markdown(report))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01, help="on weight matrices only")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--sequence", type=int, default=64)
    parser.add_argument("--no-pack", dest="pack", action="store_false",
                        help="one padded sentence per row instead of packed [CLS] s1 [SEP] s2 [SEP] ... blocks")
    parser.add_argument("--check-every", type=int, default=250, help="outlier trend every N steps (0: off)")
    parser.add_argument("--variants", default="vanilla,clipped-softmax,gated-attention")
    parser.add_argument("--train", type=int, default=7200)
    parser.add_argument("--held", type=int, default=500)
    parser.add_argument("--calib", type=int, default=128)
    parser.add_argument("--minilm-steps", type=int, default=150)
    parser.add_argument("--penalty", type=float, default=0.05)
    parser.add_argument("--minilm-lr", type=float, default=1e-2)
    parser.add_argument("--minilm-all-steps", type=int, default=300, help="MiniLM, all weights trained: steps")
    parser.add_argument("--minilm-all-lr", type=float, default=5e-5)
    parser.add_argument("--stream-penalty", type=float, default=0.05,
                        help="MiniLM, all weights trained: weight of the log residual-stream kurtosis penalty")
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--minilm-only", action="store_true",
                        help="rerun part 2 only and replace its section in the existing outliers.json / .md")
    parser.add_argument("--quick", action="store_true", help="tiny run to check the script end to end")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-cache", type=Path, help="tokenised data (.npz): loaded if there, else built and saved")
    parser.add_argument("--encoder", type=Path, help="exported encoder (.onnx): used if there, else exported there")
    parser.add_argument("--prepare", action="store_true", help="only build --data-cache and --encoder, then stop")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                        help="combine the variants of runs made with --variants into one report in --out")
    parser.add_argument("--note", action="append", help="with --merge: a line for the report's notes")
    parser.add_argument("--rescore", type=Path, nargs="+", metavar="JSON",
                        help="add W8A8 scores of both modes (and a trend over snapshots) to runs made with "
                             "--save-models DIR (give the same DIR and --data-cache), in place")
    parser.add_argument("--rescore-every", type=int, default=500, help="with --rescore: snapshot interval")
    parser.add_argument("--score-snapshots", action="store_true",
                        help="score (and cache) the snapshots in --save-models DIR now, every --rescore-every steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training")
    parser.add_argument("--clip-alpha", type=float, default=0.5,
                        help="clipped softmax gamma = -alpha / T (alpha >= T / (T - 1) clips uniform attention to 0)")
    parser.add_argument("--save-models", type=Path, metavar="DIR",
                        help="keep the trained models (and one per --check-every step) as DIR/NAME[-stepN].onnx")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.train, args.held, args.calib, args.minilm_steps, args.check_every = 20, 600, 64, 32, 5, 10
        args.minilm_all_steps = 3
    import torch

    torch.set_num_threads(args.threads)
    report: dict[str, Any]
    if args.minilm_only:
        report = json.loads((args.out / "outliers.json").read_text())
        earlier = report.get("minilm") or []
        run = minilm_part(args.minilm_steps, args.minilm_lr, 4 * args.calib, args.held // 2, 64, args.penalty,
                          args.seed, args.minilm_all_steps, args.minilm_all_lr, args.stream_penalty)
        run["machine"] = _common.machine_info()
        report["minilm"] = [*({**m, "earlier": True} for m in (earlier if isinstance(earlier, list) else [earlier])),
                            run]
        _common.write_json(args.out / "outliers.json", report)
        _common.write_atomic(args.out / "outliers.md", markdown(report))
        print(markdown(report))
        return 0
    report = {"machine": _common.machine_info(), "settings": {
        k: v for k, v in vars(args).items() if k not in ("out", "quick", "skip_minilm", "minilm_only")}}
    if args.merge:
        return merge(args.merge, args.out, args.note)
    data = cached_data(args)
    if args.score_snapshots and args.save_models is not None:
        evaluation, calib = evaluation_data(data, args.seed, args.calib)
        held = {"input_ids": data["held"][0], "attention_mask": data["held"][1]}
        for path in sorted(args.save_models.glob("*-step*.onnx")):
            step = int(path.stem.rsplit("-step", 1)[1])
            if step % args.rescore_every == 0:
                log(f"{path.name}: {json.dumps(score_snapshot(path, step, evaluation, calib, held))[:160]}")
        return 0
    if args.rescore:
        if args.save_models is None:
            raise SystemExit("--rescore needs --save-models DIR (where the runs kept their models)")
        rescore(args.rescore, args.save_models, data, args.seed, args.calib, args.rescore_every)
        return 0
    if args.prepare:
        if args.encoder is None:
            raise SystemExit("--prepare needs --encoder")
        export_encoder(args.encoder, data["vocab"], args.layers, args.hidden, args.heads, args.sequence, args.seed)
        return 0
    report["data"] = {k: data[k] for k in ("vocab", "coverage", "tokens_per_sentence", "delimiter_share", "blocks")}
    log(f"data: {json.dumps(report['data'])}")
    held_ids, held_mask = data["held"]
    evaluation, calib = evaluation_data(data, args.seed, args.calib)
    report["scratch"] = {}
    with tempfile.TemporaryDirectory(prefix="graphopt-outliers-") as scratch:
        path = args.encoder if args.encoder is not None and args.encoder.exists() else Path(scratch) / "encoder.onnx"
        if not path.exists():
            export_encoder(path, data["vocab"], args.layers, args.hidden, args.heads, args.sequence, args.seed)
        wanted = args.variants.split(",")
        for name, model in variants(path, args.clip_alpha).items():
            if name not in wanted:
                continue
            log(f"{name}: training {args.steps} steps")
            if args.save_models is not None:
                args.save_models.mkdir(parents=True, exist_ok=True)
            train = train_mlm(model, data, args.steps, args.batch, args.lr, args.seed, args.check_every,
                              args.weight_decay, args.save_models / name if args.save_models else None)
            if args.save_models is not None:
                _io_save(model, args.save_models / f"{name}.onnx")
            row: dict[str, Any] = {"train": train, "ppl_fp32": perplexity(model, *evaluation)}
            row.update(outliers(model, {"input_ids": held_ids, "attention_mask": held_mask}))
            row["stream"] = stream_statistics(model, {"input_ids": held_ids, "attention_mask": held_mask})
            row.update(w8a8_scores(model, calib, evaluation))
            report["scratch"][name] = row
            log(f"{name}: ppl {row['ppl_fp32']:.2f}, max|x| {row['max_abs']:.2f}, kurtosis {row['kurtosis']:.2f}, "
                f"stream {json.dumps(row['stream']['summary'])}, "
                f"W8A8 ppl {row['ppl_w8a8_percentile']:.2f} / {row['ppl_w8a8_minmax']:.2f}")
    if args.skip_minilm and (args.out / "outliers.json").exists() and not args.quick:
        old = json.loads((args.out / "outliers.json").read_text())
        earlier = old.get("minilm") or []
        report["minilm"] = [{**m, "earlier": True, "machine": m.get("machine", old.get("machine"))}
                            for m in (earlier if isinstance(earlier, list) else [earlier])]
    if not args.skip_minilm:
        report["minilm"] = [minilm_part(args.minilm_steps, args.minilm_lr, 4 * args.calib, args.held // 2, 64,
                                        args.penalty, args.seed, args.minilm_all_steps, args.minilm_all_lr,
                                        args.stream_penalty)]
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
