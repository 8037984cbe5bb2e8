"""graphopt.analysis: costs with known arithmetic, histogram, parameters and recognised blocks.

Small graphs are written in ONNX text; the real-export tests (``slow``) build tiny random Hugging Face
BERT and GPT-2 models and export them with both torch exporters.
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest

from graphopt.analysis import ModelSummary, summarize
from graphopt.errors import UsageError

_RNG = np.random.default_rng(0)


def _w(*shape: int) -> np.ndarray:
    return _RNG.standard_normal(shape).astype(np.float32)


def _model(text: str, **initializers: np.ndarray) -> ir.Model:
    """Parse ONNX text and add the given arrays as initializers."""
    proto = onnx.parser.parse_model(text)
    for name, array in initializers.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(array), name))
    return ir.serde.deserialize_model(proto)


def _header(opset: int = 17, **domains: int) -> str:
    extra = "".join(f', "{d.replace("_", ".")}" : {v}' for d, v in domains.items())
    return f'<ir_version: 10, opset_import: ["" : {opset}{extra}]>'


MATMUL = _header() + """
mm (float[N,128,64] x) => (float[N,128,256] y) {
    y = MatMul(x, w)
}
"""


def _matmul_model() -> ir.Model:
    return _model(MATMUL, w=_w(64, 256))


# -- costs ----------------------------------------------------------------------------------------


def test_matmul_macs_at_default_shapes():
    summary = summarize(_matmul_model())
    assert summary.cost.input_shapes == {"x": (1, 128, 64)}
    assert summary.macs == 128 * 64 * 256
    assert summary.flops == 2 * 128 * 64 * 256
    assert summary.cost.macs_by_op == {"MatMul": 128 * 64 * 256}
    assert not summary.cost.partial and summary.cost.reasons == ()


def test_user_shapes_scale_the_estimate():
    summary = summarize(_matmul_model(), shapes={"x": (4, 128, 64)})
    assert summary.cost.input_shapes == {"x": (4, 128, 64)}
    assert summary.macs == 4 * 128 * 64 * 256


@pytest.mark.parametrize(
    ("shapes", "message"),
    [({"nope": (1, 2)}, "unknown inputs: nope"), ({"x": (1, 128)}, "rank 2"), ({"x": (1, 64, 64)}, "axis 1")],
)
def test_bad_shapes_are_usage_errors(shapes, message):
    with pytest.raises(UsageError, match=message):
        summarize(_matmul_model(), shapes=shapes)


def test_gemm_macs_and_bias_flops():
    text = _header() + """
    gemm (float[8,64] x) => (float[8,32] y) {
        y = Gemm<transB=1>(x, w, b)
    }
    """
    summary = summarize(_model(text, w=_w(32, 64), b=_w(32)))
    assert summary.macs == 8 * 64 * 32
    assert summary.flops == 2 * 8 * 64 * 32 + 8 * 32


def test_conv_depthwise_and_transpose_macs():
    text = _header() + """
    convs (float[N,3,32,32] x) => (float[N,4,64,64] y) {
        a = Conv<pads=[1,1,1,1]>(x, w1, b1)
        d = Conv<pads=[1,1,1,1], group=16>(a, w2)
        y = ConvTranspose<strides=[2,2]>(d, w3)
    }
    """
    summary = summarize(_model(text, w1=_w(16, 3, 3, 3), b1=_w(16), w2=_w(16, 1, 3, 3), w3=_w(16, 4, 2, 2)))
    conv = 16 * 32 * 32 * 3 * 3 * 3
    depthwise = 16 * 32 * 32 * 1 * 3 * 3
    transpose = 16 * 32 * 32 * 4 * 2 * 2  # every input pixel scatters into C_out * k * k outputs
    assert summary.cost.macs_by_op == {"Conv": conv + depthwise, "ConvTranspose": transpose}
    assert summary.cost.flops_by_op["Conv"] == 2 * (conv + depthwise) + 16 * 32 * 32  # one bias
    stages = summary.conv_stages
    assert [(s.resolution, s.channels, s.convs) for s in stages] == [((32, 32), (16,), 2)]


def test_elementwise_and_norm_flops_and_integer_ops_are_free():
    text = _header() + """
    ew (float[2,10] x, int64[3] i) => (float[2,10] y, int64[3] j) {
        r = Relu(x)
        s = Softmax<axis=-1>(r)
        y = Add(s, x)
        j = Add(i, i)
    }
    """
    summary = summarize(_model(text))
    assert summary.macs == 0
    assert summary.cost.flops_by_op == {"Softmax": 5 * 20, "Relu": 20, "Add": 20}


# -- structure ------------------------------------------------------------------------------------


def test_signature_histogram_opsets_and_parameters():
    text = _header(17, com_microsoft=1) + """
    g (float[batch,seq,4] x, int64[batch] ids) => (float[batch,seq,4] y) {
        c = Constant<value = float[4] {1.0, 2.0, 3.0, 4.0}>()
        a = Add(x, c)
        m = MatMul(a, w)
        y = com.microsoft.Gelu(m)
    }
    """
    summary = summarize(_model(text, w=_w(4, 4)))
    assert summary.ir_version == 10
    assert summary.opsets == {"ai.onnx": 17, "com.microsoft": 1}
    assert [(i.name, i.dtype, i.shape) for i in summary.inputs] == [
        ("x", "float", ("batch", "seq", 4)), ("ids", "int64", ("batch",))]
    assert [(o.name, o.dtype, o.shape) for o in summary.outputs] == [("y", "float", ("batch", "seq", 4))]
    assert summary.node_count == 4
    assert summary.op_histogram == {"Add": 1, "Constant": 1, "MatMul": 1, "com.microsoft.Gelu": 1}
    assert summary.parameter_count == 16 + 4  # the initializer and the Constant tensor
    assert summary.parameter_bytes == 4 * (16 + 4)
    # A named dim takes one value everywhere; the contrib op still gets a shape (and FLOPs).
    assert summary.cost.input_shapes == {"x": (1, 128, 4), "ids": (1,)}
    assert summary.cost.flops_by_op["com.microsoft.Gelu"] == 8 * 128 * 4


def test_summary_is_json_serialisable():
    data = _attention_summary().to_dict()
    again = json.loads(json.dumps(data))
    assert again == data
    assert again["cost"]["input_shapes"] == {"x": [1, 128, 32]}
    block = again["attention_blocks"][0]
    assert block["num_heads"] == 4 and block["hidden_size"] == 32
    assert block["q_proj"]["weight"] == "wq"


def test_the_input_model_is_not_modified():
    model = _attention_model()
    before = ir.serde.serialize_model(model).SerializeToString()
    summarize(model, shapes={"x": (2, 16, 32)})
    assert ir.serde.serialize_model(model).SerializeToString() == before


# -- inference problems ---------------------------------------------------------------------------


def test_failed_shape_inference_marks_macs_partial():
    text = _header() + """
    bad (float[N,S,64] x) => (float[N,S,64] z) {
        y = Add(x, pos)
        z = MatMul(y, w)
    }
    """
    model = _model(text, pos=_w(1, 64, 64), w=_w(64, 64))
    summary = summarize(model)  # S defaults to 128, which the 64-row table cannot broadcast to
    assert summary.cost.partial
    assert any("shape inference" in r for r in summary.cost.reasons)
    assert any("MACs not counted for 1 MatMul" in r for r in summary.cost.reasons)
    fixed = summarize(model, shapes={"x": (1, 64, 64)})
    assert not fixed.cost.partial and fixed.macs == 64 * 64 * 64


def test_unknown_heavy_op_marks_macs_partial():
    text = _header(17, custom=1) + """
    g (float[4,8] x) => (float[4,8] y) {
        y = custom.MyMatMul(x, w)
    }
    """
    summary = summarize(_model(text, w=_w(8, 8)))
    assert summary.cost.partial
    assert summary.cost.reasons == (
        "MACs not counted for 1 custom.MyMatMul (shapes unknown or no cost rule)",
    )


# -- attention ------------------------------------------------------------------------------------

ATTENTION = _header() + """
attn (float[B,S,32] x) => (float[B,S,32] y) {
    q = MatMul(x, wq)
    k = MatMul(x, wk)
    v = MatMul(x, wv)
    q4 = Reshape(q, heads)
    k4 = Reshape(k, heads)
    v4 = Reshape(v, heads)
    qt = Transpose<perm=[0,2,1,3]>(q4)
    kt = Transpose<perm=[0,2,3,1]>(k4)
    vt = Transpose<perm=[0,2,1,3]>(v4)
    scores = MatMul(qt, kt)
    scaled = Div(scores, scale)
    probs = Softmax<axis=-1>(scaled)
    ctx = MatMul(probs, vt)
    ctx_t = Transpose<perm=[0,2,1,3]>(ctx)
    merged = Reshape(ctx_t, hidden)
    y = MatMul(merged, wo)
}
"""
# At S = 128: four 32x32 projections, then Q·Kᵀ and P·V over 4 heads of 8.
ATTENTION_MACS = 4 * 128 * 32 * 32 + 2 * 4 * 128 * 128 * 8


def _attention_model(text: str = ATTENTION) -> ir.Model:
    return _model(
        text, wq=_w(32, 32), wk=_w(32, 32), wv=_w(32, 32), wo=_w(32, 32),
        heads=np.array([0, 0, 4, 8], np.int64), hidden=np.array([0, 0, 32], np.int64),
        scale=np.array(math.sqrt(8), np.float32),
    )


def _weights(block) -> list[str | None]:
    return [p.weight if p else None for p in (block.q_proj, block.k_proj, block.v_proj, block.o_proj)]


def _attention_summary() -> ModelSummary:
    return summarize(_attention_model())


def test_unfused_attention_block():
    summary = _attention_summary()
    assert summary.macs == ATTENTION_MACS
    (block,) = summary.attention_blocks
    assert block.kind == "unfused"
    assert (block.num_heads, block.head_size, block.kv_heads, block.hidden_size) == (4, 8, 4, 32)
    assert _weights(block) == ["wq", "wk", "wv", "wo"]
    assert (block.q_proj.in_features, block.q_proj.out_features) == (32, 32)
    assert not block.qkv_fused
    assert block.macs == ATTENTION_MACS
    assert summary.mlp_blocks == () and summary.notes == ()


def test_heads_from_reshape_constants_when_shapes_are_unknown():
    # An unknown op in front hides every shape; the Reshape constants still give the heads.
    text = ATTENTION.replace('["" : 17]', '["" : 17, "custom" : 1]').replace(
        "q = MatMul(x, wq)", "xx = custom.Opaque(x)\n    q = MatMul(xx, wq)"
    ).replace("k = MatMul(x, wk)", "k = MatMul(xx, wk)").replace("v = MatMul(x, wv)", "v = MatMul(xx, wv)")
    summary = summarize(_attention_model(text))
    (block,) = summary.attention_blocks
    assert (block.num_heads, block.head_size) == (4, 8)
    assert block.macs is None
    assert summary.cost.partial


def test_attention_through_quantize_dequantize_pairs():
    text = ATTENTION.replace("q = MatMul(x, wq)", """wq_f = DequantizeLinear(wq8, s, z)
    q_f = MatMul(x, wq_f)
    q8 = QuantizeLinear(q_f, s, z)
    q = DequantizeLinear(q8, s, z)""")
    model = _model(text, wq8=np.ones((32, 32), np.int8), s=np.array(0.1, np.float32), z=np.array(0, np.int8),
                   **{k: v for k, v in _projections().items() if k != "wq"},
                   heads=np.array([0, 0, 4, 8], np.int64), hidden=np.array([0, 0, 32], np.int64),
                   scale=np.array(math.sqrt(8), np.float32))
    summary = summarize(model)
    (block,) = summary.attention_blocks
    assert block.q_proj.weight == "wq8"  # the stored int8 weight, not its dequantized copy
    assert (block.num_heads, block.head_size, block.macs) == (4, 8, ATTENTION_MACS)
    assert summary.parameter_bytes == 32 * 32 + 3 * 32 * 32 * 4 + 4 + 1 + 4 * 8 + 3 * 8 + 4


def test_attention_without_projection_is_reported_with_a_note():
    text = ATTENTION.replace("q = MatMul(x, wq)", "q = Identity(x)")
    summary = summarize(_attention_model(text))
    (block,) = summary.attention_blocks
    assert block.q_proj is None and block.k_proj is not None
    assert block.num_heads == 4
    assert any("no Q projection" in note for note in summary.notes)


def test_softmax_without_qk_matmul_is_a_note_not_a_block():
    text = _header() + """
    g (float[1,4,16,16] s, float[1,4,16,8] v) => (float[1,4,16,8] y) {
        p = Softmax<axis=-1>(s)
        y = MatMul(p, v)
    }
    """
    summary = summarize(_model(text))
    assert summary.attention_blocks == ()
    assert len(summary.notes) == 1 and "no Q·Kᵀ MatMul" in summary.notes[0]


def test_classifier_softmax_is_ignored():
    text = _header() + """
    cls (float[N,16] x) => (float[N,10] y) {
        logits = MatMul(x, w)
        y = Softmax<axis=-1>(logits)
    }
    """
    summary = summarize(_model(text, w=_w(16, 10)))
    assert summary.attention_blocks == () and summary.notes == ()


def _projections(**extra: np.ndarray) -> dict[str, np.ndarray]:
    return {"wq": _w(32, 32), "wk": _w(32, 32), "wv": _w(32, 32), "wo": _w(32, 32), **extra}


def test_fused_contrib_attention():
    text = _header(17, com_microsoft=1) + """
    g (float[B,S,32] x) => (float[B,S,32] y) {
        a = com.microsoft.Attention<num_heads=4>(x, w, b)
        y = MatMul(a, wo)
    }
    """
    summary = summarize(_model(text, w=_w(32, 96), b=_w(96), wo=_w(32, 32)))
    (block,) = summary.attention_blocks
    assert block.kind == "com.microsoft.Attention"
    assert (block.num_heads, block.head_size, block.kv_heads) == (4, 8, 4)
    assert block.qkv_fused and block.q_proj.weight == "w" and block.o_proj.weight == "wo"
    assert summary.macs == block.macs == ATTENTION_MACS  # same work as the unfused graph


def test_fused_multi_head_attention_finds_projections():
    text = _header(17, com_microsoft=1) + """
    g (float[B,S,32] x) => (float[B,S,32] y) {
        q = MatMul(x, wq)
        k = MatMul(x, wk)
        v = MatMul(x, wv)
        a = com.microsoft.MultiHeadAttention<num_heads=4>(q, k, v)
        y = MatMul(a, wo)
    }
    """
    summary = summarize(_model(text, **_projections()))
    (block,) = summary.attention_blocks
    assert (block.kind, block.num_heads, block.head_size) == ("com.microsoft.MultiHeadAttention", 4, 8)
    assert _weights(block) == ["wq", "wk", "wv", "wo"]
    assert summary.macs == block.macs == ATTENTION_MACS


def test_group_query_attention_kv_heads():
    text = _header(17, com_microsoft=1) + """
    g (float[B,S,32] x, int32[B] seqlens, int32[1] total) => (float[B,S,32] y) {
        q = MatMul(x, wq)
        k = MatMul(x, wk)
        v = MatMul(x, wv)
        a, pk, pv = com.microsoft.GroupQueryAttention<num_heads=4, kv_num_heads=2>(
            q, k, v, , , seqlens, total)
        y = MatMul(a, wo)
    }
    """
    summary = summarize(_model(text, **_projections(wk=_w(32, 16), wv=_w(32, 16))))
    (block,) = summary.attention_blocks
    assert (block.num_heads, block.kv_heads, block.head_size) == (4, 2, 8)
    assert block.k_proj.out_features == 16
    assert summary.cost.macs_by_op["com.microsoft.GroupQueryAttention"] == 2 * 4 * 128 * 128 * 8


# -- MLP ------------------------------------------------------------------------------------------

_MLP = _header(20) + """
mlp (float[N,S,32] x) => (float[N,S,32] y) {{
    h = MatMul(x, w1)
    hb = Add(h, b1)
    {body}
    y = MatMul(a, w2)
}}
"""
_ACTIVATIONS = {
    "gelu": "a = Gelu(hb)",
    "gelu_tanh": 'a = Gelu<approximate="tanh">(hb)',
    "relu": "a = Relu(hb)",
    "silu": "s = Sigmoid(hb)\n    a = Mul(hb, s)",
    # 0.5 * x * (1 + erf(x / sqrt(2))), as the TorchScript exporter writes nn.GELU
    "gelu_erf": "d = Div(hb, sqrt2)\n    e = Erf(d)\n    e1 = Add(e, one)\n    m = Mul(hb, e1)\n"
                "    a = Mul(m, half)",
}


@pytest.mark.parametrize("activation", sorted(_ACTIVATIONS))
def test_mlp_block(activation):
    text = _MLP.format(body=_ACTIVATIONS[activation])
    consts = {"sqrt2": np.float32(math.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5)}
    used = {k: np.array(v) for k, v in consts.items() if k in text}
    summary = summarize(_model(text, w1=_w(32, 64), b1=_w(64), w2=_w(64, 32), **used))
    (block,) = summary.mlp_blocks
    assert block.activation == ("gelu" if activation == "gelu_erf" else activation)
    assert (block.up.weight, block.down.weight, block.gate) == ("w1", "w2", None)
    assert (block.up.in_features, block.hidden_size, block.down.out_features) == (32, 64, 32)
    assert block.macs == summary.macs == 2 * 128 * 32 * 64


def test_gated_mlp():
    text = _header() + """
    swiglu (float[N,S,32] x) => (float[N,S,32] y) {
        g = MatMul(x, wg)
        u = MatMul(x, wu)
        s = Sigmoid(g)
        a = Mul(g, s)
        m = Mul(a, u)
        y = MatMul(m, wd)
    }
    """
    summary = summarize(_model(text, wg=_w(32, 64), wu=_w(32, 64), wd=_w(64, 32)))
    (block,) = summary.mlp_blocks
    assert block.activation == "gated_silu"
    assert (block.gate.weight, block.up.weight, block.down.weight) == ("wg", "wu", "wd")
    assert block.hidden_size == 64
    assert block.macs == 3 * 128 * 32 * 64


@pytest.mark.parametrize(
    "body",
    [
        "y = MatMul(h, w2)",  # no activation between the layers
        "a = Relu(h)\n    r = Add(a, x2)\n    y = MatMul(r, w2)",  # a residual joins in
        "a = Relu(h)\n    y = MatMul(a, w2)\n    z = Identity(a)",  # the activation is used elsewhere
    ],
)
def test_not_an_mlp(body):
    text = _header() + f"""
    g (float[N,32] x, float[N,64] x2) => (float[N,32] y) {{
        h = MatMul(x, w1)
        {body}
    }}
    """
    if "z = " in body:
        text = text.replace("=> (float[N,32] y)", "=> (float[N,32] y, float[N,64] z)")
    assert summarize(_model(text, w1=_w(32, 64), w2=_w(64, 32))).mlp_blocks == ()


def test_stacked_layers_make_one_mlp():
    text = _header() + """
    g (float[N,32] x) => (float[N,8] y) {
        h1 = MatMul(x, w1)
        a1 = Relu(h1)
        h2 = MatMul(a1, w2)
        a2 = Relu(h2)
        y = MatMul(a2, w3)
    }
    """
    summary = summarize(_model(text, w1=_w(32, 64), w2=_w(64, 64), w3=_w(64, 8)))
    assert [(b.up.weight, b.down.weight) for b in summary.mlp_blocks] == [("w1", "w2")]


# -- convolution stages from a torch CNN ----------------------------------------------------------


def test_conv_stages_of_a_two_stage_cnn(tmp_path):
    torch = pytest.importorskip("torch")

    class TwoStages(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.b = torch.nn.Conv2d(8, 8, 3, padding=1)
            self.c = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.d = torch.nn.Conv2d(16, 16, 3, padding=1)
            self.fc = torch.nn.Linear(16, 10)

        def forward(self, x):
            x = torch.relu(self.b(torch.relu(self.a(x))))
            x = torch.relu(self.d(torch.relu(self.c(x))))
            return self.fc(x.mean(dim=(2, 3)))

    torch.manual_seed(0)
    path = tmp_path / "cnn.onnx"
    torch.onnx.export(TwoStages().eval(), (torch.randn(2, 3, 32, 32),), path, dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    summary = summarize(ir.load(path))
    assert summary.cost.input_shapes == {"x": (1, 3, 32, 32)}
    stages = [(s.resolution, s.channels, s.convs) for s in summary.conv_stages]
    assert stages == [((32, 32), (8,), 2), ((16, 16), (16,), 2)]
    first = 8 * 32 * 32 * (3 + 8) * 9
    second = 16 * 16 * 16 * (8 + 16) * 9
    assert [s.macs for s in summary.conv_stages] == [first, second]
    assert summary.cost.macs_by_op == {"Conv": first + second, "Gemm": 16 * 10}
    # Weights and biases, plus the exporter's int64[2] axes constant of the mean.
    assert summary.parameter_count == sum(p.numel() for p in TwoStages().parameters()) + 2


# -- real exports -----------------------------------------------------------------------------------

_EXPORTS = [(kind, exporter) for kind in ("bert", "gpt2") for exporter in ("dynamo", "torchscript")]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``exported(kind, exporter) -> path``: tiny random BERT / GPT-2 exports, made once per module."""
    pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("hf_exports")
    cache: dict[tuple[str, str], object] = {}

    def get(kind: str, exporter: str):
        if (kind, exporter) not in cache:
            cache[kind, exporter] = _export_hf(kind, exporter, folder)
        return cache[kind, exporter]

    return get


