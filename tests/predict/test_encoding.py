"""graphopt.predict.encoding: ONNX-Net style text, exactly, on small graphs written in ONNX text;
determinism under renaming; the variants; the structural feature vector."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest

from graphopt.errors import UsageError
from graphopt.predict import FEATURE_NAMES, VARIANTS, encode_graph, structural_features

_RNG = np.random.default_rng(0)
_HEADER = '<ir_version: 10, opset_import: ["" : 17]>\n'


def _model(text: str, **initializers: np.ndarray) -> ir.Model:
    proto = onnx.parser.parse_model(_HEADER + text)
    for name, array in initializers.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(array), name))
    return ir.serde.deserialize_model(proto)


def _w(*shape: int) -> np.ndarray:
    return _RNG.standard_normal(shape).astype(np.float32)


CNN = """
cnn (float[1,3,8,8] x) => (float[1,10] y) {
    c = Conv<kernel_shape=[3,3], pads=[1,1,1,1]>(x, w, b)
    r = Relu(c)
    s = Add(r, c)
    p = GlobalAveragePool(s)
    f = Flatten<axis=1>(p)
    y = Gemm<transB=1>(f, w2)
}
"""


def _cnn() -> ir.Model:
    return _model(CNN, w=_w(4, 3, 3, 3), b=_w(4), w2=_w(10, 4))


MLP = """
mlp (float[N,16] x) => (float[N,10] y) {
    h = MatMul(x, w1)
    hb = Add(h, b1)
    a = Relu(hb)
    o = MatMul(a, w2)
    y = Add(o, b2)
}
"""


def _mlp() -> ir.Model:
    return _model(MLP, w1=_w(16, 32), b1=_w(32), w2=_w(32, 10), b2=_w(10))


# -- the text, exactly ----------------------------------------------------------------------------


def test_linear_chain_is_one_line():
    model = _model("""
chain (float[2,4] x) => (float[2,4] y) {
    a = Relu(x)
    b = Sigmoid(a)
    y = Tanh(b)
}
""")
    assert encode_graph(model) == "In1:2x4 --> Relu --> Sigmoid --> Tanh --> Out1:2x4"
    assert encode_graph(model, variant="ops") == "In1 --> Relu --> Sigmoid --> Tanh --> Out1"


def test_residual_cnn_full():
    assert encode_graph(_cnn()) == (
        "In1:1x3x8x8 --> Conv(_, Param[4,3,3,3], Param[4])[kernel_shape=(3,3), pads=(1,1,1,1)] --> T1:1x4x8x8\n"
        "T1 --> Relu --> T2:1x4x8x8\n"
        "Add(T2, T1) --> GlobalAveragePool --> Flatten[axis=1] --> Gemm(_, Param[10,4])[transB=1] --> Out1:1x10"
    )


def test_variants_differ_as_documented():
    model = _cnn()
    assert encode_graph(model, variant="ops") == (
        "In1 --> Conv --> T1\nT1 --> Relu --> T2\nAdd(T2, T1) --> GlobalAveragePool --> Flatten --> Gemm --> Out1"
    )
    assert encode_graph(model, variant="params") == (
        "In1 --> Conv(_, Param[4,3,3,3], Param[4]) --> T1\n"
        "T1 --> Relu --> T2\n"
        "Add(T2, T1) --> GlobalAveragePool --> Flatten --> Gemm(_, Param[10,4]) --> Out1"
    )
    assert encode_graph(model, variant="shapes") == (
        "In1:1x3x8x8 --> Conv --> T1:1x4x8x8\n"
        "T1 --> Relu --> T2:1x4x8x8\n"
        "Add(T2, T1) --> GlobalAveragePool --> Flatten --> Gemm --> Out1:1x10"
    )
    assert len({encode_graph(model, variant=v) for v in VARIANTS}) == 4


def test_chain_restart_names_its_source_tensor():
    model = _model("""
