"""``graphopt export``: bundles on success; one line, exit 2 and nothing left behind on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graphopt.cli import main
from tests.conftest import digest
from tests.export.conftest import float_mlp, quantized_mlp


@pytest.fixture
def q4_path(tmp_path: Path) -> Path:
    from graphopt._io import save_model

    return save_model(quantized_mlp(symmetric=True), tmp_path / "q4.onnx")


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_export_prints_summary_and_writes_bundle(
    q4_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = digest(q4_path)
    out = tmp_path / "bundle"
    assert main(["export", str(q4_path), "--target", "ort-cpu", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "lower-matmulnbits  op count changes: {'DequantizeLinear': -2, 'MatMul': -2, 'MatMulNBits': 2}" in text
    assert "probe: 3 native" in text and "nodes              5 -> 3" in text and "ok on CPU" in text
    assert f"wrote {out}" in text
    assert _entries(out) == ["compatibility.json", "manifest.json", "model.onnx", "run_example.py"]
    assert digest(q4_path) == before


def test_export_json_lists_fallbacks(q4_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["export", str(q4_path), "--target", "ort-cpu", "-o", str(tmp_path / "cpu")])
    assert code == 0
    capsys.readouterr()
    # The CPU bundle's MatMulNBits are contrib ops: exported again for TensorRT they fall back to CUDA.
    lowered = tmp_path / "cpu" / "model.onnx"
    out = tmp_path / "trt"
    assert main(["export", str(lowered), "--target", "ort-tensorrt", "-o", str(out), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["compatibility"]["counts"]["fallback"] == 2
    problems = json.loads((out / "compatibility.json").read_text())["problems"]
    assert [(p["op"], p["provider"]) for p in problems] == [("com.microsoft::MatMulNBits", "CUDAExecutionProvider")]


def test_export_opset_text_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from graphopt._io import save_model

    source = save_model(float_mlp(opset=18), tmp_path / "m.onnx")
    assert main(["export", str(source), "--target", "onnx-opset15", "-o", str(tmp_path / "b")]) == 0
    assert "opset 18 -> 15" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("ort-gpu", "unknown target 'ort-gpu'; choose one of ort-cpu, ort-cuda"),
        ("onnx-opset99", "opset 99 is out of range"),
        ("onnx-opset6", "opset 6 is out of range"),
    ],
)
def test_bad_target(
    q4_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str, message: str
) -> None:
    out = tmp_path / "bundle"
    assert main(["export", str(q4_path), "--target", target, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert _entries(tmp_path) == ["q4.onnx"]


def test_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bundle"
    assert main(["export", str(tmp_path / "nope.onnx"), "--target", "ort-cpu", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "nope.onnx: no such file" in err and len(err.strip().splitlines()) == 1
    assert _entries(tmp_path) == []


def test_non_empty_output_needs_force(q4_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert main(["export", str(q4_path), "--target", "ort-cpu", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert _entries(out) == ["keep.txt"] and _entries(tmp_path) == ["bundle", "q4.onnx"]
    assert main(["export", str(q4_path), "--target", "ort-cpu", "-o", str(out), "--force"]) == 0
    assert "keep.txt" not in _entries(out) and _entries(tmp_path) == ["bundle", "q4.onnx"]


def test_refuses_to_replace_the_folder_of_the_input(
    q4_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = digest(q4_path)
    assert main(["export", str(q4_path), "--target", "ort-cpu", "-o", str(tmp_path), "--force"]) == 2
    assert "refusing to replace the folder that holds the input model" in capsys.readouterr().err
    assert _entries(tmp_path) == ["q4.onnx"] and digest(q4_path) == before


def test_model_onnxruntime_rejects(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import write_text_model

    source = write_text_model(tmp_path / "m.onnx", '<ir_version: 8, opset_import: ["" : 18]>\n'
                              "g (float[2] x, int64[2] n) => (float[2] y) { y = Add(x, n) }")
    assert main(["export", str(source), "--target", "ort-tensorrt", "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "onnxruntime rejected the model" in err and len(err.strip().splitlines()) == 1
    assert _entries(tmp_path) == ["m.onnx"]


def test_conversion_failure_leaves_nothing(q4_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(q4_path), "--target", "onnx-opset19", "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "cannot convert the model from opset 21 to 19" in err and len(err.strip().splitlines()) == 1
    assert _entries(tmp_path) == ["q4.onnx"]


def test_bad_options(q4_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "b")
    assert main(["export", str(q4_path), "--target", "ort-cpu", "-o", out, "--external-data-mib", "-1"]) == 2
    assert "--external-data-mib must not be negative" in capsys.readouterr().err
    assert main(["export", str(q4_path), "--target", "ort-cpu", "-o", out, "--threads", "0"]) == 2
    assert main(["export", str(q4_path), "-o", out]) == 2  # --target is required
    assert _entries(tmp_path) == ["q4.onnx"]


def test_external_data_option(q4_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    assert main(["export", str(q4_path), "--target", "ort-cpu", "-o", str(out), "--external-data-mib", "0"]) == 0
    assert "model.onnx.data" in _entries(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [f["name"] for f in manifest["model"]["files"]] == ["model.onnx", "model.onnx.data"]
