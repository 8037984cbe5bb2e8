"""The operator table: lookups, unsupported operators named in one line, element types."""

from __future__ import annotations

import onnx_ir as ir
import pytest
import torch

from graphopt.errors import UnsupportedError
from graphopt.executor import TorchExecutor, supported_ops
from graphopt.executor._registry import lookup, to_torch_dtype
from tests.executor._parity import graph


def test_supported_ops_cover_the_standard_and_fused_transformer_ops() -> None:
    ops = set(supported_ops())
    for op in ("MatMul", "Gemm", "Conv", "LayerNormalization", "Softmax", "Gather", "Slice", "Where", "Range",
               "com.microsoft::Attention", "com.microsoft::SkipLayerNormalization", "com.microsoft::BiasGelu"):
        assert op in ops
    assert lookup("ai.onnx", "Add") is lookup("", "Add")


def test_unsupported_op_is_named_before_anything_runs() -> None:
    text = graph("y = NonMaxSuppression(b, s)", "float[1, 4, 4] b, float[1, 1, 4] s", "int64[?, 3] y")
    with pytest.raises(UnsupportedError) as info:
        TorchExecutor(ir.from_onnx_text(text))
    message = str(info.value)
    assert "NonMaxSuppression" in message and "\n" not in message
    with pytest.raises(UnsupportedError, match=r"com\.microsoft::GroupQueryAttention"):
        lookup("com.microsoft", "GroupQueryAttention")


def test_control_flow_is_refused() -> None:
    text = """
    <ir_version: 10, opset_import: ["" : 18]>
    g (bool c, float[2] x) => (float[2] y) {
      y = If(c) <then_branch = t () => (float[2] a) { a = Identity(x) },
                 else_branch = e () => (float[2] b) { b = Neg(x) }>
    }
    """
    with pytest.raises(UnsupportedError, match="If"):
        TorchExecutor(ir.from_onnx_text(text))


def test_element_types() -> None:
    assert to_torch_dtype(ir.DataType.FLOAT) == torch.float32
    assert to_torch_dtype(7) == torch.int64
    with pytest.raises(UnsupportedError, match="STRING"):
        to_torch_dtype(ir.DataType.STRING)