fan (float[2,4] x) => (float[2,4] y, float[2,4] z) {
    t = Relu(x)
    u = Sigmoid(t)
    y = Neg(u)
    z = Tanh(t)
}
""")
    assert encode_graph(model) == (
        "In1:2x4 --> Relu --> T1:2x4\nT1 --> Sigmoid --> Neg --> Out1:2x4\nT1 --> Tanh --> Out2:2x4"
    )


def test_chains_follow_tensors_whatever_the_node_order():
    interleaved = _model("""
two (float[2,4] x) => (float[2,4] y) {
    a = Relu(x)
    b = Sigmoid(x)
    a2 = Neg(a)
    b2 = Abs(b)
    y = Add(a2, b2)
}
""")
    assert encode_graph(interleaved, variant="ops") == (
        "In1 --> Relu --> Neg --> T1\nIn1 --> Sigmoid --> Abs --> T2\nAdd(T1, T2) --> Out1"
    )


def test_scalar_and_list_attributes_are_kept():
    model = _model(
        """
attrs (float[1,8,4,4] x) => (float[1,2,8,8] y, float[2,3] c) {
    a = LeakyRelu<alpha=0.2>(x)
    n = LayerNormalization<axis=-1, epsilon=0.00001>(a, g, bb)
    d = DepthToSpace<blocksize=2, mode="CRD">(n)
    y = Cast<to=1>(d)
    c = ConstantOfShape<value=float[1] {0.5}>(shape)
}
""",
        g=_w(4),
        bb=_w(4),
        shape=np.array([2, 3], dtype=np.int64),
    )
    assert encode_graph(model) == (
        "In1:1x8x4x4 --> LeakyRelu[alpha=0.2] --> LayerNormalization(_, Param[4], Param[4])[axis=-1, epsilon=1e-05]"
        " --> DepthToSpace[blocksize=2, mode=CRD] --> Cast[to=1] --> Out1:1x2x8x8\n"
        "ConstantOfShape(Param[2])[value=float[1]{0.5}] --> Out2:2x3"
    )


def test_constants_scalars_and_missing_inputs():
    model = _model(
        """
consts (float[2,4] x) => (float[2,4] y) {
    k = Constant<value=float[4] {1, 2, 3, 4}>()
    m = Mul(x, k)
    y = Clip(m, , hi)
}
""",
        hi=np.array(6.0, dtype=np.float32),
    )
    assert encode_graph(model) == "In1:2x4 --> Mul(_, Param[4]) --> Clip(_, -, Param[]) --> Out1:2x4"
    assert encode_graph(model, variant="ops") == "In1 --> Mul --> Clip --> Out1"


def test_identity_on_a_weight_is_a_param_and_unknown_dims_are_marked():
    model = _model(
        """
shared (float[2,4] x) => (int64[2,N] y) {
    w2 = Identity(w)
    m = MatMul(x, w2)
    y = NonZero(m)
}
""",
        w=_w(4, 4),
    )
    assert encode_graph(model) == "In1:2x4 --> MatMul(_, Param[4,4]) --> NonZero --> Out1:2x?"
    assert structural_features(model)["depth"] == 2


def test_multi_output_and_unused_outputs():
    model = _model("""
multi (float[1,4,8,8] x) => (float[1,2,4,4] y, float[1,2,4,4] z) {
    p, idx = MaxPool<kernel_shape=[2,2], strides=[2,2]>(x)
    y, z = Split<axis=1, num_outputs=2>(p)
}
""")
    assert encode_graph(model) == (
        "In1:1x4x8x8 --> MaxPool[kernel_shape=(2,2), strides=(2,2)] --> T1:1x4x4x4, -\n"
        "T1 --> Split[axis=1, num_outputs=2] --> Out1:1x2x4x4, Out2:1x2x4x4"
    )


def test_same_tensor_twice_and_several_inputs():
    model = _model("""
