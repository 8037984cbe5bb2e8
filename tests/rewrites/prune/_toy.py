"""Small transformer and CNN graphs built with ``onnx.helper`` (random weights, fixed seeds).

The transformer is post-LN (BERT-like) with explicit head counts in its ``Reshape`` constants
(``[0, 0, H, D]``, ``[0, 0, H*D]``), the case where head pruning must rewrite them. ``H == D`` by
default, so that a rewrite by value alone would also hit the head size.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnx_ir as ir

__all__ = ["toy_cnn", "toy_transformer", "transformer_feeds"]


def toy_transformer(layers: int = 2, heads: int = 4, head_size: int = 4, ffn: int = 32, *,
                    kv_output: bool = False, seed: int = 0) -> ir.Model:
    """``x [B, S, H*D] -> y [B, S, H*D]``: ``layers`` post-LN blocks of attention and a ReLU MLP."""
    width = heads * head_size
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, array: np.ndarray) -> str:
        inits.append(onh.from_array(np.asarray(array), name))
        return name

    const("split_shape", np.array([0, 0, heads, head_size], dtype=np.int64))
    const("merge_shape", np.array([0, 0, width], dtype=np.int64))
    const("scale", np.array(1.0 / np.sqrt(head_size), dtype=np.float32))
    x = "x"
    for i in range(layers):
        rng = np.random.default_rng(seed + i)

        def w(rows: int, cols: int, rng: np.random.Generator = rng) -> np.ndarray:
            return (rng.standard_normal((rows, cols)) / np.sqrt(rows)).astype(np.float32)

        def b(n: int, rng: np.random.Generator = rng) -> np.ndarray:
            return (0.1 * rng.standard_normal(n)).astype(np.float32)

        p = f"l{i}"
        for part in ("q", "k", "v"):
            nodes.append(oh.make_node("MatMul", [x, const(f"{p}.{part}.w", w(width, width))], [f"{p}.{part}.mm"],
                                      name=f"{p}.{part}.matmul"))
            nodes.append(oh.make_node("Add", [f"{p}.{part}.mm", const(f"{p}.{part}.b", b(width))], [f"{p}.{part}"],
                                      name=f"{p}.{part}.bias"))
            nodes.append(oh.make_node("Reshape", [f"{p}.{part}", "split_shape"], [f"{p}.{part}.heads"],
                                      name=f"{p}.{part}.split"))
        nodes.append(oh.make_node("Transpose", [f"{p}.q.heads"], [f"{p}.qt"], perm=[0, 2, 1, 3], name=f"{p}.qt"))
        nodes.append(oh.make_node("Transpose", [f"{p}.k.heads"], [f"{p}.kt"], perm=[0, 2, 3, 1], name=f"{p}.kt"))
        nodes.append(oh.make_node("Transpose", [f"{p}.v.heads"], [f"{p}.vt"], perm=[0, 2, 1, 3], name=f"{p}.vt"))
        nodes.append(oh.make_node("MatMul", [f"{p}.qt", f"{p}.kt"], [f"{p}.scores"], name=f"{p}.qk"))
        nodes.append(oh.make_node("Mul", [f"{p}.scores", "scale"], [f"{p}.scaled"], name=f"{p}.scale"))
        nodes.append(oh.make_node("Softmax", [f"{p}.scaled"], [f"{p}.probs"], axis=-1, name=f"{p}.softmax"))
        nodes.append(oh.make_node("MatMul", [f"{p}.probs", f"{p}.vt"], [f"{p}.ctx"], name=f"{p}.pv"))
        nodes.append(oh.make_node("Transpose", [f"{p}.ctx"], [f"{p}.ctxt"], perm=[0, 2, 1, 3], name=f"{p}.ctxt"))
        nodes.append(oh.make_node("Reshape", [f"{p}.ctxt", "merge_shape"], [f"{p}.merged"], name=f"{p}.merge"))
        nodes.append(oh.make_node("MatMul", [f"{p}.merged", const(f"{p}.o.w", w(width, width))], [f"{p}.o.mm"],
                                  name=f"{p}.o.matmul"))
        nodes.append(oh.make_node("Add", [f"{p}.o.mm", const(f"{p}.o.b", b(width))], [f"{p}.o"], name=f"{p}.o.bias"))
        nodes.append(oh.make_node("Add", [f"{p}.o", x], [f"{p}.res1"], name=f"{p}.res1"))
        nodes.append(oh.make_node("LayerNormalization", [f"{p}.res1", const(f"{p}.ln1.g", 1 + b(width)),
                                                         const(f"{p}.ln1.b", b(width))], [f"{p}.h"], name=f"{p}.ln1"))
        nodes.append(oh.make_node("MatMul", [f"{p}.h", const(f"{p}.up.w", w(width, ffn))], [f"{p}.up.mm"],
                                  name=f"{p}.up.matmul"))
        nodes.append(oh.make_node("Add", [f"{p}.up.mm", const(f"{p}.up.b", b(ffn))], [f"{p}.up"], name=f"{p}.up.bias"))
        nodes.append(oh.make_node("Relu", [f"{p}.up"], [f"{p}.act"], name=f"{p}.relu"))
        nodes.append(oh.make_node("MatMul", [f"{p}.act", const(f"{p}.down.w", w(ffn, width))], [f"{p}.down.mm"],
                                  name=f"{p}.down.matmul"))
        nodes.append(oh.make_node("Add", [f"{p}.down.mm", const(f"{p}.down.b", b(width))], [f"{p}.down"],
                                  name=f"{p}.down.bias"))
        nodes.append(oh.make_node("Add", [f"{p}.down", f"{p}.h"], [f"{p}.res2"], name=f"{p}.res2"))
        out = "y" if i == layers - 1 else f"{p}.out"
        nodes.append(oh.make_node("LayerNormalization", [f"{p}.res2", const(f"{p}.ln2.g", 1 + b(width)),
                                                         const(f"{p}.ln2.b", b(width))], [out], name=f"{p}.ln2"))
        x = out
    outputs = [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["B", "S", width])]
    if kv_output:
        outputs.append(oh.make_tensor_value_info("l0.kt", onnx.TensorProto.FLOAT, None))
    graph = oh.make_graph(nodes, "toy_transformer",
                          [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["B", "S", width])], outputs, inits)
    return ir.from_proto(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)], ir_version=9))


def transformer_feeds(width: int = 16, batch: int = 3, sequence: int = 5, seed: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((batch, sequence, width)).astype(np.float32)}


def toy_cnn(seed: int = 0) -> ir.Model:
    """``x [N, 3, 8, 8]``: Conv(8)-Relu-MaxPool-Conv(8)-Relu-GlobalAveragePool-Flatten-Gemm(5)."""
    rng = np.random.default_rng(seed)
    inits = [onh.from_array(a.astype(np.float32), n) for n, a in (
        ("c1.w", rng.standard_normal((8, 3, 3, 3)) / 5), ("c1.b", 0.1 * rng.standard_normal(8)),
        ("c2.w", rng.standard_normal((8, 8, 3, 3)) / 8), ("c2.b", 0.1 * rng.standard_normal(8)),
        ("fc.w", rng.standard_normal((5, 8)) / 3), ("fc.b", 0.1 * rng.standard_normal(5)))]
    nodes = [
        oh.make_node("Conv", ["x", "c1.w", "c1.b"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        oh.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        oh.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1"),
        oh.make_node("Conv", ["p1", "c2.w", "c2.b"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        oh.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        oh.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        oh.make_node("Flatten", ["g"], ["f"], name="flatten"),
        oh.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], transB=1, name="fc"),
    ]
    graph = oh.make_graph(nodes, "toy_cnn", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 5])], inits)
    return ir.from_proto(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)], ir_version=9))
