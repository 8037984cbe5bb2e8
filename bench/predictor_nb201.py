"""graphopt's performance predictors on real NAS-Bench labels, side by side with the usual baselines.

Data (``--data``, default ``../shared/data/nasbench``): NAS-Bench-201 CIFAR-10 validation accuracy
(``nb201_val_acc.csv``), published zero-cost proxies (``nb201_zc_proxies.csv``), HW-NAS-Bench
device latencies (``nb201_hw_cifar10.csv``) and 500 NAS-Bench-101 cells (``nb101_500_zc.json``).

Protocol. The cells are the 9,445 unique NAS-Bench-201 cells of the proxy file (isomorphic
duplicates of the full 15,625 would leak between training and test). A pool of ``--pool`` cells
is drawn once (seed 0): ``--test`` of them are the held-out cells every method is scored on,
never trained on; for each of ``--seeds`` seeds, 100 and 1000 training cells are drawn from the
rest. Methods, on the same cells in one run:

- baselines: one-hot + random forest; published proxies + one-hot + random forest; and each
  published proxy (parameters, FLOPs, jacov, ...) used directly as a score (no training);
- graphopt: ``gbm`` and ``mlp`` (pairwise ranking loss) and ``mix`` (both pooled) on one-hot +
  structural + live graph features of the space's ONNX graph (:mod:`graphopt.predict.liveness`:
  live operators and input -> output path statistics), and the same without the live features;
  ``mlp`` on structural + live features alone (the graph head, what scores any ONNX file); ``mlp``
  with MiniLM embeddings of the encoding added; ``rankgbm`` (trees boosted on a gap-weighted
  pairwise ranking loss) and ``ens`` (``gbm`` + ``mlp`` + ``rankgbm`` members pooled) on one-hot +
  structural + live; ``gbm``, ``mlp``, ``mix`` and ``ens`` with graphopt's own zero-cost features
  added (``zc``: synflow, jacov, nwot of each cell's ONNX graph on natural images,
  :mod:`graphopt.predict.zero_cost`; computed in ``--jobs`` processes into the cache, ~1-2 s per cell),
  and those three metrics used directly as scores.

Cross-space: the graph-level head (structural + live features, and structural alone) trained on
the 500 NAS-Bench-101 cells scores the NAS-Bench-201 test cells zero-shot, and one trained on 1000
NAS-Bench-201 pool cells scores the NAS-Bench-101 cells. The NAS-Bench-201 test cells whose output
ignores the input (``live_nodes == 0``, trivially the worst) are counted, and Spearman is also given
without them where there are any. Latency: trained on
1000 cells of one HW-NAS-Bench device, then few-shot (20 cells) on others. Also: training and
scoring times, scoring throughput.

Run: ``.venv/bin/python bench/predictor_nb201.py [--quick]``; features of built graphs and text
embeddings are cached under ``--cache`` (building and featurizing the 1,800 + 500 graphs is most of
a first run's time). ``--only SECTION`` recomputes one of cross_space / latency / throughput and
updates it in the existing results; ``--only nb201_cifar10 --methods rankgbm,ens`` recomputes the
methods of the first table whose names contain one of those strings (same cells, seeds and draws).
Writes ``bench/results/predictor_nb201.{json,md}``.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import csv
import json
import os
import sys
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

from graphopt.predict import (
    FEATURE_NAMES,
    LIVE_FEATURE_NAMES,
    FeatureSpec,
    Featurizer,
    create_model,
    kendall_tau,
    spearman,
    train_predictor,
)

PROXIES = ("jacov", "nwot", "epe_nas", "params", "synflow", "flops", "l2_norm", "snip", "grad_norm",
           "fisher", "grasp", "plain", "zen")
GRAPH_GROUPS = ("structural", "text")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=_common.ROOT.parent / "shared" / "data" / "nasbench")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/graphopt-predictor-cache"))
    parser.add_argument("--out", type=Path, default=_common.ROOT / "bench" / "results")
    parser.add_argument("--pool", type=int, default=1800)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--jobs", type=int, default=2, help="processes building graph features")
    parser.add_argument("--quick", action="store_true", help="pool 600, test 300, 2 seeds, sizes 100,250")
    parser.add_argument("--only", choices=("nb201_cifar10", "cross_space", "latency", "throughput"),
                        help="rerun one section and update it in the existing results")
    parser.add_argument("--methods", help="with --only nb201_cifar10: recompute only the methods whose names "
                        "contain one of these comma-separated strings")
    args = parser.parse_args(argv)
    if args.quick:
        args.pool, args.test, args.seeds, args.sizes = 600, 300, 2, "100,250"
    sizes = [int(s) for s in args.sizes.split(",")]
    if not (args.data / "nb201_val_acc.csv").is_file():
        print(f"no NAS-Bench data in {args.data}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    data = load_nb201(args.data)
    cells = sorted(data["proxies"])
    rng = np.random.default_rng(0)
    pool = [cells[i] for i in rng.permutation(len(cells))[: args.pool]]
    test, rest = pool[: args.test], pool[args.test:]
    log(f"{len(cells)} unique cells; pool {len(pool)}, test {len(test)}")
    warm_cache(pool, "nb201", args.cache, args.jobs)
    feats = Featurizer(FeatureSpec(("onehot", "structural", "text"), "nb201"), cache_dir=args.cache)
    t0 = time.perf_counter()
    matrix = feats.archs(pool)
    log(f"features of {len(pool)} cells in {time.perf_counter() - t0:.1f} s (cached graphs, text embeddings)")
    index = {cell: k for k, cell in enumerate(pool)}
    base, live = len(FEATURE_NAMES), len(LIVE_FEATURE_NAMES)
    blocks = {"onehot": matrix[:, :30], "structural": matrix[:, 30:30 + base],
              "live": matrix[:, 30 + base:30 + base + live], "text": matrix[:, 30 + base + live:]}
    assert blocks["text"].shape[1] == 384
    proxies = np.array([[data["proxies"][c][p] for p in PROXIES] for c in pool])
    acc = np.array([data["acc"][c] for c in pool])
    rows_test = np.array([index[c] for c in test])
    wanted = [m.strip() for m in (args.methods or "").split(",") if m.strip()] if args.only == "nb201_cifar10" else []
    zc_info = None
    if args.only in (None, "nb201_cifar10") and any("zc" in m for m in METHODS if not wanted
                                                    or any(w in m for w in wanted)):
        blocks["zc"], zc_info = zero_cost_block(pool, rest, sizes, args)

    results: dict[str, Any] = {"protocol": {"cells": len(cells), "pool": len(pool), "test": len(test),
                                            "seeds": args.seeds, "sizes": sizes}}
    results["zero_training"] = {
        p: {"kendall_tau": kendall_tau(proxies[rows_test, k], acc[rows_test]),
            "spearman": spearman(proxies[rows_test, k], acc[rows_test])} for k, p in enumerate(PROXIES)}
    sections = {
        "cross_space": lambda: cross_space(args, data, pool, test, rest, blocks, acc, index),
        "latency": lambda: latency(data, pool, test, rest, blocks, index),
        "throughput": lambda: throughput(pool, test, rest, acc, index, args.cache),
    }
    if args.only:
        results = json.loads((args.out / "predictor_nb201.json").read_text())
        if args.only == "nb201_cifar10":
            table = predictor_table(args, sizes, blocks, proxies, acc, index, rest, rows_test, wanted)
            results["nb201_cifar10"].update(table)
            if zc_info is not None:
                results["zero_cost_features"] = zc_info
                zc_info["zero_training"] = zero_cost_scores(blocks["zc"], acc, rows_test)
            label = f"nb201_cifar10 ({', '.join(table)})"
        else:
            results[args.only] = sections[args.only]()
            label = args.only
        results.setdefault("reruns", {})[label] = round(time.perf_counter() - started, 1)
        _write(args.out, results)
        return 0
    for name, section in sections.items():
        results[name] = section()
    results["nb201_cifar10"] = predictor_table(args, sizes, blocks, proxies, acc, index, rest, rows_test, [])
    if zc_info is not None:
        results["zero_cost_features"] = zc_info
        zc_info["zero_training"] = zero_cost_scores(blocks["zc"], acc, rows_test)
    results["wall_s"] = round(time.perf_counter() - started, 1)
    results["machine"] = _common.machine_info()
    _write(args.out, results)
    return 0


METHODS = {
    "one-hot + forest": ("forest", ["onehot"], False),
    "proxies + one-hot + forest": ("forest", ["onehot"], True),
    "graphopt gbm: one-hot + structural, no live": ("gbm", ["onehot", "structural"], False),
    "graphopt mlp: one-hot + structural, no live": ("mlp", ["onehot", "structural"], False),
    "graphopt gbm: one-hot + structural + live": ("gbm", ["onehot", "structural", "live"], False),
    "graphopt mlp: one-hot + structural + live": ("mlp", ["onehot", "structural", "live"], False),
    "graphopt mlp: structural + live (graph head)": ("mlp", ["structural", "live"], False),
    "graphopt mlp: one-hot + structural + live + text": ("mlp", ["onehot", "structural", "live", "text"],
                                                         False),
    "graphopt rankgbm: one-hot + structural + live": ("rankgbm", ["onehot", "structural", "live"], False),
    "graphopt ens: one-hot + structural + live": ("ens", ["onehot", "structural", "live"], False),
    "graphopt gbm: one-hot + structural + live + zc": ("gbm", ["onehot", "structural", "live", "zc"], False),
    "graphopt mlp: one-hot + structural + live + zc": ("mlp", ["onehot", "structural", "live", "zc"], False),
    "graphopt ens: one-hot + structural + live + zc": ("ens", ["onehot", "structural", "live", "zc"], False),
}

MIXES = {"graphopt mix: one-hot + structural, no live": "one-hot + structural, no live",
         "graphopt mix: one-hot + structural + live (CLI default)": "one-hot + structural + live",
         "graphopt mix: one-hot + structural + live + zc": "one-hot + structural + live + zc"}


def predictor_table(args: argparse.Namespace, sizes: list[int], blocks: dict[str, np.ndarray], proxies: np.ndarray,
                    acc: np.ndarray, index: dict[str, int], rest: list[str], rows_test: np.ndarray,
                    wanted: list[str]) -> dict[str, dict[str, Any]]:
    """Kendall tau / Spearman on the test cells of every method (those naming one of ``wanted``, if any)."""
    methods = {m: v for m, v in METHODS.items() if not wanted or any(w in m for w in wanted)}
    mixes = {m: f for m, f in MIXES.items() if all(f"graphopt {k}: {f}" in methods for k in ("gbm", "mlp"))}
    table: dict[str, dict[str, Any]] = {m: {} for m in [*methods, *mixes]}
    for n in sizes:
        per: dict[str, list[tuple[float, ...]]] = {m: [] for m in table}
        for seed in range(args.seeds):
            draw = np.random.default_rng(100 + seed).permutation(len(rest))[:n]
            train_rows = np.array([index[rest[i]] for i in draw])
            members: dict[str, np.ndarray] = {}
            for name, (kind, groups, with_proxies) in methods.items():
                X = np.concatenate([blocks[g] for g in groups] + ([proxies] if with_proxies else []), axis=1)
                t = time.perf_counter()
                model = create_model(kind, seed=seed).fit(X[train_rows], acc[train_rows])
                fit_s = time.perf_counter() - t
                t = time.perf_counter()
                table_rows = model.member_predictions(X[rows_test])
                score_per_min = len(rows_test) / (time.perf_counter() - t) * 60
                members[name] = table_rows
                pred = table_rows.mean(axis=0)
                per[name].append((kendall_tau(pred, acc[rows_test]), spearman(pred, acc[rows_test]), fit_s,
                                  score_per_min))
            for mix_name, features in mixes.items():
                mix = np.concatenate([members[f"graphopt {k}: {features}"] for k in ("gbm", "mlp")]).mean(axis=0)
                fit_mix = sum(per[f"graphopt {k}: {features}"][-1][2] for k in ("gbm", "mlp"))
                per[mix_name].append((kendall_tau(mix, acc[rows_test]), spearman(mix, acc[rows_test]), fit_mix))
            log(f"n={n} seed={seed}: " + "; ".join(f"{m} {v[-1][0]:.3f}" for m, v in per.items()))
        for name, values in per.items():
            arr = np.array(values)
            table[name][str(n)] = {"kendall_tau": float(arr[:, 0].mean()), "kendall_tau_std": float(arr[:, 0].std()),
                                   "spearman": float(arr[:, 1].mean()), "fit_s": float(arr[:, 2].mean())}
            if arr.shape[1] > 3:  # scoring from features, the model alone (graph building not included)
                table[name][str(n)]["score_per_min"] = float(arr[:, 3].mean())
    return table


def _write(out: Path, results: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _common.write_json(out / "predictor_nb201.json", results)
    _common.write_atomic(out / "predictor_nb201.md", markdown(results))
    print(markdown(results))


def load_nb201(folder: Path) -> dict[str, Any]:
    def key(text: str) -> str:
        return repr(tuple(ast.literal_eval(text)))

    with (folder / "nb201_val_acc.csv").open() as f:
        acc = {key(r["arch"]): float(r["cifar10_valid"]) for r in csv.DictReader(f)}
    with (folder / "nb201_zc_proxies.csv").open() as f:
        proxies = {key(r["net"]): {p: float(r[p]) for p in PROXIES} for r in csv.DictReader(f)}
    with (folder / "nb201_hw_cifar10.csv").open() as f:
        hw = {key(r["net"]): {k: float(v) for k, v in r.items() if k != "net"} for r in csv.DictReader(f)}
    nb101 = json.loads((folder / "nb101_500_zc.json").read_text())["nasbench101"]["cifar10"]
    return {"acc": acc, "proxies": proxies, "hw": hw, "nb101": nb101}


def _warm(job: tuple[str, list[str], str]) -> int:
    space, archs, cache = job
    Featurizer(FeatureSpec(("structural", "text"), space), cache_dir=cache).archs(archs)
    return len(archs)


def _warm_zc(job: tuple[list[str], str]) -> list[float]:
    import torch

    torch.set_num_threads(1)
    archs, cache = job
    feats = Featurizer(FeatureSpec(("zc",), "nb201"), cache_dir=cache)
    feats.archs(archs)
    return list(feats.zero_cost_seconds.values())


def zero_cost_block(pool: list[str], rest: list[str], sizes: list[int],
                    args: argparse.Namespace) -> tuple[np.ndarray, dict[str, Any]]:
    """graphopt's zc features (synflow, jacov, nwot on natural images) of every pool cell, computed in
    ``--jobs`` processes into the disk cache (test cells and the smallest training draws first)."""
    from graphopt.predict.zero_cost import ZC_METRICS, ZeroCostSpec

    first = [rest[i] for seed in range(args.seeds)
             for i in np.random.default_rng(100 + seed).permutation(len(rest))[:min(sizes)]]
    order = list(dict.fromkeys([*pool[: args.test], *first, *pool]))
    t = time.perf_counter()
    chunks = [(order[i:i + 10], str(args.cache)) for i in range(0, len(order), 10)]
    seconds: list[float] = []
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs) as executor:
        for part in executor.map(_warm_zc, chunks):
            seconds += part
            if len(seconds) % 100 == 0:
                log(f"zc features {len(seconds)}/{len(order)} cells")
    wall = time.perf_counter() - t
    log(f"zc features of {len(order)} cells in {wall:.1f} s")
    block = Featurizer(FeatureSpec(("zc",), "nb201"), cache_dir=args.cache).archs(pool)
    spec = ZeroCostSpec()
    info = {"metrics": list(ZC_METRICS), "batch": spec.batch, "seed": spec.seed, "inputs": spec.inputs,
            "cells": len(order), "median_s_per_cell": float(np.median(seconds)),
            "mean_s_per_cell": float(np.mean(seconds)), "wall_s_this_run": round(wall, 1), "jobs": args.jobs}
    return block, info


def zero_cost_scores(block: np.ndarray, acc: np.ndarray, rows_test: np.ndarray) -> dict[str, dict[str, float]]:
    """Each of graphopt's zc metrics used directly as a score on the test cells (no training)."""
    from graphopt.predict.zero_cost import ZC_METRICS

    return {m: {"kendall_tau": kendall_tau(block[rows_test, k], acc[rows_test]),
                "spearman": spearman(block[rows_test, k], acc[rows_test])} for k, m in enumerate(ZC_METRICS)}


