"""Shared fixtures: small ONNX-text models written to disk, and a digest to prove inputs untouched."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import onnx_ir as ir
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SMALL_MLP = """
<ir_version: 8, opset_import: ["" : 18]>
mlp (float[N, 4] x) => (float[N, 3] y) {
  w1 = Constant <value = float[4, 8] {0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, -0.8, 0.9, 1.0, -1.1, 1.2, 0.1, 0.2,
     0.3, -0.4, 0.5, -0.6, 0.7, 0.8, -0.9, 1.0, 1.1, -1.2, 0.1, 0.2, -0.3, 0.4, 0.5, 0.6, -0.7, 0.8}> ()
  w2 = Constant <value = float[8, 3] {0.2, -0.1, 0.3, 0.4, 0.5, -0.6, 0.7, 0.8, 0.9, -1.0, 0.1, 0.2, 0.3, -0.4,
     0.5, 0.6, 0.7, -0.8, 0.9, 1.0, -0.1, 0.2, 0.3, 0.4}> ()
  one = Constant <value = float {1.0}> ()
  a = Identity(x)
  h = MatMul(a, w1)
  h1 = Mul(h, one)
  r = Relu(h1)
  y = MatMul(r, w2)
}
"""


def write_text_model(path: Path, text: str) -> Path:
    ir.save(ir.from_onnx_text(text), path)
    return path


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    return write_text_model(tmp_path / "mlp.onnx", SMALL_MLP)


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def op_types(model: ir.Model) -> list[str]:
    return [node.op_type for node in model.graph]


def check_rewrite(before: str, pass_name: str, expected: str, *, seed: int = 0, atol: float = 1e-5) -> ir.Model:
    """Apply ``pass_name`` to ``before``; assert the ops equal ``expected``'s and that onnxruntime
    gives the same outputs for the original and the rewritten graph."""
    from graphopt.feeds import input_specs, synthesize_feeds
    from graphopt.passes import create_pass
    from graphopt.verify import verify_models

    original = ir.from_onnx_text(before)
    model = ir.from_onnx_text(before)
    result = create_pass(pass_name)(model)
    assert result.modified, f"{pass_name} did not fire"
    assert op_types(model) == op_types(ir.from_onnx_text(expected))
    feeds = synthesize_feeds(input_specs(original), seed=seed)
    report = verify_models(original, model, feeds, atol=atol, rtol=1e-5, signature=original)
    assert report.passed, report
    return model


def check_no_rewrite(before: str, pass_name: str) -> None:
    """Assert ``pass_name`` leaves ``before`` unchanged and says so."""
    from graphopt.passes import create_pass

    def nodes(m: ir.Model) -> list[bytes]:
        graph = ir.to_proto(m).graph
        return [n.SerializeToString() for n in graph.node] + [t.SerializeToString() for t in graph.initializer]

    model = ir.from_onnx_text(before)
    result = create_pass(pass_name)(model)
    assert not result.modified
    assert nodes(model) == nodes(ir.from_onnx_text(before))


def write_cycle_model(path: Path) -> Path:
    """A graph whose two nodes feed each other: ``a = Add(x, b); b = Relu(a)``."""
    return _save_helper_graph(path, [("Add", ["x", "b"], ["a"]), ("Relu", ["a"], ["b"])], "b", [2])


def write_missing_initializer_model(path: Path) -> Path:
    """``y = MatMul(x, w)`` where ``w`` is defined nowhere."""
    return _save_helper_graph(path, [("MatMul", ["x", "w"], ["y"])], "y", [2, 2])


def _save_helper_graph(
    path: Path, nodes: list[tuple[str, list[str], list[str]]], output: str, shape: list[int]
) -> Path:
    import onnx
    import onnx.helper as oh

    graph = oh.make_graph(
        [oh.make_node(op, inputs, outputs) for op, inputs, outputs in nodes],
        "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
        [oh.make_tensor_value_info(output, onnx.TensorProto.FLOAT, shape)],
    )
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)]), path)
    return path
