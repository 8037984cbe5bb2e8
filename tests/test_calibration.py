import numpy as np
import onnx_ir as ir
import pytest

from graphopt.calibration import iter_activations
from graphopt.errors import UsageError

_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 3] y) <float[4, 3] w = {1,0,0, 0,1,0, 0,0,1, 1,1,1}> {
    h = MatMul(x, w)
    r = Relu(h)
    y = Neg(r)
}
"""


def test_iter_activations_yields_intermediates_per_batch():
    model = ir.from_onnx_text(_TEXT)
    x = np.arange(20, dtype=np.float32).reshape(5, 4) - 10
    batches = list(iter_activations(model, {"x": x}, ["h", "r"], batch_size=2))
    assert [b["h"].shape[0] for b in batches] == [2, 2, 1]
    h = np.concatenate([b["h"] for b in batches])
    np.testing.assert_allclose(h, x @ model.graph.initializers["w"].const_value.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(np.concatenate([b["r"] for b in batches]), np.maximum(h, 0))
    assert [v.name for v in model.graph.outputs] == ["y"]  # the caller's model is untouched


def test_iter_activations_rejects_unknown_names_and_initializers():
    model = ir.from_onnx_text(_TEXT)
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(UsageError, match="no tensor named 'nope'"):
        next(iter_activations(model, {"x": x}, ["nope"]))
    with pytest.raises(UsageError, match="initializers"):
        next(iter_activations(model, {"x": x}, ["w"]))
