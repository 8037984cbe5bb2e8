"""LLaMA-NAS at small scale on CPU: a weight-shared Llama-style super-network, searched with NSGA-II.

1. Train a byte-level Llama-style decoder (``bench/_llama.py``: 6 layers, hidden 128, 4 heads, SwiGLU 384,
   RoPE, RMSNorm) on Python standard-library sources with sub-network sampling (InstaTune / sandwich rule:
   full + smallest + 2 random sub-networks per step), and, as the pruning baseline's starting point, the same
   network trained alone (full network only) for the same number of steps. Weights are cached under
   ``.graphopt-cache/llama_nas/`` (gitignored): reruns skip training.
2. Export both to ONNX through ``graphopt.frontend.export_hf_model`` (as ``LlamaForCausalLM``, dynamo).
3. Search sub-networks of the super-network (per layer: kept or dropped, 1-4 heads, 1/4-4/4 MLP width) with
   graphopt's NSGA-II (``graphopt.nas.search``) for validation perplexity (held-out stdlib files) and
   onnxruntime latency relative to the full network (batch 4 x 128 tokens, 2 threads, each candidate
   alternating with the full network in one graphopt.bench worker). Sub-networks are cut from the ONNX graph
   with graphopt's pruning primitives, keeping the first heads / neurons (the weight-shared prefix slices the
   super-network was trained with; ``extract_subnetwork`` keeps the most important units instead).
4. Baselines: (i) uniformly shrunk sub-networks of the super-network (same heads and MLP fraction in every
   layer, all layers), (ii) ``graphopt.prune.prune`` (heads / MLP / layers, activation importance) of the
   normally trained network, no super-network training.
5. The front's points and the baselines are measured again on the test files, with latency in one final
   alternating run; results go to ``bench/results/llama_nas.{json,md,png}``.

    .venv/bin/python bench/llama_nas.py [--steps N] [--budget N] [--retrain]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench import _common
from bench import _llama as L
from bench._common import log

THREADS, BENCH_BATCH = 2, 4
TRAIN_THREADS = 1  # the machine is shared: one thread wastes less time in spin-waits than two
EVAL_WINDOWS = 64  # windows of CONFIG.context bytes per held-out split
CALIB_WINDOWS = 32  # training windows for activation importance
CACHE = _common.ROOT / ".graphopt-cache" / "llama_nas"
RESULTS = _common.ROOT / "bench" / "results"
LOSS_TOLERANCE = 0.02  # "negligible": at most 2% relative perplexity increase


def _cache_key(steps: int) -> str:
    text = json.dumps({"config": L.CONFIG.__dict__, "steps": steps, "mlp_choices": L.MLP_CHOICES,
                       "random": L.RANDOM_PER_STEP, "min_layers": L.MIN_LAYERS, "version": 1}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def trained(kind: str, steps: int, corpus: L.Corpus, retrain: bool) -> Path:
    """The folder of the trained ``kind`` network (``supernet`` or ``standard``), training it if not cached."""
    import torch

    folder = CACHE / f"{kind}-{_cache_key(steps)}"
    if (folder / "train.json").is_file() and not retrain:
        log(f"{kind}: cached weights in {folder}")
        return folder
    torch.set_num_threads(TRAIN_THREADS)
    model = L.build_model(seed=0)
    log(f"{kind}: training {steps} steps on {len(corpus.train) / 1e6:.1f} MB of stdlib sources")
    info = L.train(model, corpus, steps=steps, supernet=kind == "supernet", seed=0, log=log, log_every=25)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=CACHE.parent if CACHE.parent.exists() else None))
    L.save_hf(model, tmp, info)
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, folder)
    log(f"{kind}: trained in {info['seconds']:.0f} s, saved to {folder}")
    return folder


# ---------------------------------------------------------------------------------------------
# ONNX: export, sub-network cuts, evaluation


def export(folder: Path, target: Path) -> Path:
    """``LlamaForCausalLM`` in ``folder`` to ONNX (dynamo), logits output, verified by graphopt.frontend."""
    from graphopt.frontend import export_hf_model

    with _common.stdout_to_stderr():
        result = export_hf_model(folder, target, output="logits", exporter="dynamo", batch=2, sequence=16)
    log(f"exported {folder.name} with {result.exporter} (max abs error vs torch {result.max_abs_error:.1e})")
    return result.path


def cut(base: Any, net: L.SubNet) -> Any:
    """The sub-network ``net`` of the exported super-network ``base`` (an ``onnx_ir.Model``, not modified):
    the first ``net.heads[i]`` heads and ``net.mlp[i]`` neurons of each kept layer, the other layers dropped."""
    from graphopt.rewrites.prune import analyze, drop_layers, prune_head_group, prune_mlp_group
    from graphopt.rewrites.prune._base import finish

    work = base.clone()
    analysis = analyze(work)
    if len(analysis.heads) != L.CONFIG.layers or len(analysis.mlps) != L.CONFIG.layers:
        raise RuntimeError(f"found {len(analysis.heads)} attention and {len(analysis.mlps)} MLP blocks, "
                           f"expected {L.CONFIG.layers}: {analysis.reasons()}")
    changed = False
    for i in net.layers:
        heads, mlp = analysis.heads[i], analysis.mlps[i]
        if net.heads[i] < heads.units:
            changed |= prune_head_group(work, heads, list(range(net.heads[i])))
        if net.mlp[i] < mlp.units:
            changed |= prune_mlp_group(work, mlp, list(range(net.mlp[i])))
    if changed:
        finish(work)
    dropped = [i for i in range(L.CONFIG.layers) if i not in net.layers]
    if dropped:
        drop_layers(work, [g for g in analyze(work).layers if g.index in dropped])
    return work


class Evaluator:
    """Perplexity of a graph on held-out windows (onnxruntime) and its latency relative to a reference graph
    (both alternating in one graphopt.bench worker, batch ``BENCH_BATCH`` x context, ``THREADS`` threads)."""

    def __init__(self, corpus: L.Corpus, reference: Path, folder: Path) -> None:
        context = L.CONFIG.context
        self.windows = {split: corpus.windows(split, EVAL_WINDOWS, context + 1) for split in ("validation", "test")}
        self.reference, self.folder = reference, folder
        rng = np.random.default_rng(0)
        ids = rng.integers(0, L.VOCAB, (BENCH_BATCH, context)).astype(np.int64)
        self.bench_feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        self.count = 0

    def perplexity(self, model: Any, split: str) -> float:
        from graphopt.runtime import make_session

        session = make_session(model, threads=THREADS)
        losses = []
        for chunk in np.array_split(self.windows[split], 4):
            x, y = chunk[:, :-1], chunk[:, 1:]
            logits = session.run(None, {"input_ids": x, "attention_mask": np.ones_like(x)})[0].astype(np.float64)
            logits -= logits.max(axis=-1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
            losses.append(-np.take_along_axis(logp, y[..., None], axis=-1).mean())
        return L.perplexity(losses)

    def save(self, model: Any, name: str) -> Path:
        from graphopt._io import save_model

        path = self.folder / f"{name}.onnx"
        save_model(model, path)
        return path

    def latency_ratio(self, path: Path) -> float:
        from graphopt.bench import benchmark

        report = benchmark([self.reference, path], self.bench_feeds, threads=THREADS, warmup=2, runs=15,
                           min_seconds=0.2, max_runs=40)
        assert report.ratio is not None
        return float(report.ratio.median)

    def evaluate(self, model: Any, name: str) -> dict[str, float]:
        from graphopt.prune import parameter_count

        path = self.save(model, name)
        self.count += 1
        return {"val_ppl": self.perplexity(model, "validation"), "latency": self.latency_ratio(path),
                "params": float(parameter_count(model))}


# ---------------------------------------------------------------------------------------------
# Search space: per layer one gene for heads (0 = layer dropped, 1..4 heads) and one for the MLP width


def encoding() -> Any:
    from graphopt.nas.search import Encoding

    n = L.CONFIG.layers
    return Encoding((L.CONFIG.heads + 1,) * n + (len(L.MLP_CHOICES),) * n, decode, _label,
                    canonical=canonical)


def _label(net: Any) -> str:
    return str(net.label())


def canonical(genes: tuple[int, ...]) -> tuple[int, ...]:
    """The MLP gene of a dropped layer set to 0: one network, one cache key."""
    n = L.CONFIG.layers
    return genes[:n] + tuple(g if genes[i] > 0 else 0 for i, g in enumerate(genes[n:]))


def decode(genes: tuple[int, ...]) -> L.SubNet:
    n = L.CONFIG.layers
    layers = tuple(i for i in range(n) if genes[i] > 0)
    heads = tuple(max(1, g) for g in genes[:n])
    mlp = tuple(L.MLP_CHOICES[g] for g in genes[n:])
    if len(layers) < L.MIN_LAYERS:
        raise ValueError(f"{len(layers)} layers kept; the super-network was trained with >= {L.MIN_LAYERS}")
    return L.SubNet(layers, tuple(h if i in layers else 0 for i, h in enumerate(heads)),
                    tuple(m if i in layers else 0 for i, m in enumerate(mlp)))


def search_front(ev: Evaluator, base: Any, budget: int, key: str) -> tuple[Any, dict[str, dict[str, float]], int]:
    from graphopt.nas.objectives import Objective
    from graphopt.nas.search import load_checkpoint, search

    measured: dict[str, dict[str, float]] = {}

    def measure(net: L.SubNet) -> dict[str, float]:
        label = net.label()
        if label not in measured:
            measured[label] = ev.evaluate(cut(base, net), "candidate")
            log(f"search {len(measured)}/{budget}: ppl {measured[label]['val_ppl']:.3f}, latency "
                f"{measured[label]['latency']:.3f}, params {measured[label]['params'] / 1e6:.2f}M  {label}")
        return measured[label]

    objectives = [Objective("val_ppl", lambda net: measure(net)["val_ppl"]),
                  Objective("latency", lambda net: measure(net)["latency"])]
    checkpoint = CACHE / f"search-{key}-{budget}.json"
    history = load_checkpoint(checkpoint) if checkpoint.is_file() else []
    for record in history:  # the checkpoint holds the objectives; parameters are recomputed on demand
        if record["values"] is not None:
            measured[record["arch"]] = {"val_ppl": record["values"][0], "latency": record["values"][1]}
    result = search(encoding(), objectives, budget=budget, algorithm="nsga2", seed=0, pop_size=20,
                    history=history, checkpoint=checkpoint)
    if history:
        log(f"search: {len(history)} of {len(result.records)} queries replayed from {checkpoint}")
    return result, measured, len(history)


def uniform_nets() -> list[tuple[str, L.SubNet]]:
    """Every layer kept, the same heads and MLP width everywhere."""
    n = L.CONFIG.layers
    out = []
    for h in range(L.CONFIG.heads, 0, -1):
        for m in reversed(L.MLP_CHOICES):
            out.append((f"uniform h{h}/m{m}", L.SubNet(tuple(range(n)), (h,) * n, (m,) * n)))
    return out


PRUNE_CONFIGS: list[tuple[str, dict[str, Any]]] = [
    *[(f"prune heads {f:.0%}", {"heads": f}) for f in (0.25, 0.5, 0.75)],
    *[(f"prune mlp {f:.0%}", {"mlp": f}) for f in (0.25, 0.5, 0.75)],
    *[(f"prune heads+mlp {f:.0%}", {"heads": f, "mlp": f}) for f in (0.25, 0.5)],
    *[(f"prune {k} layer{'s' if k > 1 else ''}", {"layers": k}) for k in (1, 2, 3)],
]


def run(folders: dict[str, Path], corpus: L.Corpus, budget: int, steps: int, quick: bool = False) -> dict[str, Any]:
    import torch

    from graphopt._io import load_model
    from graphopt.analysis import summarize as summarize_graph
    from graphopt.bench import benchmark
    from graphopt.nas.search import pareto_mask
    from graphopt.prune import parameter_count, prune
    from graphopt.runtime import make_session

    work = Path(tempfile.mkdtemp(prefix="llama-nas-"))
    paths = {kind: export(folder, work / f"{kind}.onnx") for kind, folder in folders.items()}
    base = load_model(paths["supernet"])
    full = L.SubNet.full(L.CONFIG)
    ev = Evaluator(corpus, paths["supernet"], work)

    # the ONNX cut of a sub-network computes what the torch super-network computes for it
    torch_model = L.load_trained(folders["supernet"])
    probe = L.SubNet((0, 2, 3, 5), (1, 0, 3, 2, 0, 4), (96, 0, 384, 192, 0, 288))
    x = ev.windows["validation"][:2, :-1]
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x), probe).numpy()
    session = make_session(cut(base, probe), threads=THREADS)
    got = session.run(None, {"input_ids": x, "attention_mask": np.ones_like(x)})[0]
    cut_error = float(np.abs(got - expected).max())
    log(f"ONNX cut vs torch sub-network: max abs error {cut_error:.2e}")
    if cut_error > 1e-3:
        raise RuntimeError(f"the ONNX sub-network differs from the torch one by {cut_error}")

    started = time.perf_counter()
    result, measured, replayed = search_front(ev, base, budget, _cache_key(steps))
    search_s = time.perf_counter() - started
    front = [decode(tuple(r["genes"])) for r in result.front_records()]
    log(f"search: {len(result.records)} queries, {len(front)} on the front, {search_s:.0f} s")

    # Baselines on the validation split with the same per-candidate latency measurement
    uniform = uniform_nets()[:2] if quick else uniform_nets()
    calib = {"input_ids": corpus.windows("train", CALIB_WINDOWS, L.CONFIG.context).astype(np.int64)}
    calib["attention_mask"] = np.ones_like(calib["input_ids"])
    standard = load_model(paths["standard"])
    pruned: dict[str, Any] = {}
    for label, options in PRUNE_CONFIGS[:2] if quick else PRUNE_CONFIGS:
        model = standard.clone()
        outcome = prune(model, importance="activation", feeds=calib, **options)
        if outcome.skipped:
            log(f"{label}: skipped {outcome.skipped}")
        pruned[label] = model

    # Final measurement: test perplexity of everything, latency of everything in one alternating run
    entries: list[dict[str, Any]] = []

    def add(group: str, label: str, model: Any, net: L.SubNet | None) -> None:
        path = work / f"final-{len(entries):03d}.onnx"
        from graphopt._io import save_model

        save_model(model, path)
        entries.append({"group": group, "label": label, "path": path, "params": parameter_count(model),
                        "test_ppl": ev.perplexity(model, "test"), "val_ppl": ev.perplexity(model, "validation"),
                        "arch": net.label() if net else None,
                        "layers": len(net.layers) if net else None})

    add("full", "super-network, full", base, full)
    add("full", "standard network, full", standard, full)
    for net in sorted(front, key=lambda n: measured[n.label()]["latency"]):
        add("front", net.label(), cut(base, net), net)
    for label, net in uniform:
        add("uniform", label, cut(base, net), net)
    for label, model in pruned.items():
        add("pruned", label, model, None)
    # Latency: each model alternates with the full super-network in its own worker (adjacent runs: the
    # machine's load drifts too much for one run over all models); MACs at the same shapes, load-free.
    log(f"final latency over {len(entries)} models, each paired with the full super-network")
    shapes = {k: v.shape for k, v in ev.bench_feeds.items()}
    for entry in entries:
        report = benchmark([paths["supernet"], entry["path"]], ev.bench_feeds, threads=THREADS, warmup=3, runs=40,
                           min_seconds=0.5, max_runs=80)
        assert report.ratio is not None
        entry["latency"] = report.ratio.median
        entry["latency_p10_p90"] = [report.ratio.p10, report.ratio.p90]
        entry["median_ms"] = report.models[1].median_ms
        entry["rounds"] = report.rounds
        entry["macs"] = summarize_graph(load_model(entry["path"]), shapes=shapes).macs
        del entry["path"]
    for entry in entries:
        entry["macs_ratio"] = entry["macs"] / entries[0]["macs"]
    on_front = pareto_mask(np.array([[e["test_ppl"], e["latency"]] for e in entries]))
    for entry, flag in zip(entries, on_front):
        entry["on_test_front"] = bool(flag)
    summary = summarize(entries)
    shutil.rmtree(work, ignore_errors=True)
    return {
        "config": L.CONFIG.__dict__, "mlp_choices": L.MLP_CHOICES, "training": {
            kind: json.loads((folder / "train.json").read_text()) for kind, folder in folders.items()},
        "corpus": {"bytes": {s: len(getattr(corpus, s)) for s in ("train", "validation", "test")},
                   "files": corpus.files, "eval_windows": EVAL_WINDOWS, "context": L.CONFIG.context},
        "cut_max_abs_error": cut_error, "search": {"budget": budget, "queries": len(result.records),
                                                   "failures": sum(r["values"] is None for r in result.records),
                                                   "seconds": round(search_s, 1), "replayed_from_checkpoint": replayed,
                                                   "records": result.records,
                                                   "front": result.front_records()},
        "entries": entries, "summary": summary,
        "latency_setup": {"batch": BENCH_BATCH, "sequence": L.CONFIG.context, "threads": THREADS,
                          "rounds": [min(e["rounds"] for e in entries), max(e["rounds"] for e in entries)],
                          "onnxruntime": report.onnxruntime},
        "machine": _common.machine_info(),
    }


def summarize(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The paper's claim: among networks within ``LOSS_TOLERANCE`` of their full network's perplexity
    (chosen on validation, confirmed on test), the fastest and the smallest of each group."""
    out: dict[str, Any] = {}
    refs = {"front": entries[0], "uniform": entries[0], "pruned": entries[1]}
    for group, ref in refs.items():
        ok = [e for e in entries if e["group"] == group and e["val_ppl"] <= ref["val_ppl"] * (1 + LOSS_TOLERANCE)]
        if not ok:
            out[group] = None
            continue
        fastest = min(ok, key=lambda e: e["latency"] / ref["latency"])
        smallest = min(ok, key=lambda e: e["params"])
        out[group] = {name: {"label": e["label"], "speedup": ref["latency"] / e["latency"],
                             "macs_fewer": ref["macs"] / e["macs"],
                             "smaller": ref["params"] / e["params"],
                             "val_ppl_increase": e["val_ppl"] / ref["val_ppl"] - 1,
                             "test_ppl_increase": e["test_ppl"] / ref["test_ppl"] - 1}
                      for name, e in (("fastest", fastest), ("smallest", smallest))}
    return out


