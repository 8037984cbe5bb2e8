"""SmoothQuant scale migration (``smooth-quant``): the float function is unchanged, outliers move."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.errors import UsageError
from graphopt.passes import create_pass
from graphopt.rewrites.quantize_activations import QuantizeActivationsPass
from graphopt.rewrites.smooth_quant import SmoothQuantPass, smoothing_scales
from graphopt.runtime import make_session
from tests.conftest import op_types
from tests.rewrites.test_quantize_activations import block_model, feeds


def _qkv_model(seed: int = 0, k: int = 16) -> ir.Model:
    """A LayerNorm read only by two MatMuls (Q and K): 1/s folds into its scale and bias."""
    rng = np.random.default_rng(seed)

    def floats(*shape: int) -> str:
        return ", ".join(f"{v:.6g}" for v in (rng.standard_normal(shape) * 0.3).ravel())

    text = f"""<ir_version: 10, opset_import: ["" : 18]>
    g (float[N, {k}] x) => (float[N, {k}] q, float[N, {k}] kk)
    <float[{k}] g1 = {{{floats(k)}}}, float[{k}] b1 = {{{floats(k)}}},
     float[{k}, {k}] wq = {{{floats(k, k)}}}, float[{k}, {k}] wk = {{{floats(k, k)}}}> {{
      h = LayerNormalization <axis = -1> (x, g1, b1)
      q = MatMul(h, wq)
      kk = MatMul(h, wk)
    }}"""
    model = ir.from_onnx_text(text)
    g1 = np.ones(k, np.float32)
    g1[3] = 40.0  # an outlier channel
    model.graph.initializers["g1"].const_value = ir.Tensor(g1, name="g1")
    return model


def _outputs(model: ir.Model, x: np.ndarray) -> list[np.ndarray]:
    return make_session(model, optimization="disabled").run(None, {"x": x})


def test_scales_formula() -> None:
    a, w = np.array([4.0, 1.0, 0.0]), np.array([1.0, 4.0, 2.0])
    np.testing.assert_allclose(smoothing_scales(a, w, 0.5), [2.0, 0.5, 1.0], rtol=1e-6)
    np.testing.assert_allclose(smoothing_scales(a, w, 1.0), [4.0, 1.0, 1.0], rtol=1e-6)


def test_folds_into_layernorm_and_keeps_the_function() -> None:
    original = _qkv_model()
    model = original.clone()
    assert SmoothQuantPass(feeds=feeds(), alpha=0.5)(model).modified
    assert op_types(model) == op_types(original)  # folded: no Mul inserted
    g1 = model.graph.initializers["g1"].const_value.numpy()  # type: ignore[union-attr]
    assert g1[3] < 40.0  # the outlier channel was scaled down
    x = feeds(8, seed=3)["x"]
    for a, b in zip(_outputs(original, x), _outputs(model, x)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_inserts_mul_when_a_float_consumer_reads_the_tensor() -> None:
    original = block_model()
    model = original.clone()
    assert SmoothQuantPass(feeds=feeds(), alpha=0.5)(model).modified
    muls = [n for n in model.graph if n.op_type == "Mul"]
    assert len(muls) == 2  # before each MatMul; the residual Add keeps the LayerNorm output
    x = feeds(8, seed=3)["x"]
    np.testing.assert_allclose(_outputs(original, x)[0], _outputs(model, x)[0], rtol=1e-4, atol=1e-4)
    assert not SmoothQuantPass(feeds=feeds(), alpha=0.5)(model).modified  # does not match its own Mul


def test_smoothing_reduces_w8a8_error_on_an_outlier_channel() -> None:
    original = _qkv_model()
    x = feeds()["x"]  # the calibration samples: no clipping, only rounding error is compared
    reference = _outputs(original, x)
    errors = []
    for alpha in (None, 0.5):
        model = original.clone()
        if alpha is not None:
            SmoothQuantPass(feeds=feeds(), alpha=alpha)(model)
        QuantizeActivationsPass(feeds=feeds(), method="minmax")(model)
        errors.append(max(float(np.sqrt(np.mean((a - b) ** 2))) for a, b in zip(reference, _outputs(model, x))))
    assert errors[1] < errors[0] / 2  # measured: RMS 0.25 -> 0.08


def test_validation() -> None:
    with pytest.raises(UsageError):
        create_pass("smooth-quant", {"alpha": 1.5})
    with pytest.raises(UsageError, match="calibration"):
        SmoothQuantPass()(_qkv_model())