def _export_hf(kind: str, exporter: str, folder):
    import torch
    import transformers

    torch.manual_seed(0)
    if kind == "bert":
        config = transformers.BertConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=256,
        )
        model = transformers.BertModel(config)
    else:
        config = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=256)
        model = transformers.GPT2Model(config)

    class LastHiddenState(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            # Passing the mask keeps transformers' mask helpers exportable by TorchScript.
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    wrapper = LastHiddenState(model.eval())
    args = (torch.randint(0, 100, (2, 16)), torch.ones(2, 16, dtype=torch.int64))
    names = ["input_ids", "attention_mask"]
    path = folder / f"{kind}_{exporter}.onnx"
    if exporter == "dynamo":
        dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}
        torch.onnx.export(wrapper, args, path, dynamo=True, input_names=names, output_names=["hidden"],
                          dynamic_shapes=(dims, dims))
    else:
        axes = {0: "batch", 1: "sequence"}
        torch.onnx.export(wrapper, args, path, dynamo=False, input_names=names, output_names=["hidden"],
                          dynamic_axes=dict.fromkeys(names, axes))
    return path


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "exporter"), _EXPORTS)
def test_hugging_face_exports(exported, kind, exporter):
    summary = summarize(ir.load(exported(kind, exporter)))
    assert not summary.cost.partial, summary.cost.reasons
    assert summary.cost.input_shapes == {"input_ids": (1, 128), "attention_mask": (1, 128)}
    assert len(summary.attention_blocks) == 2
    for block in summary.attention_blocks:
        assert (block.kind, block.num_heads, block.head_size, block.kv_heads) == ("unfused", 4, 8, 4)
        assert None not in (block.q_proj, block.k_proj, block.v_proj, block.o_proj)
        assert block.qkv_fused == (kind == "gpt2")  # GPT-2's c_attn is one QKV weight
    hidden, activation = (64, "gelu") if kind == "bert" else (128, "gelu_tanh")
    assert [(b.hidden_size, b.activation) for b in summary.mlp_blocks] == [(hidden, activation)] * 2
    assert summary.notes == ()
    # Two layers of 4 projections, Q·Kᵀ and P·V, and the MLP, at sequence length 128.
    layer = 4 * 128 * 32 * 32 + 2 * 4 * 128 * 128 * 8 + 2 * 128 * 32 * hidden
    assert summary.macs == 2 * layer