def warm_cache(archs: list[str], space: str, cache: Path, jobs: int) -> None:
    """Build every graph once (in ``jobs`` processes) so that later featurizers read the disk cache."""
    t = time.perf_counter()
    chunks = [(space, archs[i:i + 50], str(cache)) for i in range(0, len(archs), 50)]
    done = 0
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as executor:
        for count in executor.map(_warm, chunks):
            done += count
            if done % 500 == 0 or done == len(archs):
                log(f"{space}: graph features {done}/{len(archs)}")
    log(f"{space}: {len(archs)} graphs built and featurized (or cached) in {time.perf_counter() - t:.1f} s")


def cross_space(args: argparse.Namespace, data: dict[str, Any], pool: list[str], test: list[str],
                rest: list[str], blocks: dict[str, np.ndarray], acc: np.ndarray,
                index: dict[str, int]) -> dict[str, Any]:
    nb101 = data["nb101"]
    archs101 = list(nb101)
    y101 = np.array([nb101[a]["val_accuracy"] for a in archs101])
    warm_cache(archs101, "nb101", args.cache, args.jobs)
    X101 = Featurizer(FeatureSpec(("structural",), "nb101"), cache_dir=args.cache).archs(archs101)
    rows_test = np.array([index[c] for c in test])
    rows_train = np.array([index[c] for c in rest[:1000]])
    S201 = np.concatenate([blocks["structural"], blocks["live"]], axis=1)
    live_test = blocks["live"][rows_test, LIVE_FEATURE_NAMES.index("live_nodes")] > 0
    base = len(FEATURE_NAMES)
    out: dict[str, Any] = {}

    def record(name: str, train: int, pred: np.ndarray, y: np.ndarray, live: np.ndarray | None = None) -> None:
        out[name] = {"train": train, "test": len(y), "kendall_tau": kendall_tau(pred, y), "spearman": spearman(pred, y)}
        if live is not None:
            out[name]["test_dead"] = int((~live).sum())  # cells whose output ignores the input
            if not live.all():
                out[name]["spearman_live"] = spearman(pred[live], y[live])

    variants = {"structural + live": (X101, S201), "structural only (before)": (X101[:, :base], S201[:, :base]),
                "structural + live, per-space rank features": (_ranks(X101), None)}
    for label, (train101, features201) in variants.items():
        for kind in ("mlp", "mix", "gbm", "ridge"):
            if "rank" in label and kind == "mix":
                continue
            if features201 is None:  # ranks among the cells of each set: unlabelled target features are used
                test201, train201, test101 = _ranks(S201[rows_test]), _ranks(S201[rows_train]), train101
            else:
                test201, train201, test101 = features201[rows_test], features201[rows_train], train101
            pred = create_model(kind, seed=0).fit(train101, y101).predict(test201)[0]
            record(f"nb101->nb201 {kind}, {label}", len(y101), pred, acc[rows_test], live_test)
            pred = create_model(kind, seed=0).fit(train201, acc[rows_train]).predict(test101)[0]
            record(f"nb201->nb101 {kind}, {label}", len(rows_train), pred, y101)
    for proxy in ("params", "flops"):
        out[f"nb101 {proxy} (no training)"] = {"test": len(y101),
                                               "kendall_tau": kendall_tau([nb101[a][proxy] for a in archs101], y101),
                                               "spearman": spearman([nb101[a][proxy] for a in archs101], y101)}
    log("cross-space: " + ", ".join(f"{k} {v['spearman']:.3f}" for k, v in out.items()))
    return out


