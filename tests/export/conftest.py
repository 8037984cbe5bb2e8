"""Small graphs for the export tests: a float MLP and its blocked 4-bit weight-only QDQ version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from graphopt._io import save_model
from graphopt.passes import GraphoptPass, PassSettings, create_pass, register_pass


def float_mlp(opset: int = 18) -> ir.Model:
    """``y = MatMul(Relu(MatMul(x, W1)), W2)`` with x ``[N, 64]``, W1 ``[64, 64]``, W2 ``[64, 16]``."""
    import onnx
    import onnx.helper as oh
    import onnx.numpy_helper as nh

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((64, 64)).astype(np.float32) * 0.2
    w2 = rng.standard_normal((64, 16)).astype(np.float32) * 0.2
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"), oh.make_node("Relu", ["h"], ["r"], name="relu"),
         oh.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")],
        "mlp",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 64])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 16])],
        initializer=[nh.from_array(w1, "w1"), nh.from_array(w2, "w2")],
    )
    return ir.from_proto(oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)], ir_version=8))


def quantized_mlp(symmetric: bool) -> ir.Model:
    """:func:`float_mlp` after ``quantize-weights`` (4 bits, blocks of 32)."""
    model = float_mlp()
    result = create_pass("quantize-weights", {"bits": 4, "block_size": 32, "symmetric": symmetric,
                                               "min_elements": 1024})(model)
    assert result.modified
    return model


@pytest.fixture
def float_mlp_path(tmp_path: Path) -> Path:
    return save_model(float_mlp(), tmp_path / "float.onnx")


@pytest.fixture
def q4_mlp_path(tmp_path: Path) -> Path:
    return save_model(quantized_mlp(symmetric=False), tmp_path / "q4.onnx")


@register_pass
class ScaleOutputPass(GraphoptPass[PassSettings]):
    """Test stand-in for a lossy float16 step: ``y -> Mul(y, 2)`` on the first graph output."""

    name = "test-export-scale-output"
    output_preserving = False

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        output = graph.outputs[0]
        two = ir.Value(name="test_two", shape=ir.Shape([]), type=ir.TensorType(ir.DataType.FLOAT),
                       const_value=ir.tensor(np.array(2.0, dtype=np.float32), name="test_two"))
        graph.register_initializer(two)
        mul = ir.Node("", "Mul", [output, two], name="test_scale")
        graph.append(mul)
        scaled = mul.outputs[0]
        scaled.type, scaled.shape = output.type, output.shape
        graph.outputs[0] = scaled
        # The scaled value takes over the public output name.
        name = output.name
        output.name = f"{name}_unscaled"
        scaled.name = name
        return ir.passes.PassResult(model, True)


@register_pass
class UnloadablePass(GraphoptPass[PassSettings]):
    """Test stand-in for a lowering onnxruntime's CPU provider cannot load: every Relu becomes
    ``test.unknown::Relu``, an op no provider registers."""

    name = "test-export-unloadable"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in list(model.graph):
            if node.op_type == "Relu":
                new = ir.Node("test.unknown", "Relu", list(node.inputs), name=node.name)
                ir.convenience.replace_nodes_and_values(model.graph, node, [node], [new], node.outputs, new.outputs)
                modified = True
        if modified:
            model.opset_imports["test.unknown"] = 1
        return ir.passes.PassResult(model, modified)
