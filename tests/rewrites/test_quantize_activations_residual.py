"""``quantize-activations`` with ``residual``: QDQ on the residual stream (residual Adds, LayerNorm inputs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.errors import UsageError
from graphopt.passes import create_pass
from graphopt.provenance import read_provenance
from graphopt.rewrites.quantize_activations import QuantizeActivationsPass, residual_sites
from graphopt.runtime import make_session
from tests.conftest import op_types
from tests.rewrites.test_quantize_activations import _floats


def stream_model(seed: int = 0, k: int = 16, n: int = 24) -> ir.Model:
    """A post-LayerNorm block: embedding sum ``h0 = x + e``, ``h = LN(h0)``, a bias Add, an attention-mask
    style Add before a Softmax (both must stay float), ``f = MatMul(p, w2) + b2``, the residual
    ``z0 = f + h`` and ``z = LN(z0)``."""
    rng = np.random.default_rng(seed)
    text = f"""<ir_version: 10, opset_import: ["" : 18]>
    g (float[N, {k}] x, float[N, {k}] e, float[N, {n}] mask) => (float[N, {k}] z)
    <float[{k}] g1 = {{{_floats(rng, k, scale=0.2)}}}, float[{k}] b1 = {{{_floats(rng, k, scale=0.1)}}},
     float[{k}] g2 = {{{_floats(rng, k, scale=0.2)}}}, float[{k}] b2n = {{{_floats(rng, k, scale=0.1)}}},
     float[{k}, {n}] w1 = {{{_floats(rng, k, n, scale=0.3)}}}, float[{n}] b = {{{_floats(rng, n, scale=0.1)}}},
     float[{n}, {k}] w2 = {{{_floats(rng, n, k, scale=0.3)}}}, float[{k}] b2 = {{{_floats(rng, k, scale=0.1)}}}> {{
      h0 = Add(x, e)
      h = LayerNormalization <axis = -1> (h0, g1, b1)
      m = MatMul(h, w1)
      y = Add(m, b)
      s = Add(y, mask)
      p = Softmax <axis = -1> (s)
      m2 = MatMul(p, w2)
      f = Add(m2, b2)
      z0 = Add(f, h)
      z = LayerNormalization <axis = -1> (z0, g2, b2n)
    }}"""
    model = ir.from_onnx_text(text)
    for node in model.graph:
        node.name = f"node_{node.outputs[0].name}"
    return model


def stream_feeds(n: int = 64, k: int = 16, width: int = 24, seed: int = 1,
                 outlier: float = 0.0) -> dict[str, np.ndarray]:
    """Random feeds; ``outlier`` adds that value to channel 3 of ``x`` (a residual-stream outlier)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, k)).astype(np.float32)
    x[:, 3] += np.float32(outlier)
    mask = np.where(rng.random((n, width)) < 0.2, -1e4, 0.0).astype(np.float32)
    return {"x": x, "e": (rng.standard_normal((n, k)) * 0.5).astype(np.float32), "mask": mask}


def _quantized_inputs(model: ir.Model) -> set[tuple[str, int]]:
    """``(output name of the consumer, input index)`` of every input that a DequantizeLinear of an
    activation (not a weight) feeds."""
    found = set()
    for node in model.graph:
        for index, value in enumerate(node.inputs):
            producer = value.producer() if value is not None else None
            if producer is not None and producer.op_type == "DequantizeLinear" and producer.inputs[0] is not None \
                    and producer.inputs[0].producer() is not None:
                found.add((node.outputs[0].name or "", index))
    return found


