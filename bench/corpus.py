"""Reliability over the ONNX operator corpus: every node test case that onnx ships goes through
``graphopt.pipeline.optimize_verified`` with the default recipe, fed with the case's own inputs.

Each case runs in a worker process with a per-case timeout (a hang or a native crash is caught
and counted, and the worker is replaced). A case ends in exactly one outcome:

- ``not-runnable``: onnxruntime (or graphopt's loader) cannot run the original model; the reason
  is grouped. These are outside what the recipe is asked to preserve.
- ``verified``: the optimized model matches the original within the recipe's tolerance
  (``verified-changed`` when the graph changed, ``verified-unchanged`` when the recipe found
  nothing to do); steps that had to be left out are counted with their reason.
- ``left-unchanged``: the original itself is not reproducible (random ops) or verification failed
  even after leaving out steps; ``graphopt optimize`` writes nothing then and says why.
- ``refused``: graphopt raised one of its own errors (a clear message, exit 2 in the CLI).
- ``crashed``: any other exception, a timeout or a dead worker. The goal is zero.

Usage::

    .venv/bin/python bench/corpus.py                 # the whole corpus, 2 workers
    .venv/bin/python bench/corpus.py --limit 60      # a sample spread over op types (no results written)

Results: ``bench/results/corpus.json`` and ``corpus.md`` (whole-corpus runs only).
"""

from __future__ import annotations

import argparse
import collections
import logging
import multiprocessing
import multiprocessing.connection
import os
import re
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

import _common
from _common import log

__all__ = ["OUTCOMES", "load_cases", "reason_key", "run_case", "run_corpus", "spread_sample", "summarize"]

RESULTS = Path(__file__).resolve().parent / "results"
OUTCOMES = ("not-runnable", "verified-changed", "verified-unchanged", "left-unchanged", "refused", "crashed")


