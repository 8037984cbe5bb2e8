"""Training-free metrics of graphopt on NAS-Bench-201 cells built as ONNX graphs, next to the published proxies.

Data (``--data``, default ``../shared/data/nasbench``): CIFAR-10 validation accuracy of every cell
(``nb201_val_acc.csv``) and the zero-cost proxies NASLib published for 9,445 unique cells
(``nb201_zc_proxies.csv``). ``--cells`` of those cells are drawn once (``--seed``); each is built by
``get_space("nb201").build(arch, seed=0)`` and scored by ``graphopt.nas.metrics.score_model`` on one
batch shared by all cells. CIFAR-10 itself is not available offline: the batch is a documented
substitute, ``--inputs normal`` (N(0, 1) images, the per-channel statistics of normalised CIFAR-10;
default) or ``digits`` (scikit-learn's 8x8 digits upsampled to 32x32, copied to 3 channels and
standardised) or ``photos`` (32 x 32 crops of scikit-learn's two sample photographs at random scales,
normalised with CIFAR-10's statistics: natural-image statistics), with labels drawn uniformly (normal,
photos) or the digit classes (digits).

Reported per metric: Spearman's rho of our score with CIFAR-10 validation accuracy, of the published
proxy with the same accuracy on the same cells, of ours with the published proxy, the published
reference rho of the issue, and the median seconds each metric adds per cell, one thread per worker
process, metrics run in the order given: jacov, nwot, snip and grad_norm share one forward pass (paid
by the first of them) and snip and grad_norm one backward pass (paid by the first); the total is the sum.

Run: ``.venv/bin/python bench/zero_cost_nb201.py [--cells 1000] [--metrics a,b] [--workers 2]``.
Writes ``bench/results/zero_cost_nb201.{json,md}``.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import csv
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _common
import numpy as np

from graphopt.data import natural_images as _photo_crops

#: the issue's published Spearman rho with CIFAR-10 accuracy (NASLib, all NAS-Bench-201 cells)
REFERENCE = {"synflow": 0.73, "jacov": 0.82, "nwot": 0.79, "snip": 0.55, "grad_norm": 0.55}
DEFAULT_METRICS = "synflow,jacov,nwot,snip,grad_norm,params,flops"

_STATE: dict[str, Any] = {}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    ok = np.isfinite(a) & np.isfinite(b)
    return float(spearmanr(a[ok], b[ok]).statistic)


def _batch(kind: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return rng.standard_normal((n, 3, 32, 32), dtype=np.float32), rng.integers(0, 10, size=n)
    if kind == "photos":
        return _photo_crops(n, rng), rng.integers(0, 10, size=n)
    from sklearn.datasets import load_digits

    digits = load_digits()
    pick = rng.choice(len(digits.target), size=n, replace=False)
    img = digits.images[pick].astype(np.float32)  # n x 8 x 8, values 0..16
    img = np.kron(img, np.ones((4, 4), dtype=np.float32))  # 32 x 32, nearest-neighbour upsampling
    img = (img - img.mean()) / img.std()
    return np.repeat(img[:, None], 3, axis=1).copy(), digits.target[pick].astype(np.int64)


def _init(metrics: list[str], images: np.ndarray, labels: np.ndarray, seed: int) -> None:
    import torch

    torch.set_num_threads(1)
    _STATE.update(metrics=metrics, images=images, labels=labels, seed=seed)


def _score(arch: str) -> tuple[str, dict[str, float], dict[str, float]]:
    from graphopt.nas.metrics import score_model_all
    from graphopt.nas.spaces import get_space

    space = get_space("nb201")
    model = space.build(space.parse(arch), seed=_STATE["seed"])
    times: dict[str, float] = {}
    scores = score_model_all(model, _STATE["metrics"], data={"input": _STATE["images"]}, labels=_STATE["labels"],
                             seed=_STATE["seed"], timings=times)
    return arch, scores, times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(_common.ROOT.parent / "shared" / "data" / "nasbench"))
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--metrics", default=DEFAULT_METRICS)
    parser.add_argument("--inputs", choices=("normal", "digits", "photos"), default="normal")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--save-every", type=int, default=100, help="write partial results every N cells")
    parser.add_argument("--out", default=str(_common.ROOT / "bench" / "results" / "zero_cost_nb201"))
    args = parser.parse_args(argv)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    data = Path(args.data)
    with open(data / "nb201_val_acc.csv", newline="") as f:
        accuracy = {tuple(ast.literal_eval(r["arch"])): float(r["cifar10_valid"]) for r in csv.DictReader(f)}
    with open(data / "nb201_zc_proxies.csv", newline="") as f:
        proxies = {tuple(ast.literal_eval(r["net"])): r for r in csv.DictReader(f)}
    pool = sorted(proxies)
    rng = np.random.default_rng(args.seed)
    cells = [pool[i] for i in rng.choice(len(pool), size=min(args.cells, len(pool)), replace=False)]
    images, labels = _batch(args.inputs, args.batch, args.seed)
    _common.log(f"{len(cells)} cells x {len(metrics)} metrics, {args.workers} workers, inputs {args.inputs}")
    results: dict[str, tuple[dict[str, float], dict[str, float]]] = {}
    out = Path(args.out)
    with concurrent.futures.ProcessPoolExecutor(args.workers, initializer=_init,
                                                initargs=(metrics, images, labels, args.seed)) as ex:
        for k, (arch, scores, times) in enumerate(ex.map(_score, [repr(c) for c in cells], chunksize=4)):
            results[arch] = (scores, times)
            if (k + 1) % 50 == 0:
                _common.log(f"{k + 1}/{len(cells)} cells")
            if (k + 1) % args.save_every == 0 and k + 1 < len(cells):
                _write(out, _payload(args, metrics, cells[:k + 1], results, accuracy, proxies, len(cells)))
    payload = _payload(args, metrics, cells, results, accuracy, proxies, len(cells))
    _write(out, payload)
    print(_markdown(payload))
    return 0


def _payload(args: argparse.Namespace, metrics: list[str], cells: list[tuple[int, ...]],
             results: dict[str, tuple[dict[str, float], dict[str, float]]], accuracy: dict[tuple[int, ...], float],
             proxies: dict[tuple[int, ...], dict[str, str]], planned: int) -> dict[str, Any]:
    keys = [repr(c) for c in cells]
    acc = np.array([accuracy[c] for c in cells])
    rows = []
    for name in metrics:
        ours = np.array([results[k][0][name] for k in keys], dtype=np.float64)
        column = {"jacob_cov": "jacov", "naswot": "nwot"}.get(name, name)
        published = np.array([float(proxies[c][column]) for c in cells]) if column in proxies[cells[0]] else None
        rows.append({
            "metric": name,
            "rho_ours_acc": _spearman(ours, acc),
            "rho_published_acc": None if published is None else _spearman(published, acc),
            "rho_ours_published": None if published is None else _spearman(ours, published),
            "rho_reference": REFERENCE.get(column),
            "seconds_per_cell": float(np.median([results[k][1][name] for k in keys])),
            "nonfinite": int(np.sum(~np.isfinite(ours))),
        })
    return {"cells": len(cells), "planned_cells": planned, "complete": len(cells) == planned,
            "inputs": args.inputs, "batch": args.batch, "seed": args.seed, "workers": args.workers,
            "elapsed_s": _common.elapsed(), "machine": _common.machine_info(), "metrics": rows,
            "scores": {k: results[k][0] for k in keys}}


def _write(out: Path, payload: dict[str, Any]) -> None:
    _common.write_json(out.with_suffix(".json"), payload)
    _common.write_atomic(out.with_suffix(".md"), _markdown(payload))


def _total(payload: dict[str, Any]) -> float:
    return float(sum(r["seconds_per_cell"] for r in payload["metrics"]))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _markdown(payload: dict[str, Any]) -> str:
    lines = [
        "# Training-free metrics on NAS-Bench-201 (`bench/zero_cost_nb201.py`)",
        "",
        f"{payload['cells']} cells drawn from the published proxy file (seed {payload['seed']}), CIFAR-10 "
        f"validation accuracy; one batch of {payload['batch']} `{payload['inputs']}` inputs for every cell "
        "(CIFAR-10 is not available offline). rho is Spearman's rank correlation; time is the median seconds "
        f"each metric adds per cell, one thread in each of {payload['workers']} worker processes, in the order "
        "listed (jacov, nwot, snip and grad_norm share one forward pass, snip and grad_norm one backward pass; "
        f"the first metric to need one pays for it). Sum of the medians: {_total(payload):.2f} s per cell.",
        "",
        "| metric | rho(ours, acc) | rho(published, acc), same cells | rho(ours, published) | reference rho "
        "| |ours - reference| | s / cell |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in payload["metrics"]:
        gap = None if r["rho_reference"] is None else abs(r["rho_ours_acc"] - r["rho_reference"])
        lines.append(f"| {r['metric']} | {_fmt(r['rho_ours_acc'])} | {_fmt(r['rho_published_acc'])} | "
                     f"{_fmt(r['rho_ours_published'])} | {_fmt(r['rho_reference'])} | {_fmt(gap)} | "
                     f"{r['seconds_per_cell']:.3f} |")
    if not payload.get("complete", True):
        lines += ["", f"**Partial**: {payload['cells']} of {payload['planned_cells']} planned cells (run still going "
                  "or stopped)."]
    lines += ["", f"Total run time {payload['elapsed_s']:.0f} s."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
