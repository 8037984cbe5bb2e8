"""Dependency analysis: groups, the shape constants they own, and reasons for what cannot be pruned."""

from __future__ import annotations

import onnx_ir as ir

from graphopt.rewrites.prune import analyze
from tests.rewrites.prune._toy import toy_transformer


def test_groups_of_a_post_ln_transformer() -> None:
    analysis = analyze(toy_transformer())
    assert [(g.units, g.heads, g.kv_heads, g.head_size, g.reason) for g in analysis.heads] == [(4, 4, 4, 4, None)] * 2
    reshapes = {n.name for n in analysis.heads[0].region if n.op_type == "Reshape"}
    assert reshapes == {"l0.q.split", "l0.k.split", "l0.v.split", "l0.merge"}
    assert analysis.heads[0].o is not None and analysis.heads[0].o.node.name == "l0.o.matmul"
    assert [(g.units, g.reason) for g in analysis.mlps] == [(32, None)] * 2
    assert analysis.mlps[0].up is not None and analysis.mlps[0].up.bias is not None
    assert [(g.x_in.name, g.x_out.name) for g in analysis.layers] == [("x", "l0.out"), ("l0.out", "y")]  # type: ignore[union-attr]
    assert analysis.reasons() == []


def test_a_head_tensor_that_is_a_graph_output_blocks_its_block() -> None:
    analysis = analyze(toy_transformer(kv_output=True))
    assert analysis.heads[0].reason == "pruned tensor 'l0.kt' is a graph output (a KV cache?)"
    assert analysis.heads[1].reason is None
    assert analysis.reasons() == ["attention block 0: pruned tensor 'l0.kt' is a graph output (a KV cache?)"]


def test_a_computed_weight_is_reported() -> None:
    model = toy_transformer(layers=1)
    graph = model.graph
    matmul = next(n for n in graph if n.name == "l0.q.matmul")
    relu = ir.node("Relu", [matmul.inputs[1]], name="computed_weight")
    graph.insert_before(matmul, relu)
    matmul.replace_input_with(1, relu.outputs[0])
    reason = analyze(model).heads[0].reason
    assert reason == "Q weight of 'l0.q.matmul' is not a 2-D float constant (quantized or computed)"
