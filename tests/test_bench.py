"""graphopt.bench: the report of a worker-process benchmark, alternation, and how failures surface.

Timings are not asserted beyond sanity: every value must be present and positive, and a model
compared with itself must come out within a loose factor of 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from graphopt import bench
from graphopt.bench import BenchReport, benchmark
from graphopt.errors import CheckFailed, InputError, UsageError

WEIGHTS = ",".join(str((i % 7) / 10) for i in range(256))
MLP = """
<ir_version: 10, opset_import: ["" : 20]>
mlp (float[N, 16] x) => (float[N, 16] y) {
  w = Constant <value = float[16, 16] {WEIGHTS}> ()
  h = MatMul(x, w)
  y = Relu(h)
}
""".replace("WEIGHTS", WEIGHTS)

ADD = """
<ir_version: 10, opset_import: ["" : 20]>
add (float[N, 16] x) => (float[N, 16] y) {
  y = Add(x, x)
}
"""


def _save(text: str, path: Path) -> Path:
    ir.save(ir.from_onnx_text(text), path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("bench")
    return _save(MLP, folder / "mlp.onnx"), _save(ADD, folder / "add.onnx")


@pytest.fixture(scope="module")
def pair_report(models: tuple[Path, Path]) -> BenchReport:
    feeds = {"x": np.ones((3, 16), dtype=np.float32)}
    return benchmark(list(models), feeds, warmup=2, runs=8, min_seconds=0)


def test_report_fields_present_and_positive(pair_report: BenchReport, models: tuple[Path, Path]) -> None:
    report = pair_report
    assert [m.path for m in report.models] == [str(p) for p in models]
    assert report.batch_size == 3
    assert report.rounds == 8
    for m in report.models:
        assert m.runs == len(m.latencies_ms) == 8
        assert all(x > 0 for x in m.latencies_ms)
        assert 0 < m.min_ms <= m.median_ms <= m.p90_ms
        assert m.min_ms <= m.mean_ms
        assert m.throughput == pytest.approx(3 / (m.median_ms / 1e3))
        assert m.session_ms > 0
        assert m.peak_mib >= 0 and m.peak_mib >= m.session_rss_mib
        assert m.providers == ("CPUExecutionProvider",)
    assert report.memory_method in ("VmHWM", "samples+ru_maxrss")
    assert report.baseline_rss_mib > 0 and report.final_rss_mib > 0
    assert report.onnxruntime and report.wall_s > 0


def test_models_alternate_run_by_run(pair_report: BenchReport) -> None:
    assert list(pair_report.run_order) == [0, 1, 1, 0] * 4  # the order rotates each round


def test_ratio_is_per_round_second_over_first(pair_report: BenchReport) -> None:
    ratio = pair_report.ratio
    assert ratio is not None and (ratio.model, ratio.baseline) == (1, 0)
    a, b = pair_report.models
    assert ratio.ratios == pytest.approx([y / x for x, y in zip(a.latencies_ms, b.latencies_ms)])
    assert ratio.p10 <= ratio.median <= ratio.p90


def test_to_dict_is_json(pair_report: BenchReport) -> None:
    data = json.loads(json.dumps(pair_report.to_dict()))
    assert data["run_order"][:4] == [0, 1, 1, 0]
    assert {"median_ms", "p90_ms", "mean_ms", "min_ms", "throughput", "session_ms", "peak_mib"} <= set(
        data["models"][0]
    )
    assert data["ratios"][0]["median"] > 0


def test_model_against_itself_is_near_one(models: tuple[Path, Path], tmp_path: Path) -> None:
    # Feeds as an .npz path; enough runs that the median ratio is stable; a loose sanity bound only.
    feed = tmp_path / "feeds.npz"
    np.savez(feed, x=np.ones((2, 16), dtype=np.float32))
    report = benchmark([models[0], models[0]], feed, warmup=3, runs=200, min_seconds=0)
    assert report.batch_size == 2
    assert report.ratio is not None
    assert 0.33 < report.ratio.median < 3.0


def test_min_seconds_adds_rounds_up_to_max_runs(models: tuple[Path, Path]) -> None:
    report = benchmark([models[1]], {"x": np.ones((1, 16), dtype=np.float32)},
                       warmup=0, runs=2, min_seconds=1000, max_runs=20, batch_size=5)
    assert report.rounds == 20 and report.run_order == (0,) * 20
    assert report.ratios == () and report.ratio is None
    assert report.batch_size == 5


def test_wrong_feed_names_name_the_model(models: tuple[Path, Path]) -> None:
    with pytest.raises(InputError) as info:
        benchmark([models[0]], {"nope": np.ones((1, 16), dtype=np.float32)}, warmup=1, runs=1)
    message = str(info.value)
    assert message.startswith(f"{models[0]}: onnxruntime could not run the model on these feeds")
    assert "\n" not in message


def test_timeout_stops_the_worker(models: tuple[Path, Path]) -> None:
    with pytest.raises(CheckFailed, match=r"did not finish within 0.2 s"):
        benchmark([models[0]], {"x": np.ones((1, 16), dtype=np.float32)}, timeout=0.2)


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("import os; os.abort()", r"^the benchmark worker was killed by SIGABRT$"),
        ("import sys; sys.stderr.write('boom\\nlast words\\n'); sys.exit(5)",
         r"^the benchmark worker exited with status 5 without a report: last words$"),
        ("print('not json')", r"exited with status 0 without a report"),
    ],
)
def test_worker_crash_is_one_clear_line(
    models: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, script: str, expected: str
) -> None:
    monkeypatch.setattr(bench, "_worker_command", lambda: [sys.executable, "-c", script])
    with pytest.raises(CheckFailed, match=expected):
        benchmark([models[0]], {"x": np.ones((1, 16), dtype=np.float32)})


def test_worker_error_report_keeps_its_class(
    models: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = json.dumps({"error": {"type": "UsageError", "message": "provider 'x' is not available"}})
    monkeypatch.setattr(bench, "_worker_command", lambda: [sys.executable, "-c", f"print({payload!r})"])
    with pytest.raises(UsageError, match=r"^provider 'x' is not available$"):
        benchmark([models[0]], {"x": np.ones((1, 16), dtype=np.float32)})


def test_missing_model_fails_before_the_worker(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        benchmark([tmp_path / "missing.onnx"], {"x": np.ones((1, 16), dtype=np.float32)})


@pytest.mark.parametrize(
    "settings",
    [{"runs": 0}, {"warmup": -1}, {"threads": 0}, {"min_seconds": -1.0}, {"timeout": 0}, {"batch_size": 0}],
)
def test_bad_settings(models: tuple[Path, Path], settings: dict) -> None:
    with pytest.raises(UsageError):
        benchmark([models[0]], {"x": np.ones((1, 16), dtype=np.float32)}, **settings)


def test_no_models() -> None:
    with pytest.raises(UsageError):
        benchmark([], {})