def _ranks(X: np.ndarray) -> np.ndarray:
    """Each column replaced by its values' ranks in (0, 1] (ties share the mean rank)."""
    from scipy.stats import rankdata

    return np.column_stack([rankdata(X[:, j]) / len(X) for j in range(X.shape[1])])


def latency(data: dict[str, Any], pool: list[str], test: list[str], rest: list[str],
            blocks: dict[str, np.ndarray], index: dict[str, int]) -> dict[str, Any]:
    X = np.concatenate([blocks["onehot"], blocks["structural"], blocks["live"]], axis=1)
    rows_test = np.array([index[c] for c in test])
    source = "edgegpu_latency"
    out: dict[str, Any] = {}
    ys = {dev: np.array([data["hw"][c][dev] for c in pool]) for dev in
          (source, "raspi4_latency", "pixel3_latency", "edgetpu_latency", "eyeriss_latency", "fpga_latency")}
    rows_src = np.array([index[c] for c in rest[:1000]])
    base = create_model("gbm", seed=0).fit(X[rows_src], ys[source][rows_src])
    src_pred = base.predict(X)[0]
    out[source] = {"train": 1000, "kendall_tau": kendall_tau(src_pred[rows_test], ys[source][rows_test]),
                   "spearman": spearman(src_pred[rows_test], ys[source][rows_test])}
    for dev, y in ys.items():
        if dev == source:
            continue
        taus: dict[str, list[float]] = {"source model, zero-shot": [], "20 samples, gbm from scratch": [],
                                        "20 samples, gbm + source score": [], "20 samples, ridge on source score": []}
        for seed in range(5):
            few = np.array([index[rest[i]] for i in np.random.default_rng(200 + seed).permutation(
                np.arange(len(rest)))[:20]])
            taus["source model, zero-shot"].append(kendall_tau(src_pred[rows_test], y[rows_test]))
            scratch = create_model("gbm", seed=seed).fit(X[few], y[few]).predict(X[rows_test])[0]
            taus["20 samples, gbm from scratch"].append(kendall_tau(scratch, y[rows_test]))
            Xs = np.concatenate([X, src_pred[:, None]], axis=1)
            both = create_model("gbm", seed=seed).fit(Xs[few], y[few]).predict(Xs[rows_test])[0]
            taus["20 samples, gbm + source score"].append(kendall_tau(both, y[rows_test]))
            Xr = np.concatenate([src_pred[:, None], X], axis=1)
            lin = create_model("ridge", seed=seed).fit(Xr[few][:, :1], y[few]).predict(Xr[rows_test][:, :1])[0]
            taus["20 samples, ridge on source score"].append(kendall_tau(lin, y[rows_test]))
        out[dev] = {k: float(np.mean(v)) for k, v in taus.items()}
    log("latency: " + json.dumps({k: {m: round(t, 3) for m, t in v.items()} for k, v in out.items()}))
    return out


