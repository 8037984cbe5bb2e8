"""Hypervolume versus real queries on NAS-Bench-201: random search, NSGA-II and predictor-in-the-loop NSGA-II.

True objectives are table look-ups over all 15,625 cells: CIFAR-10 validation accuracy (maximised,
``nb201_val_acc.csv``) and HW-NAS-Bench latency (minimised, ``nb201_hw_cifar10.csv``, ``--latency`` column,
default ``edgegpu_latency``). Both objectives are normalised to [0, 1] by their range over the whole table
and the hypervolume is taken with reference point (1.1, 1.1); the true front is the non-dominated set of
the whole table. Each algorithm runs separately for every budget (50/100/200/400 by default) and seed;
reported: the fraction of the true front's hypervolume reached (mean, min, max over seeds) and whether the
issue's goal (>= 98% of the true hypervolume within 200 queries) is met.

Run: ``.venv/bin/python bench/search_nb201.py [--seeds 5] [--budgets 50,100,200,400] [--data DIR]``.
Writes ``bench/results/search_nb201.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _common
import numpy as np

GOAL = {"fraction": 0.98, "queries": 200}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(_common.ROOT.parent / "shared" / "data" / "nasbench"))
    parser.add_argument("--latency", default="edgegpu_latency")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budgets", default="50,100,200,400")
    parser.add_argument("--algorithms", default="random,nsga2,linas")
    parser.add_argument("--out", default=str(_common.ROOT / "bench" / "results"))
    args = parser.parse_args(argv)

    from graphopt.nas.objectives import table_objective
    from graphopt.nas.search import encoding_for, hypervolume, pareto_mask, search
    from graphopt.nas.spaces import get_space

    data = Path(args.data)
    space = get_space("nb201")
    acc = table_objective(space, data / "nb201_val_acc.csv", "cifar10_valid", maximize=True)
    lat = table_objective(space, data / "nb201_hw_cifar10.csv", args.latency)
    archs = list(space.enumerate())
    table = np.array([[acc.loss(a), lat.loss(a)] for a in archs])
    lo, hi = table.min(axis=0), table.max(axis=0)
    ref = [1.1, 1.1]

    def norm(losses: np.ndarray) -> np.ndarray:
        return (np.asarray(losses, dtype=float).reshape(-1, 2) - lo) / (hi - lo)

    true_front = table[pareto_mask(table)]
    true_hv = hypervolume(norm(true_front), ref)
    _common.log(f"true front: {len(true_front)} cells, normalised hypervolume {true_hv:.4f}")

    budgets = [int(b) for b in args.budgets.split(",")]
    algorithms = args.algorithms.split(",")
    encoding = encoding_for(space)
    runs: list[dict[str, Any]] = []
    for algorithm in algorithms:
        for budget in budgets:
            for seed in range(args.seeds):
                start = time.perf_counter()
                result = search(encoding, [acc, lat], budget=budget, algorithm=algorithm, seed=seed)
                seconds = time.perf_counter() - start
                front = np.array([[-r["values"][0], r["values"][1]] for r in result.front_records()])
                fraction = hypervolume(norm(front), ref) / true_hv
                runs.append({"algorithm": algorithm, "budget": budget, "seed": seed, "queries": len(result.records),
                             "front_size": len(front), "hv_fraction": fraction, "seconds": seconds})
                _common.log(f"{algorithm} budget {budget} seed {seed}: {fraction:.4f} of the true hypervolume "
                            f"({len(result.records)} queries, {seconds:.1f} s)")
    summary = []
    for algorithm in algorithms:
        for budget in budgets:
            values = [r["hv_fraction"] for r in runs if r["algorithm"] == algorithm and r["budget"] == budget]
            summary.append({"algorithm": algorithm, "budget": budget, "mean": float(np.mean(values)),
                            "min": float(np.min(values)), "max": float(np.max(values)), "seeds": len(values)})
    goal_rows = [s for s in summary if s["budget"] <= GOAL["queries"] and s["min"] >= GOAL["fraction"]]
    results = {
        "command": " ".join(["bench/search_nb201.py", *(argv if argv is not None else sys.argv[1:])]),
        "objectives": ["cifar10_valid (max)", f"{args.latency} (min)"],
        "reference_point": ref, "true_front_size": len(true_front), "true_hypervolume": true_hv,
        "goal": GOAL, "goal_met_by": sorted({s["algorithm"] for s in goal_rows}),
        "summary": summary, "runs": runs, "machine": _common.machine_info(),
    }
    out = Path(args.out)
    _common.write_json(out / "search_nb201.json", results)
    _common.write_atomic(out / "search_nb201.md", markdown(results))
    print(markdown(results))
    return 0


def markdown(results: dict[str, Any]) -> str:
    budgets = sorted({s["budget"] for s in results["summary"]})
    lines = [
        "# Architecture search on NAS-Bench-201: hypervolume fraction vs real queries",
        "",
        f"Objectives: {', '.join(results['objectives'])}, table look-ups over all 15,625 cells; normalised by the "
        f"table's range, reference point {results['reference_point']}; true front {results['true_front_size']} cells. "
        f"Cells: mean (min-max) over {results['summary'][0]['seeds']} seeds of the fraction of the true front's "
        "hypervolume reached.",
        "",
        "| algorithm | " + " | ".join(f"{b} queries" for b in budgets) + " |",
        "|---|" + "---:|" * len(budgets),
    ]
    for algorithm in dict.fromkeys(s["algorithm"] for s in results["summary"]):
        cells = []
        for b in budgets:
            s = next(x for x in results["summary"] if x["algorithm"] == algorithm and x["budget"] == b)
            cells.append(f"{s['mean']:.3f} ({s['min']:.3f}-{s['max']:.3f})")
        lines.append(f"| {algorithm} | " + " | ".join(cells) + " |")
    met = results["goal_met_by"]
    lines += ["", f"Goal (>= {results['goal']['fraction']:.0%} of the true hypervolume within "
              f"{results['goal']['queries']} queries, every seed): "
              + (f"met by {', '.join(met)}." if met else "NOT met by any algorithm."), "",
              f"Command: `{results['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
