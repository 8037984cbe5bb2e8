"""``graphopt bench``: human table and ratio line, --json, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.cli import main

RELU = """
<ir_version: 10, opset_import: ["" : 20]>
relu (float[N, 8] x) => (float[N, 8] y) {
  y = Relu(x)
}
"""

SIGMOID = """
<ir_version: 10, opset_import: ["" : 20]>
sigmoid (float[N, 8] x) => (float[N, 8] y) {
  y = Sigmoid(x)
}
"""

OTHER_INPUT = """
<ir_version: 10, opset_import: ["" : 20]>
other (float[N, 8] z) => (float[N, 8] y) {
  y = Relu(z)
}
"""

# Valid ONNX (the checker does not know custom domains), but onnxruntime rejects it.
CUSTOM_OP = """
<ir_version: 10, opset_import: ["" : 20, "com.example" : 1]>
custom (float[N, 8] x) => (float[N, 8] y) {
  y = com.example.Frobnicate(x)
}
"""

FAST = ["--warmup", "1", "--runs", "5", "--min-seconds", "0"]


def _save(text: str, path: Path) -> str:
    ir.save(ir.from_onnx_text(text), path)
    return str(path)


@pytest.fixture()
def relu(tmp_path: Path) -> str:
    return _save(RELU, tmp_path / "relu.onnx")


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("graphopt bench: error: ")
    return lines[0]


def test_table_and_ratio_line(relu: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = _save(SIGMOID, tmp_path / "sigmoid.onnx")
    assert main(["bench", relu, "--vs", other, "--shape", "x=4,8", *FAST]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header[:3] == ["model", "median", "ms"]
    assert "p90" in header and "samples/s" in header and "peak" in header
    assert any(line.startswith(relu) for line in out.splitlines())
    assert any(line.startswith(other) for line in out.splitlines())
    assert "batch 4; 5 timed runs per model (alternating)" in out
    assert re.search(rf"^{re.escape(other)} / {re.escape(relu)} latency: \d+\.\d\dx "
                     r"\(p10 \d+\.\d\d, p90 \d+\.\d\d\)$", out, re.MULTILINE), out


def test_json_only(relu: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    feed = tmp_path / "feeds.npz"
    np.savez(feed, x=np.ones((6, 8), dtype=np.float32))
    assert main(["bench", relu, "--inputs", str(feed), "--threads", "1", "--json", *FAST]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["batch_size"] == 6 and data["threads"] == 1
    assert data["run_order"] == [0] * 5 and data["ratios"] == []
    model = data["models"][0]
    assert model["path"] == relu
    assert model["median_ms"] > 0 and model["throughput"] > 0 and model["session_ms"] > 0


def test_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", str(tmp_path / "missing.onnx")]) == 2
    assert "missing.onnx: no such file" in _one_error_line(capsys.readouterr().err)


def test_missing_vs_model(relu: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", relu, "--vs", str(tmp_path / "missing.onnx")]) == 2
    assert "no such file" in _one_error_line(capsys.readouterr().err)


def test_wrong_feed_names(relu: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    feed = tmp_path / "feeds.npz"
    np.savez(feed, nope=np.ones((2, 8), dtype=np.float32))
    assert main(["bench", relu, "--inputs", str(feed), *FAST]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "feed names do not match the model inputs" in line and "nope" in line


def test_vs_model_with_other_inputs(relu: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = _save(OTHER_INPUT, tmp_path / "other.onnx")
    assert main(["bench", relu, "--vs", other, *FAST]) == 2
    assert "feed names do not match" in _one_error_line(capsys.readouterr().err)


def test_worker_failure_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    custom = _save(CUSTOM_OP, tmp_path / "custom.onnx")
    assert main(["bench", custom, *FAST]) == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    assert f"{custom}: onnxruntime rejected the model" in line and "Frobnicate" in line
    assert captured.out == ""


def test_bad_option_value(relu: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", relu, "--runs", "0"]) == 2
    assert "--runs" in capsys.readouterr().err