def write_markdown(path: Path, data: dict[str, Any]) -> None:
    cfg, train = data["config"], data["training"]
    lines = [
        "# LLaMA-NAS at small scale (`bench/llama_nas.py`)", "",
        f"Byte-level Llama-style decoder: {cfg['layers']} layers, hidden {cfg['hidden']}, {cfg['heads']} heads, "
        f"SwiGLU {cfg['mlp']}, context {cfg['context']}; trained on {data['corpus']['bytes']['train'] / 1e6:.1f} MB "
        f"of Python standard-library sources ({data['corpus']['files']['train']} files), "
        f"{train['supernet']['steps']} steps of batch {train['supernet']['batch']} each: the super-network with "
        f"full + smallest + {L.RANDOM_PER_STEP} random sub-networks per step ({train['supernet']['seconds']:.0f} s), "
        f"the standard network on the full network only ({train['standard']['seconds']:.0f} s). "
        f"Perplexity is per byte on {data['corpus']['eval_windows']} windows of held-out files "
        f"(validation: {data['corpus']['files']['validation']} files, used by the search; test: "
        f"{data['corpus']['files']['test']} other files, reported). Latency is relative to the full super-network, "
        f"batch {data['latency_setup']['batch']} x {data['latency_setup']['sequence']} tokens, "
        f"{data['latency_setup']['threads']} threads, onnxruntime {data['latency_setup']['onnxruntime']}: each model "
        f"alternates with the full super-network in one graphopt.bench worker "
        f"({data['latency_setup']['rounds'][0]}-{data['latency_setup']['rounds'][1]} rounds; median ratio, p10-p90); "
        "`super-network, full` vs itself and `uniform h4/m384` (the same graph) show the noise. "
        "MACs at the same shapes, relative to the full network. "
        f"NSGA-II: {data['search']['queries']} queries ({data['search']['failures']} failed), "
        f"{data['search']['seconds']:.0f} s, {data['search'].get('replayed_from_checkpoint', 0)} of them replayed from "
        "the checkpoint of an earlier run; each query cut from the ONNX super-network (max abs error of a cut vs "
        f"the torch sub-network: {data['cut_max_abs_error']:.1e}).", "",
        "## The claim (LLaMA-NAS: 1.5x smaller, 1.3x faster at negligible loss)", "",
        f"Networks within {LOSS_TOLERANCE:.0%} of their full network's validation perplexity; test change shown too.",
        "", "| group | pick | network | smaller | faster (measured) | fewer MACs | val ppl change | test ppl change |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = {"front": "NSGA-II front (super-network)", "uniform": "uniform shrink (super-network)",
             "pruned": "graphopt prune (standard network)"}
    for group, picks in data["summary"].items():
        if not picks:
            lines.append(f"| {names[group]} | - | none within {LOSS_TOLERANCE:.0%} | | | | | |")
            continue
        for pick, row in picks.items():
            lines.append(f"| {names[group]} | {pick} | `{row['label']}` | {row['smaller']:.2f}x | "
                         f"{row['speedup']:.2f}x | {row['macs_fewer']:.2f}x | {row['val_ppl_increase']:+.2%} | "
                         f"{row['test_ppl_increase']:+.2%} |")
    lines += ["", "## Every measured network", "",
              "| group | network | layers | params | MACs | val ppl | test ppl | latency (p10-p90) | on test front |",
              "|---|---|---|---|---|---|---|---|---|"]
    for e in data["entries"]:
        lo, hi = e["latency_p10_p90"]
        lines.append(f"| {e['group']} | `{e['label']}` | {e['layers'] or ''} | {e['params'] / 1e6:.3f}M | "
                     f"{e['macs_ratio']:.3f} | {e['val_ppl']:.3f} | {e['test_ppl']:.3f} | "
                     f"{e['latency']:.3f} ({lo:.2f}-{hi:.2f}) | "
                     f"{'yes' if e['on_test_front'] else ''} |")
    lines += ["", "![fronts](llama_nas.png)", ""]
    _common.write_atomic(path, "\n".join(lines))