def throughput(pool: list[str], test: list[str], rest: list[str], acc: np.ndarray, index: dict[str, int],
               cache: Path) -> dict[str, Any]:
    """Train the CLI's default predictor on 100 cells and time scoring without any cache."""
    import tempfile

    from graphopt.nas.spaces import get_space
    from graphopt.predict import save_predictor

    train = rest[:100]
    t = time.perf_counter()
    predictor = train_predictor(train, acc[[index[c] for c in train]], spec=FeatureSpec(("onehot", "structural"),
                                "nb201"), model="mix", cache_dir=cache)
    train_s = time.perf_counter() - t
    out: dict[str, Any] = {"train_100_mix_s (both heads, cached features)": round(train_s, 2)}
    predictor.cache_dir = None
    predictor._featurizers.clear()
    cold = test[:100]
    t = time.perf_counter()
    predictor.score_archs(cold)
    out["archs_per_min (onehot+structural, graphs built)"] = round(len(cold) / (time.perf_counter() - t) * 60)
    onehot_only = train_predictor(train, acc[[index[c] for c in train]], spec=FeatureSpec(("onehot",), "nb201"),
                                  model="mix")
    t = time.perf_counter()
    onehot_only.score_archs(test)
    out["archs_per_min (onehot only)"] = round(len(test) / (time.perf_counter() - t) * 60)
    ens = train_predictor(train, acc[[index[c] for c in train]], spec=FeatureSpec(("onehot", "structural"), "nb201"),
                          model="ens", cache_dir=cache)
    t = time.perf_counter()
    ens.score_archs(test)
    out["archs_per_min (ens, onehot+structural, cached graph features)"] = round(
        len(test) / (time.perf_counter() - t) * 60)
    out["train_100_ens_s (both heads, cached features)"] = ens.info["fit_s"]
    space = get_space("nb201")
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for k, cell in enumerate(test[:50]):
            import onnx_ir as ir

            path = Path(tmp) / f"{k}.onnx"
            ir.save(space.build(space.parse(cell)), path)
            paths.append(path)
        save_predictor(predictor, Path(tmp) / "p.zip")
        t = time.perf_counter()
        predictor.score_models(paths)
        out["onnx_files_per_min (graph head, load + features)"] = round(len(paths) / (time.perf_counter() - t) * 60)
    log(f"throughput: {out}")
    return out