sq (float[2,4] x, float[2,4] w) => (float[2,4] y) {
    s = Mul(x, x)
    y = Add(s, w)
}
""")
    assert encode_graph(model) == "In1:2x4 --> Mul(_, _) --> T1:2x4\nAdd(T1, In2:2x4) --> Out1:2x4"


def test_given_shapes_are_used():
    text = encode_graph(_mlp(), shapes={"x": (8, 16)}, variant="shapes")
    assert text == "In1:8x16 --> MatMul --> Add --> Relu --> MatMul --> Add --> Out1:8x10"
    assert encode_graph(_mlp(), variant="shapes").startswith("In1:1x16 ")


# -- determinism ------------------------------------------------------------------------------------


def _renamed(model: ir.Model) -> ir.Model:
    proto = ir.serde.serialize_model(model)
    names: dict[str, str] = {}

    def rename(name: str) -> str:
        if not name:
            return name
        return names.setdefault(name, f"exporter_{len(names) * 7919 % 1000}_{name[::-1]}")

    graph = proto.graph
    for i, node in enumerate(graph.node):
        node.name = f"/layers.{len(graph.node) - i}/op"
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
    for info in [*graph.input, *graph.output, *graph.value_info]:
        info.name = rename(info.name)
    for init in graph.initializer:
        init.name = rename(init.name)
    graph.initializer.reverse()
    return ir.serde.deserialize_model(proto)


@pytest.mark.parametrize("variant", VARIANTS)
def test_renaming_nodes_and_tensors_changes_nothing(variant):
    for model in (_cnn(), _mlp()):
        assert encode_graph(_renamed(model), variant=variant) == encode_graph(model, variant=variant)


def test_encoding_leaves_the_model_alone():
    model = _mlp()
    before = ir.serde.serialize_model(model).SerializeToString()
    encode_graph(model)
    structural_features(model)
    assert ir.serde.serialize_model(model).SerializeToString() == before


def test_unknown_variant_and_bad_shapes_raise_usage_errors():
    with pytest.raises(UsageError, match="variant"):
        encode_graph(_mlp(), variant="tokens")
    with pytest.raises(UsageError):
        encode_graph(_mlp(), shapes={"nope": (1, 16)})


# -- structural features ------------------------------------------------------------------------


def test_features_of_a_small_cnn():
    features = structural_features(_cnn())
    assert tuple(features) == FEATURE_NAMES
    assert all(isinstance(v, float) for v in features.values())
    expected = {
        "op_Conv": 1, "op_Relu": 1, "op_Add": 1, "op_GlobalAveragePool": 1, "op_Flatten": 1, "op_Gemm": 1,
        "op_other": 0, "node_count": 6, "depth": 6, "multi_input_nodes": 1,
        "parameter_count": 4 * 27 + 4 + 40, "macs": 4 * 27 * 64 + 40,
        "conv_stages": 1, "conv_width_first": 4, "conv_width_last": 4, "conv_width_max": 4, "conv_width_mean": 4,
        "attention_blocks": 0,
    }  # fmt: skip
    assert {k: features[k] for k in expected} == expected
    assert sum(v for k, v in features.items() if k.startswith("op_")) == features["node_count"]


def test_features_of_a_small_mlp():
    features = structural_features(_mlp(), shapes={"x": (2, 16)})
    expected = {
        "op_MatMul": 2, "op_Add": 2, "op_Relu": 1, "op_other": 0, "node_count": 5, "depth": 5,
        "multi_input_nodes": 0, "parameter_count": 16 * 32 + 32 + 32 * 10 + 10, "macs": 2 * (16 * 32 + 32 * 10),
        "mlp_blocks": 1, "conv_stages": 0, "conv_width_max": 0,
    }  # fmt: skip
    assert {k: features[k] for k in expected} == expected


def test_unknown_ops_count_as_other():
    model = _model("""
odd (float[2,4] x) => (float[2,4] y) {
    a = Relu(x)
    y = Celu(a)
}
""")
    features = structural_features(model)
    assert features["op_Relu"] == 1 and features["op_other"] == 1 and features["depth"] == 2