def _run(model: ir.Model, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(make_session(model).run(None, feeds)[0])


def test_residual_sites_skip_bias_and_mask_adds() -> None:
    model = stream_model()
    sites = {(node.outputs[0].name, index) for node, index in residual_sites(model.graph)}
    assert sites == {("h0", 0), ("h0", 1), ("h", 0), ("z0", 0), ("z0", 1), ("z", 0)}
    excluded = {(node.outputs[0].name, index) for node, index in residual_sites(model.graph, exclude=("node_z0",))}
    assert excluded == sites - {("z0", 0), ("z0", 1)}


def test_qdq_on_the_stream_and_close_to_float() -> None:
    feeds = stream_feeds()
    reference = _run(stream_model(), feeds)
    plain = stream_model()
    QuantizeActivationsPass(feeds=feeds, method="minmax")(plain)
    model = stream_model()
    result = QuantizeActivationsPass(feeds=feeds, method="minmax", residual=True)(model)
    assert result.modified
    # without residual: the inputs of the two MatMuls only (h and p)
    assert _quantized_inputs(plain) == {("m", 0), ("m2", 0)}
    assert op_types(plain).count("QuantizeLinear") == 2
    # with residual: also the embedding sum, both LayerNorm inputs and the residual Add; h's pair is shared
    assert _quantized_inputs(model) == {("m", 0), ("m2", 0), ("h0", 0), ("h0", 1), ("h", 0), ("z0", 0),
                                        ("z0", 1), ("z", 0)}
    assert op_types(model).count("QuantizeLinear") == 7
    inserted = [n for n in model.graph if n.op_type == "QuantizeLinear"]
    assert all(n.metadata_props.get("graphopt.inserted_by") == "quantize-activations" for n in inserted)
    assert all(n.inputs[1] is not None and n.inputs[1].const_value is not None
               and n.inputs[1].const_value.size == 1 for n in inserted)  # per tensor
    out = _run(model, feeds)
    # 8-bit minmax ranges of these tensors: the LayerNorm output moves by a few hundredths at most
    assert np.abs(out - reference).max() < 0.1
    assert not np.array_equal(out, _run(plain, feeds))  # the extra QDQ pairs do act


def test_residual_quantization_suffers_from_stream_outliers() -> None:
    """An outlier channel in the residual stream widens the per-tensor ranges of the stream: with
    ``residual`` the other channels lose precision; without it the stream stays float."""
    clean, spiky = stream_feeds(), stream_feeds(outlier=60.0)
    errors = {}
    for name, feeds in (("clean", clean), ("spiky", spiky)):
        reference = _run(stream_model(), feeds)
        for residual in (False, True):
            model = stream_model()
            QuantizeActivationsPass(feeds=feeds, method="minmax", residual=residual)(model)
            others = np.arange(reference.shape[1]) != 3  # error relative to the other channels' spread over tokens
            error = np.abs(_run(model, feeds) - reference)[:, others].mean() / reference[:, others].std(0).mean()
            errors[name, residual] = float(error)
    assert errors["spiky", True] > 2 * errors["clean", True]
    assert errors["spiky", True] > 4 * errors["spiky", False]


def test_residual_from_a_recipe_setting_is_recorded(tmp_path: Path) -> None:
    np.savez(tmp_path / "calib.npz", **stream_feeds())  # type: ignore[arg-type]
    model = stream_model()
    result = create_pass("quantize-activations", {"residual": True, "calib": str(tmp_path / "calib.npz")})(model)
    assert result.modified and op_types(result.model).count("QuantizeLinear") == 7
    record = read_provenance(result.model)[-1]
    assert record["settings"]["residual"] is True
    with pytest.raises(UsageError, match="residual_stream"):
        create_pass("quantize-activations", {"residual_stream": True})


def test_no_normalization_no_residual_sites() -> None:
    model = stream_model()
    for node in list(model.graph):
        if node.op_type == "LayerNormalization":
            node.op_type = "Identity"  # keeps the graph, drops the normalizations
            node.replace_input_with(1, None)
            node.replace_input_with(2, None)
    assert residual_sites(model.graph) == []


def test_int8_embeddings_are_not_quantized_twice() -> None:
    """``Gather`` tables become int8 first; the residual pass then sees their dequantized output and leaves
    it, quantizing only the other input of the embedding sum and the LayerNorm input."""
    rng = np.random.default_rng(0)
    vocab, k = 4096, 16  # 65536 elements: the smallest table that ``embeddings`` stores as int8
    text = f"""<ir_version: 10, opset_import: ["" : 18]>
    g (int64[N] ids, float[N, {k}] pos) => (float[N, {k}] z)
    <float[{k}] g1 = {{{_floats(rng, k)}}}, float[{k}] b1 = {{{_floats(rng, k)}}}> {{
      t = Gather <axis = 0> (table, ids)
      h0 = Add(t, pos)
      z = LayerNormalization <axis = -1> (h0, g1, b1)
    }}"""
    model = ir.from_onnx_text(text)
    table = ir.Value(name="table", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([vocab, k]),
                     const_value=ir.Tensor(rng.standard_normal((vocab, k)).astype(np.float32), name="table"))
    model.graph.register_initializer(table)
    next(n for n in model.graph if n.op_type == "Gather").replace_input_with(0, table)
    feeds: dict[str, np.ndarray] = {"ids": rng.integers(0, vocab, 32),
                                    "pos": rng.standard_normal((32, k)).astype(np.float32)}
    float_out = _run(model, feeds)
    QuantizeActivationsPass(feeds=feeds, method="minmax", residual=True)(model)
    quantized = [n for n in model.graph if n.op_type == "QuantizeLinear"]
    assert {n.inputs[0].name for n in quantized if n.inputs[0] is not None} == {"pos", "h0"}
    assert all(n.inputs[0] is not None and (n.inputs[0].producer() is not None or n.inputs[0].is_graph_input())
               for n in quantized)
    np.testing.assert_allclose(_run(model, feeds), float_out, atol=0.1)