def load_cases() -> dict[str, Any]:
    """The onnx node test cases by name (``collect_testcases()``), quietly."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    return {case.name: case for case in cases}


def op_type(case: Any) -> str:
    """The operator a case tests (the op of its model's first node; ``?`` for an empty graph)."""
    nodes = case.model.graph.node
    return nodes[0].op_type if nodes else "?"


def spread_sample(cases: dict[str, Any], count: int) -> list[str]:
    """``count`` case names spread over op types: one case per op type, op types evenly spaced."""
    by_op: dict[str, list[str]] = collections.defaultdict(list)
    for name in sorted(cases):
        by_op[op_type(cases[name])].append(name)
    ops = sorted(by_op)
    if count >= len(ops):
        picked = [by_op[op][0] for op in ops]
        rest = sorted(set(cases) - set(picked))
        step = max(1, len(rest) // max(1, count - len(picked)))
        return sorted(picked + rest[::step][: count - len(picked)])
    spacing = len(ops) / count
    return sorted(by_op[ops[int(i * spacing)]][0] for i in range(count))


_ORT_PREFIX = re.compile(r"\[ONNXRuntimeError\] : \d+ : ")
_NUMBER = re.compile(r"\b\d+(\.\d+)?(e[-+]?\d+)?\b")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_PATH = re.compile(r"(?<![\w<])/[\w.\-]+(/[\w.\-]+)+")
_BRACKETS = re.compile(r"\[[^\]]*\]|\{[^}]*\}|\([^)]*\)")


def reason_key(reason: str, limit: int = 90) -> str:
    """A message with names, numbers, paths and bracketed details blanked, for grouping."""
    text = _ORT_PREFIX.sub("", reason)
    text = _PATH.sub("<path>", text)
    text = _QUOTED.sub("<name>", text)
    text = _BRACKETS.sub("<...>", text)
    text = _NUMBER.sub("<n>", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


_CLASSES = (
    ("NOT_IMPLEMENTED", "no onnxruntime CPU kernel for this op/type"),
    ("is not a registered function/op", "preview / training domain not registered in onnxruntime"),
    ("Numpy_type", "input dtype (float8, bfloat16, int4, ...) not accepted by onnxruntime's Python API"),
    ("No corresponding Numpy type", "output dtype (float8, int4, ...) not returned by onnxruntime's Python API"),
)


def reason_class(reason: str) -> str:
    """A coarse class of a not-runnable reason, for the summary table."""
    return next((label for key, label in _CLASSES if key in reason), "onnxruntime fails to initialise or run the node")


def _case_inputs(case: Any) -> dict[str, Any]:
    """The first data set's inputs keyed by graph input name (numpy scalars become arrays)."""

    initializers = {t.name for t in case.model.graph.initializer}
    names = [v.name for v in case.model.graph.input if v.name not in initializers]
    inputs = case.data_sets[0][0] if case.data_sets else []
    return {name: _as_feed(value) for name, value in zip(names, inputs)}


def _as_feed(value: Any) -> Any:
    """numpy scalars and ``TensorProto``s (exotic dtypes) as arrays; sequences element-wise."""
    import numpy as np
    import onnx

    if isinstance(value, onnx.TensorProto):
        return onnx.numpy_helper.to_array(value)
    if isinstance(value, np.generic):
        return np.asarray(value)
    if isinstance(value, list):
        return [_as_feed(v) for v in value]
    return value


def _flatten(values: Sequence[Any]) -> list[Any]:
    """Outputs with sequences expanded and ``None`` (empty optionals) kept as a marker array."""
    import numpy as np

    flat: list[Any] = []
    for value in values:
        if isinstance(value, list):
            flat += [np.asarray(len(value)), *_flatten(value)]
        else:
            flat.append(np.asarray([]) if value is None else np.asarray(value))
    return flat


def _mismatch(a: Sequence[Any], b: Sequence[Any], atol: float, rtol: float) -> str | None:
    """Why two output lists differ beyond tolerance (``None`` when they agree)."""
    from graphopt.verify import compare_outputs

    flat_a, flat_b = _flatten(a), _flatten(b)
    if len(flat_a) != len(flat_b):
        return f"{len(flat_b)} output tensors instead of {len(flat_a)}"
    names = [f"output {i}" for i in range(len(flat_a))]
    bad = [c for c in compare_outputs(flat_a, flat_b, names, atol, rtol) if not c.passed]
    return None if not bad else f"{bad[0].name}: max abs error {bad[0].max_abs:.3g} {bad[0].note}".strip()


def _ort_run(path: Path, inputs: dict[str, Any]) -> list[Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return list(session.run(None, inputs))


def run_case(case: Any, workdir: str | os.PathLike[str]) -> dict[str, Any]:
    """Run one test case through ``optimize_verified`` (default recipe); return its record.

    Runnable means plain onnxruntime runs the original on the case's inputs. Cases whose inputs
    are sequences or optionals cannot be ``.npz`` feeds: the recipe runs without graphopt's
    verification and the outputs are compared here, in onnxruntime, on the case's inputs.
    """
    import numpy as np
    import onnx

    from graphopt._io import load_model, save_model
    from graphopt.errors import GraphoptError, one_line
    from graphopt.pipeline import optimize_verified
    from graphopt.recipes import NAMED_RECIPES

    recipe = NAMED_RECIPES["default"]
    record: dict[str, Any] = {"case": case.name, "op": op_type(case)}
    inputs = _case_inputs(case)
    path = Path(workdir) / f"{case.name}.onnx"
    out = Path(workdir) / f"{case.name}.optimized.onnx"
    onnx.save(case.model, path)
    try:
        try:
            expected = _ort_run(path, inputs)
        except Exception as exc:  # onnxruntime's own exception types
            return {**record, "outcome": "not-runnable", "reason": one_line(exc)}
        if _mismatch(expected, _ort_run(path, inputs), recipe.atol, recipe.rtol) is not None:
            return {**record, "outcome": "left-unchanged", "reason": "the original's outputs differ between runs"}
        tensors = all(isinstance(v, np.ndarray) for v in inputs.values())
        record["feeds"] = "npz" if tensors else "sequence/optional (checked by the benchmark)"
        start = time.perf_counter()
        try:
            original = load_model(path)
            feeds = inputs if tensors else {}
            result = optimize_verified(path, recipe, feeds, verify=tensors, original=original)
            failure = result.failure
            if not tensors:
                save_model(result.model, out)
                failure = _mismatch(expected, _ort_run(out, inputs), recipe.atol, recipe.rtol)
            passed = result.passed if tensors else failure is None
        except GraphoptError as exc:
            return {**record, "outcome": "refused", "reason": one_line(exc), "seconds": time.perf_counter() - start}
        record["seconds"] = time.perf_counter() - start
        record["skipped"] = [f"{s.pass_name}: {s.reason}" for s in result.skipped]
        if not passed:
            return {**record, "outcome": "left-unchanged", "reason": f"verification failed: {failure}"}
        changed = _fingerprint(result.model) != _fingerprint(original)
        record["nodes"] = [len(original.graph), len(result.model.graph)]
        return {**record, "outcome": "verified-changed" if changed else "verified-unchanged"}
    except Exception as exc:  # anything else is a bug in graphopt (or its dependencies): count it
        return {
            **record,
            "outcome": "crashed",
            "reason": f"{type(exc).__name__}: {one_line(exc)}",
            "traceback": traceback.format_exc(limit=-6),
        }
    finally:
        path.unlink(missing_ok=True)
        out.unlink(missing_ok=True)


def _fingerprint(model: Any) -> bytes:
    import onnx_ir as ir

    proto = ir.to_proto(model)
    del proto.metadata_props[:]
    return proto.graph.SerializeToString(deterministic=True)


def _worker(conn: multiprocessing.connection.Connection, runner: Callable[[Any, str], dict[str, Any]]) -> None:
    """Receive ``(name, case)``, send back ``runner(case, workdir)``; ``None`` ends the worker."""
    logging.basicConfig(level=logging.ERROR)
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory(prefix="graphopt-corpus-") as workdir:
        while True:
            item = conn.recv()
            if item is None:
                return
            _name, case = item
            conn.send(runner(case, workdir))


class _Slot:
    """One worker process and the case it is running."""

    def __init__(self, ctx: Any, runner: Callable[[Any, str], dict[str, Any]]) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child, runner), daemon=True)
        self.process.start()
        child.close()
        self.case: str | None = None
        self.started = 0.0

    def submit(self, name: str, case: Any) -> None:
        self.case, self.started = name, time.perf_counter()
        self.conn.send((name, case))

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()


def run_corpus(
    cases: dict[str, Any],
    names: Iterable[str],
    *,
    workers: int = 2,
    timeout: float = 60.0,
    progress: bool = False,
    runner: Callable[[Any, str], dict[str, Any]] = run_case,
) -> list[dict[str, Any]]:
    """Run ``runner(case, workdir)`` for ``names`` in ``workers`` processes; a case past ``timeout``
    seconds, or whose worker dies, is recorded as ``crashed`` and its worker replaced."""
    ctx = multiprocessing.get_context("spawn")
    queue = collections.deque(names)
    total = len(queue)
    slots = [_Slot(ctx, runner) for _ in range(max(1, min(workers, total)))]
    records: list[dict[str, Any]] = []
    try:
        for slot in slots:
            if queue:
                name = queue.popleft()
                slot.submit(name, cases[name])
        while any(slot.case is not None for slot in slots):
            busy = [slot for slot in slots if slot.case is not None]
            multiprocessing.connection.wait([slot.conn for slot in busy], timeout=1.0)
            for i, slot in enumerate(slots):
                if slot.case is None:
                    continue
                record = _collect(slot, cases[slot.case], timeout)
                if record is None:
                    continue
                records.append(record)
                if record["outcome"] == "crashed" and record.get("reason", "").startswith(("timeout", "worker")):
                    slot.stop()
                    slots[i] = slot = _Slot(ctx, runner)
                slot.case = None
                if progress and (len(records) % 100 == 0 or len(records) == total):
                    log(f"{len(records)}/{total} cases")
                if queue:
                    name = queue.popleft()
                    slot.submit(name, cases[name])
    finally:
        for slot in slots:
            if slot.process.is_alive() and slot.case is None:
                with contextlib.suppress(OSError):
                    slot.conn.send(None)
            slot.stop()
    return records


def _collect(slot: _Slot, case: Any, timeout: float) -> dict[str, Any] | None:
    elapsed = time.perf_counter() - slot.started
    try:
        if slot.conn.poll():
            record: dict[str, Any] = slot.conn.recv()
            return record
    except (EOFError, OSError):
        pass
    base = {"case": slot.case, "op": op_type(case), "outcome": "crashed", "seconds": elapsed}
    if not slot.process.is_alive():
        return {**base, "reason": f"worker died (exit code {slot.process.exitcode})"}
    if elapsed > timeout:
        return {**base, "reason": f"timeout after {timeout:g} s"}
    return None


def summarize(records: Sequence[dict[str, Any]], total: int) -> dict[str, Any]:
    """Counts per outcome, grouped reasons and timings."""
    import numpy as np

    counts = collections.Counter(r["outcome"] for r in records)
    reasons: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for r in records:
        if r["outcome"] in ("not-runnable", "left-unchanged", "refused", "crashed"):
            reasons[r["outcome"]][reason_key(r["reason"])] += 1
    skipped: collections.Counter[str] = collections.Counter(
        reason_key(s) for r in records for s in r.get("skipped", ())
    )
    classes = collections.Counter(reason_class(r["reason"]) for r in records if r["outcome"] == "not-runnable")
    seconds = np.array([r["seconds"] for r in records if "seconds" in r and r["outcome"] != "crashed"])
    runnable = len(records) - counts["not-runnable"]
    verified = counts["verified-changed"] + counts["verified-unchanged"]
    return {
        "cases_total": total,
        "cases_run": len(records),
        "runnable": runnable,
        "verified": verified,
        "outcomes": {o: counts[o] for o in OUTCOMES},
        "verified_in_benchmark": sum(1 for r in records
                                     if r.get("feeds", "npz") != "npz" and r["outcome"].startswith("verified")),
        "verified_after_leaving_out_steps": sum(1 for r in records if r.get("skipped") and "verified" in r["outcome"]),
        "not_runnable_classes": dict(classes.most_common()),
        "reasons": {o: dict(reasons[o].most_common()) for o in OUTCOMES if reasons[o]},
        "left_out_steps": dict(skipped.most_common()),
        "seconds_per_case": {
            "median": float(np.median(seconds)) if seconds.size else None,
            "p90": float(np.percentile(seconds, 90)) if seconds.size else None,
            "max": float(seconds.max()) if seconds.size else None,
            "sum": float(seconds.sum()),
        },
        "crashed_cases": [{k: r.get(k) for k in ("case", "reason", "traceback")} for r in records
                          if r["outcome"] == "crashed"],
        "left_unchanged_cases": sorted(r["case"] for r in records if r["outcome"] == "left-unchanged"),
    }


def to_markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    out = summary["outcomes"]
    t = summary["seconds_per_case"]
    lines = [
        "# graphopt default recipe over the ONNX operator corpus",
        "",
        f"`bench/corpus.py`, {meta['date']}, onnx {meta['versions'].get('onnx')}, onnxruntime "
        f"{meta['versions'].get('onnxruntime')}, {meta['workers']} workers, {meta['timeout']:g} s per-case timeout, "
        f"wall time {meta['wall_seconds']:.0f} s.",
        "",
        "| cases | count |",
        "|---|---|",
        f"| node test cases (`collect_testcases()`) | {summary['cases_total']} |",
        f"| not runnable: onnxruntime cannot load or run the original on the case's inputs "
        f"| {out['not-runnable']} |",
        f"| runnable by onnxruntime | {summary['runnable']} |",
        f"| optimized and verified, graph changed | {out['verified-changed']} |",
        f"| optimized and verified, nothing to change | {out['verified-unchanged']} |",
        f"| ... of which verified after leaving out a step | {summary['verified_after_leaving_out_steps']} |",
        f"| ... of which with sequence/optional inputs (not `.npz` feeds: the recipe ran unverified and this "
        f"benchmark compared the outputs in onnxruntime) | {summary['verified_in_benchmark']} |",
        f"| left unchanged with a reason | {out['left-unchanged']} |",
        f"| refused with a clear error | {out['refused']} |",
        f"| **crashed (exceptions, timeouts, dead workers)** | **{out['crashed']}** |",
        "",
        f"Seconds per case in `optimize_verified` (runnable cases): median {_fmt(t['median'])}, "
        f"p90 {_fmt(t['p90'])}, max {_fmt(t['max'])}, sum {t['sum']:.0f}.",
        "",
    ]
    if summary["not_runnable_classes"]:
        lines += ["## not runnable, by class", "", "| class | cases |", "|---|---|"]
        lines += [f"| {key} | {n} |" for key, n in summary["not_runnable_classes"].items()]
        lines.append("")
    for outcome, groups in summary["reasons"].items():
        lines += [f"## {outcome}: reasons", "", "| reason (names and numbers blanked) | cases |", "|---|---|"]
        lines += [f"| {key.replace('|', '/')} | {n} |" for key, n in groups.items()]
        lines.append("")
    if summary["left_out_steps"]:
        lines += ["## steps left out by the repair loop", "", "| step: reason | cases |", "|---|---|"]
        lines += [f"| {key.replace('|', '/')} | {n} |" for key, n in summary["left_out_steps"].items()]
        lines.append("")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per case")
    parser.add_argument("--limit", type=int, help="run a sample of this many cases spread over op types")
    parser.add_argument("--case", action="append", default=[], help="run only this case (repeatable)")
    args = parser.parse_args(argv)
    log("collecting test cases")
    cases = load_cases()
    if args.case:
        names = args.case
    elif args.limit:
        names = spread_sample(cases, args.limit)
    else:
        names = sorted(cases)
    log(f"running {len(names)} of {len(cases)} cases in {args.workers} workers")
    start = time.perf_counter()
    records = run_corpus(cases, names, workers=args.workers, timeout=args.timeout, progress=True)
    wall = time.perf_counter() - start
    summary = summarize(records, len(cases) if len(names) == len(cases) else len(names))
    meta = {**_common.machine_info(), "workers": args.workers, "timeout": args.timeout, "wall_seconds": wall}
    markdown = to_markdown(summary, meta)
    print(markdown)
    if len(names) == len(cases):
        _common.write_json(RESULTS / "corpus.json", {"meta": meta, "summary": summary, "cases": records})
        _common.write_atomic(RESULTS / "corpus.md", markdown)
        log(f"wrote {RESULTS / 'corpus.json'} and corpus.md")
    return 1 if summary["outcomes"]["crashed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
