"""Determinism: the same input, recipe and seed give byte-identical files, in one process and
across processes with different hash seeds (set and dict ordering must not leak into the output)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as nh
import pytest

from graphopt.cli import _VERBS, main

ROOT = Path(__file__).resolve().parent.parent

QUANTIZE_RECIPE = """\
name: w4
steps:
  - fold-constants
  - pass: quantize-weights
    settings: {bits: 4, block_size: 32, symmetric: false}
  - lower-matmulnbits
"""


def write_model(path: Path, seed: int = 0, hidden: int = 128) -> Path:
    """A two-layer MLP with 64 x hidden / hidden x 64 weights, a no-op ``Mul(x, 1)`` and a foldable constant."""
    rng = np.random.default_rng(seed)
    inits = [
        nh.from_array(rng.standard_normal((64, hidden)).astype(np.float32), "w1"),
        nh.from_array(rng.standard_normal(hidden).astype(np.float32), "b1"),
        nh.from_array(rng.standard_normal((hidden, 64)).astype(np.float32), "w2"),
        nh.from_array(np.ones((), np.float32), "one"),
        nh.from_array(np.full((64,), 0.5, np.float32), "half"),
    ]
    nodes = [
        oh.make_node("Mul", ["x", "one"], ["x1"]),
        oh.make_node("MatMul", ["x1", "w1"], ["h"]),
        oh.make_node("Add", ["h", "b1"], ["hb"]),
        oh.make_node("Relu", ["hb"], ["r"]),
        oh.make_node("MatMul", ["r", "w2"], ["o"]),
        oh.make_node("Add", ["half", "half"], ["bias"]),
        oh.make_node("Add", ["o", "bias"], ["y"]),
    ]
    graph = oh.make_graph(
        nodes,
        "mlp",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 64])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 64])],
        initializer=inits,
    )
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 21)]), path)
    return path


def _commands(model: Path, recipe: Path, out: Path) -> list[list[str]]:
    commands = [
        ["optimize", str(model), "-o", str(out / "default.onnx"), "--no-bench", "--seed", "3"],
        ["optimize", str(model), "-o", str(out / "w4.onnx"), "--recipe", str(recipe), "--no-bench", "--seed", "3"],
        ["optimize", str(model), "-o", str(out / "ext.onnx"), "--no-bench", "--external-data", "--seed", "3"],
    ]
    if "quantize" in _VERBS:  # static w8a8 quantization, calibrated on the same samples
        calib = model.with_name("calib.npz")
        np.savez(calib, x=np.random.default_rng(5).standard_normal((16, 64)).astype(np.float32))
        commands.append(["quantize", str(model), "-o", str(out / "w8a8.onnx"), "--calib", str(calib)])
    return commands


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    recipe = tmp_path / "w4.yaml"
    recipe.write_text(QUANTIZE_RECIPE)
    return write_model(tmp_path / "mlp.onnx"), recipe


def test_same_process_twice(setup: tuple[Path, Path], tmp_path: Path) -> None:
    model, recipe = setup
    results = []
    for run in ("a", "b"):
        out = tmp_path / run
        out.mkdir()
        for argv in _commands(model, recipe, out):
            assert main(argv) == 0, argv
        results.append(_files(out))
    assert {"default.onnx", "ext.onnx", "ext.onnx.data", "w4.onnx"} <= set(results[0])
    assert results[0] == results[1]
    quantized = onnx.load(str(tmp_path / "a" / "w4.onnx"))
    assert "MatMulNBits" in {n.op_type for n in quantized.graph.node}  # the quantizer really ran


def test_two_processes_with_different_hash_seeds(setup: tuple[Path, Path], tmp_path: Path) -> None:
    model, recipe = setup
    script = "import sys, json; from graphopt.cli import main; sys.exit(max(main(a) for a in json.loads(sys.argv[1])))"
    processes, folders = [], []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"p{hash_seed}"
        out.mkdir()
        folders.append(out)
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        argv = [sys.executable, "-c", script, json.dumps(_commands(model, recipe, out))]
        processes.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True))
    for process in processes:
        _, err = process.communicate(timeout=240)
        assert process.returncode == 0, err
    first, second = (_files(f) for f in folders)
    assert len(first) == len(_commands(model, recipe, tmp_path)) + 1  # + ext.onnx.data
    assert first == second