@pytest.mark.slow
def test_onnxruntime_fused_bert(exported):
    from graphopt.rewrites.ort_fusion import FuseForOnnxruntimePass

    plain = summarize(ir.load(exported("bert", "dynamo")))
    model = ir.load(exported("bert", "dynamo"))
    FuseForOnnxruntimePass()(model)
    fused = summarize(model)
    assert [b.kind for b in fused.attention_blocks] == ["com.microsoft.Attention"] * 2
    assert all((b.num_heads, b.head_size, b.qkv_fused) == (4, 8, True) for b in fused.attention_blocks)
    assert len(fused.mlp_blocks) == 2
    assert fused.macs == plain.macs


def test_model_local_functions_are_inlined_for_costs():
    text = _header(17, local=1) + """
    g (float[N,16] x) => (float[N,16] y) {
        y = local.Linear(x, w)
    }
    <domain: "local", opset_import: ["" : 17]>
    Linear (a, b) => (c) {
        h = MatMul(a, b)
        c = Relu(h)
    }
    """
    summary = summarize(_model(text, w=_w(16, 16)))
    assert summary.op_histogram == {"local.Linear": 1}
    assert summary.macs == 16 * 16
    assert summary.notes == ("inlined 1 model-local function(s) for costs and blocks",)


def test_model_built_in_memory():
    x = ir.Value(name="x", shape=ir.Shape(["N", 64]), type=ir.TensorType(ir.DataType.FLOAT))
    w = ir.Value(name="w", const_value=ir.tensor(_w(64, 32)))
    matmul = ir.node("MatMul", [x, w])
    relu = ir.node("Relu", [matmul.outputs[0]])
    graph = ir.Graph([x], relu.outputs, nodes=[matmul, relu], initializers=[w], opset_imports={"": 17})
    model = ir.Model(graph, ir_version=10)
    names = [(n.name, [v.name for v in n.outputs]) for n in graph]
    summary = summarize(model)
    assert summary.macs == 64 * 32
    assert summary.inputs[0].shape == ("N", 64)
    assert [(n.name, [v.name for v in n.outputs]) for n in graph] == names
    assert x.shape == ir.Shape(["N", 64]) and matmul.outputs[0].shape is None