def plot(path: Path, data: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    records = [r for r in data["search"]["records"] if r["values"] is not None]
    left.scatter([r["values"][1] for r in records], [r["values"][0] for r in records], s=10, c="0.7",
                 label="NSGA-II queries")
    front = sorted((r["values"][1], r["values"][0]) for r in data["search"]["front"])
    left.plot(*zip(*front), "o-", c="C3", label="NSGA-II front")
    left.set_title("search (validation files, latency per query)")
    styles = {"full": ("*", "k"), "front": ("o", "C3"), "uniform": ("s", "C0"), "pruned": ("^", "C2")}
    for group, (marker, colour) in styles.items():
        rows = sorted((e["latency"], e["test_ppl"]) for e in data["entries"] if e["group"] == group)
        right.plot(*zip(*rows), marker=marker, c=colour, ls="none",
                   label={"full": "full networks", "front": "NSGA-II front (re-measured)", "uniform": "uniform shrink",
                          "pruned": "graphopt prune (standard net)"}[group])
    right.set_title("final: test files, each model paired with the full network")
    for ax in (left, right):
        ax.set_xlabel("latency relative to the full super-network")
        ax.set_ylabel("perplexity per byte")
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="training steps of each network")
    parser.add_argument("--budget", type=int, default=60, help="NSGA-II evaluations")
    parser.add_argument("--retrain", action="store_true", help="ignore cached weights")
    parser.add_argument("--train-only", action="store_true", help="train (or find cached) and stop")
    parser.add_argument("--only", choices=("supernet", "standard"), help="with --train-only: train one network")
    parser.add_argument("--quick", action="store_true", help="two baselines of each kind (a smoke test)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of llama_nas.json/.md/.png")
    args = parser.parse_args(argv)
    CACHE.mkdir(parents=True, exist_ok=True)
    corpus = L.load_corpus()
    kinds = (args.only,) if args.only and args.train_only else ("supernet", "standard")
    folders = {kind: trained(kind, args.steps, corpus, args.retrain) for kind in kinds}
    if args.train_only:
        return 0
    data = run(folders, corpus, args.budget, args.steps, args.quick)
    args.results.mkdir(parents=True, exist_ok=True)
    _common.write_json(args.results / "llama_nas.json", data)
    write_markdown(args.results / "llama_nas.md", data)
    plot(args.results / "llama_nas.png", data)
    log(f"wrote {args.results / 'llama_nas'}.json/.md/.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
