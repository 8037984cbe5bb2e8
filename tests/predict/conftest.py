"""Fixtures for predictor tests: a shared feature cache and small ONNX models of varying size."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "nasbench"


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory) -> Path:
    """One cache of built-graph features for the whole session (building NB201 graphs is the slow part)."""
    return tmp_path_factory.mktemp("predictor-cache")


def write_mlp(path: Path, widths: list[int], seed: int = 0) -> Path:
    """``x -> (MatMul -> Relu)* -> MatMul`` with the given hidden widths (input 8, output 2)."""
    rng = np.random.default_rng(seed)
    sizes = [8, *widths, 2]
    nodes, inits, current = [], [], "x"
    for k, (a, b) in enumerate(itertools.pairwise(sizes)):
        inits.append(onnx.numpy_helper.from_array(rng.standard_normal((a, b)).astype(np.float32), f"w{k}"))
        out = "y" if k == len(sizes) - 2 else f"h{k}"
        nodes.append(oh.make_node("MatMul", [current, f"w{k}"], [out if out == "y" else f"m{k}"]))
        if out != "y":
            nodes.append(oh.make_node("Relu", [f"m{k}"], [out]))
        current = out
    graph = oh.make_graph(nodes, "mlp", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 8])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 2])], inits)
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)]), path)
    return path


@pytest.fixture
def mlp_zoo(tmp_path) -> tuple[list[Path], np.ndarray]:
    """Twelve MLPs; the target is their parameter count (a function of the graph that must be learnt)."""
    paths, targets = [], []
    for k in range(12):
        widths = [8 + 4 * k] * (1 + k % 3)
        paths.append(write_mlp(tmp_path / f"m{k}.onnx", widths, seed=k))
        sizes = [8, *widths, 2]
        targets.append(float(sum(a * b for a, b in itertools.pairwise(sizes))))
    return paths, np.array(targets)