def _fmt(x: float) -> str:
    return "nan" if x != x else f"{x:.3f}"


def markdown(r: dict[str, Any]) -> str:
    p = r["protocol"]
    sizes = [str(s) for s in p["sizes"]]
    lines = ["# Predictors on NAS-Bench-201 CIFAR-10 (`bench/predictor_nb201.py`)", "",
             f"{p['cells']} unique cells; {p['test']} held-out test cells from a pool of {p['pool']}; training "
             f"cells drawn from the rest of the pool, {p['seeds']} seeds (mean, ± std of Kendall tau over seeds).", "",
             "| method | " + " | ".join(f"tau n={n} | Spearman n={n} | fit s n={n}" for n in sizes) + " |",
             "|---|" + "---|---|---|" * len(sizes)]
    for name, by in r["nb201_cifar10"].items():
        cells = []
        for n in sizes:
            v = by[n]
            tau = f"{_fmt(v['kendall_tau'])} ± {v['kendall_tau_std']:.3f}"
            cells += [tau, _fmt(v["spearman"]), f"{v['fit_s']:.1f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    speed = {name: by for name, by in r["nb201_cifar10"].items() if "score_per_min" in by[sizes[0]]}
    if speed:
        lines += ["", "Scoring speed of the fitted models from feature vectors (cells per minute, 500 test cells; "
                  "building the graph and its features is extra): "
                  + "; ".join(f"{name}: {by[sizes[0]]['score_per_min']:,.0f}" for name, by in speed.items()) + "."]
    lines += ["", "Published proxies used directly as scores (no training), on the same test cells:", "",
              "| proxy | Kendall tau | Spearman |", "|---|---|---|"]
    for name, v in sorted(r["zero_training"].items(), key=lambda kv: -abs(kv[1]["kendall_tau"])):
        lines.append(f"| {name} | {_fmt(v['kendall_tau'])} | {_fmt(v['spearman'])} |")
    zc = r.get("zero_cost_features")
    if zc:
        lines += ["", f"graphopt's own zero-cost metrics ({', '.join(zc['metrics'])}; `zc` rows above; opt-in "
                  f"`--features ...,zc`) on one batch of {zc['batch']} natural-image crops "
                  "(`graphopt.data.natural_images`, CIFAR-10-normalised), used directly as scores on the same test "
                  f"cells; cost {zc['median_s_per_cell']:.2f} s per cell (median; mean {zc['mean_s_per_cell']:.2f} s, "
                  "all three metrics, one thread):", "",
                  "| graphopt metric | Kendall tau | Spearman |", "|---|---|---|"]
        lines += [f"| {m} | {_fmt(v['kendall_tau'])} | {_fmt(v['spearman'])} |"
                  for m, v in zc["zero_training"].items()]
    dead = next((v["test_dead"] for v in r["cross_space"].values() if "test_dead" in v), None)
    lines += ["", "Cross-space, zero-shot (graph-level head; 'per-space rank features': each feature replaced by "
              "its rank among the cells of its own set, which uses the unlabelled target cells' features). "
              f"NAS-Bench-201 test cells whose output ignores the input (no live nodes): {dead}.", "",
              "| direction / model, features | train | test | Kendall tau | Spearman | Spearman without them |",
              "|---|---|---|---|---|---|"]
    for name, v in r["cross_space"].items():
        lines.append(f"| {name} | {v.get('train', '-')} | {v['test']} | {_fmt(v['kendall_tau'])} | "
                     f"{_fmt(v['spearman'])} | {_fmt(v['spearman_live']) if 'spearman_live' in v else ''} |")
    lines += ["", "Latency (HW-NAS-Bench): gbm on one-hot + structural + live, trained on 1000 cells of edgegpu, "
              "then 20 cells of each other device (Kendall tau on the test cells, 5 draws):", ""]
    lat = r["latency"]
    heads = [k for k in next(v for k, v in lat.items() if k != "edgegpu_latency")]
    lines += ["| device | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    src = lat["edgegpu_latency"]
    lines.append(f"| edgegpu_latency (source, 1000 cells) | {_fmt(src['kendall_tau'])} |" + " |" * (len(heads) - 1))
    for dev, v in lat.items():
        if dev != "edgegpu_latency":
            lines.append(f"| {dev} | " + " | ".join(_fmt(v[h]) for h in heads) + " |")
    lines += ["", "Throughput and training time (2 shared CPU cores):", ""]
    lines += [f"- {k}: {v}" for k, v in r["throughput"].items()]
    lines += ["", f"Whole run: {r['wall_s']} s (graph features and embeddings read from the cache where present)."]
    for section, seconds in r.get("reruns", {}).items():
        if section.startswith("nb201_cifar10"):
            lines.append(f"Rows {section[len('nb201_cifar10 '):]} of the first table recomputed afterwards with "
                         f"`--only nb201_cifar10 --methods ...` (same pool, test cells, seeds and training draws; "
                         f"{seconds} s).")
        else:
            lines.append(f"Section {section} recomputed afterwards with `--only {section}` ({seconds} s).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
