"""The default recipe over onnx's operator test cases (``bench/corpus.py``): a sample spread over
op types plus the cases that once crashed graphopt, each in a worker process with a timeout."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from bench import corpus

# Cases that crashed or were miscompiled before the fixes they name.
REGRESSIONS = {
    "test_scan9_scalar": "remove-no-ops renamed a Scan body output onto another output",
    "test_split_to_sequence_1": "onnxscript's constant folder raises; the pass must be left out",
    "test_split_to_sequence_2": "verify could not compare sequence outputs",
    "test_string_split_empty_tensor": "iter_batches divided by an empty batch",
    "test_constant": "a model without inputs had no batch to run",
    "test_add_bcast": "inputs of fixed shapes that disagree on axis 0 were refused as feeds",
    "test_reduce_sum_square_default_axes_keepdims_example": "an empty fixed-shape input was refused as a feed",
}


@pytest.fixture(scope="module")
def cases() -> dict[str, Any]:
    return corpus.load_cases()


@pytest.fixture(scope="module")
def sample_records(cases: dict[str, Any]) -> dict[str, dict[str, Any]]:
    names = sorted(set(corpus.spread_sample(cases, 60)) | set(REGRESSIONS))
    records = corpus.run_corpus(cases, names, workers=2, timeout=60)
    return {r["case"]: r for r in records}


def test_sample_spreads_over_op_types(cases: dict[str, Any]) -> None:
    names = corpus.spread_sample(cases, 60)
    assert len(names) == len(set(names)) == 60
    assert len({corpus.op_type(cases[n]) for n in names}) == 60


def test_no_case_crashes(sample_records: dict[str, dict[str, Any]]) -> None:
    crashed = {n: r["reason"] for n, r in sample_records.items() if r["outcome"] == "crashed"}
    assert not crashed
    assert {r["outcome"] for r in sample_records.values()} <= set(corpus.OUTCOMES)
    runnable = [r for r in sample_records.values() if r["outcome"] != "not-runnable"]
    verified = [r for r in runnable if r["outcome"].startswith("verified")]
    assert len(verified) >= 0.9 * len(runnable), [r for r in runnable if r not in verified]
    for record in sample_records.values():
        if record["outcome"] in ("not-runnable", "left-unchanged", "refused"):
            assert record["reason"], record


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_regression_case_verified(name: str, sample_records: dict[str, dict[str, Any]]) -> None:
    record = sample_records[name]
    assert record["outcome"].startswith("verified"), (REGRESSIONS[name], record)
    if name == "test_scan9_scalar":
        assert record["skipped"] == []  # fixed, not merely repaired by leaving steps out
    if name == "test_split_to_sequence_1":
        assert record["skipped"] and all(s.startswith("fold-constants: pass 'fold-constants' failed")
                                         for s in record["skipped"])


def test_summary_counts_add_up(sample_records: dict[str, dict[str, Any]]) -> None:
    summary = corpus.summarize(list(sample_records.values()), len(sample_records))
    assert sum(summary["outcomes"].values()) == summary["cases_run"] == len(sample_records)
    assert summary["runnable"] == summary["cases_run"] - summary["outcomes"]["not-runnable"]
    markdown = corpus.to_markdown(summary, {"date": "-", "versions": {}, "workers": 2, "timeout": 60,
                                            "wall_seconds": 1.0})
    assert "| **crashed (exceptions, timeouts, dead workers)** | **0** |" in markdown


def test_reason_key_groups_messages() -> None:
    a = corpus.reason_key("Could not find an implementation for Cast(19) node with name 'n1' in /tmp/x/a.onnx")
    b = corpus.reason_key("Could not find an implementation for Cast(21) node with name 'other' in /tmp/y/b.onnx")
    assert a == b


def _hang(case: Any, workdir: str) -> dict[str, Any]:
    if case == "hang":
        time.sleep(60)
    if case == "die":
        os._exit(3)
    return {"case": case, "op": "?", "outcome": "verified-unchanged"}


def test_harness_catches_hangs_and_dead_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpus, "op_type", lambda case: "?")
    fake = {"hang": "hang", "die": "die", "ok1": "ok1", "ok2": "ok2"}
    start = time.perf_counter()
    records = corpus.run_corpus(fake, ["hang", "die", "ok1", "ok2"], workers=2, timeout=3, runner=_hang)
    assert time.perf_counter() - start < 30
    by_case = {r["case"]: r for r in records}
    assert by_case["hang"]["outcome"] == "crashed" and by_case["hang"]["reason"].startswith("timeout")
    assert by_case["die"]["outcome"] == "crashed" and "worker died" in by_case["die"]["reason"]
    assert by_case["ok1"]["outcome"] == by_case["ok2"]["outcome"] == "verified-unchanged"


@pytest.mark.slow
def test_larger_slice_no_crashes(cases: dict[str, Any]) -> None:
    names = sorted(cases)[::8]  # every eighth case, about 240
    records = corpus.run_corpus(cases, names, workers=2, timeout=60)
    assert len(records) == len(names)
    assert not [r for r in records if r["outcome"] == "crashed"]
