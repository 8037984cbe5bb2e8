"""Property test of the rewrite pipeline: random small valid graphs, drawn from a grammar of ops,
go through ``optimize_verified`` with the default recipe; the result must verify, and must also
match the original on fresh feeds of another batch size (a rewrite may not specialise shapes)."""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as nh
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from graphopt._io import load_model
from graphopt.feeds import input_specs, synthesize_feeds
from graphopt.pipeline import optimize_verified
from graphopt.recipes import NAMED_RECIPES
from graphopt.verify import verify_models

Shape = tuple[int | str, ...]
UNARY = ("Relu", "Neg", "Abs", "Sigmoid", "Tanh", "Identity", "Softplus", "Erf")
BINARY = ("Add", "Sub", "Mul", "Max", "Min")


class GraphBuilder:
    """Grows an ONNX graph one rule at a time; every value is a float tensor of known shape."""

    def __init__(self, dynamic_batch: bool) -> None:
        self.batch: int | str = "N" if dynamic_batch else 2
        self.values: list[tuple[str, Shape]] = [("x", (self.batch, 3, 4)), ("z", (self.batch, 3, 4))]
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._ids = itertools.count()

    def name(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids)}"

    def const(self, array: np.ndarray) -> str:
        name = self.name("c")
        self.initializers.append(nh.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], shape: Shape, **attrs: Any) -> str:
        out = self.name(op.lower())
        self.nodes.append(oh.make_node(op, inputs, [out], **attrs))
        self.values.append((out, shape))
        return out

    def model(self, outputs: list[str]) -> onnx.ModelProto:
        shapes = dict(self.values)
        graph = oh.make_graph(
            self.nodes,
            "prop",
            [oh.make_tensor_value_info(n, onnx.TensorProto.FLOAT, list(shapes[n])) for n in ("x", "z")],
            [oh.make_tensor_value_info(n, onnx.TensorProto.FLOAT, list(shapes[n])) for n in outputs],
            initializer=self.initializers,
        )
        return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)], ir_version=9)


def _unary(b: GraphBuilder, d: st.DataObject, v: str, shape: Shape) -> str:
    return b.node(d.draw(st.sampled_from(UNARY)), [v], shape)


def _binary_values(b: GraphBuilder, d: st.DataObject, v: str, shape: Shape) -> str:
    partners = [n for n, s in b.values if s == shape]
    other = d.draw(st.sampled_from(partners))
    return b.node(d.draw(st.sampled_from(BINARY)), [v, other], shape)


def _binary_const(b: GraphBuilder, d: st.DataObject, v: str, shape: Shape) -> str:
    kind = d.draw(st.sampled_from(["scalar", "last", "full"]))
    dims = {"scalar": (), "last": (int(shape[-1]),), "full": tuple(int(s) for s in shape[1:])}[kind]
    seed = d.draw(st.integers(0, 2**16))
    value = np.random.default_rng(seed).uniform(0.5, 1.5, size=dims).astype(np.float32)
    op = d.draw(st.sampled_from(["Add", "Sub", "Mul", "Div"]))
    return b.node(op, [v, b.const(value)], shape)


def _no_op(b: GraphBuilder, d: st.DataObject, v: str, shape: Shape) -> str:
    """``Add(v, 0)``, ``Mul(v, 1)``, ``Div(v, 1)``, ``Cast(v, float)``, ``Dropout(v)``, identity ``Transpose``."""
    kind = d.draw(st.sampled_from(["add0", "mul1", "div1", "cast", "dropout", "transpose"]))
    if kind in ("add0", "mul1", "div1"):
        op, fill = {"add0": ("Add", 0.0), "mul1": ("Mul", 1.0), "div1": ("Div", 1.0)}[kind]
        return b.node(op, [v, b.const(np.full((), fill, np.float32))], shape)
    if kind == "cast":
        return b.node("Cast", [v], shape, to=onnx.TensorProto.FLOAT)
    if kind == "dropout":
        return b.node("Dropout", [v], shape)
    return b.node("Transpose", [v], shape, perm=list(range(len(shape))))


def _matmul(b: GraphBuilder, d: st.DataObject, v: str, shape: Shape) -> str:
    k = d.draw(st.integers(2, 5))
    seed = d.draw(st.integers(0, 2**16))
    w = (np.random.default_rng(seed).standard_normal((int(shape[-1]), k)) * 0.5).astype(np.float32)
    return b.node("MatMul", [v, b.const(w)], (*shape[:-1], k))


def _transpose(b: GraphBuilder, d: st.DataObject, v: str, shape: Shape) -> str:
    """A transpose of the last two axes, sometimes undone right away."""
    perm = [0, 2, 1]
    t = b.node("Transpose", [v], (shape[0], shape[2], shape[1]), perm=perm)
    if d.draw(st.booleans()):
        return b.node("Transpose", [t], shape, perm=perm)
    return t


def _reshape_round_trip(b: GraphBuilder, d: st.DataObject, v: str, shape: Shape) -> str:
    """Reshape to ``[batch, -1]`` and back, with the shape taken from ``Shape(v)`` or a constant."""
    flat = b.node("Reshape", [v, b.const(np.array([0, -1], np.int64))], (shape[0], int(shape[1]) * int(shape[2])))
    if d.draw(st.booleans()):
        target = b.node("Shape", [v], (3,))
        b.values.pop()  # an int64 value: not an operand for float rules
    else:
        target = b.const(np.array([0, shape[1], shape[2]], np.int64))
    return b.node("Reshape", [flat, target], shape)


def _unsqueeze_squeeze(b: GraphBuilder, d: st.DataObject, v: str, shape: Shape) -> str:
    axes = b.const(np.array([1], np.int64))
    u = b.node("Unsqueeze", [v, axes], (shape[0], 1, *shape[1:]))
    return b.node("Squeeze", [u, axes], shape)


def _constant_chain(b: GraphBuilder, d: st.DataObject, v: str, shape: Shape) -> str:
    """``Mul(v, Add(c1, c2))``: a constant subexpression to fold."""
    c1 = b.const(np.full((int(shape[-1]),), 0.25, np.float32))
    c2 = b.const(np.full((int(shape[-1]),), 0.5, np.float32))
    s = b.node("Add", [c1, c2], (shape[-1],))
    b.values.pop()
    return b.node("Mul", [v, s], shape)


def _duplicate(b: GraphBuilder, d: st.DataObject, v: str, shape: Shape) -> str:
    """The same op on the same input twice, then combined (common subexpressions)."""
    op = d.draw(st.sampled_from(UNARY))
    first = b.node(op, [v], shape)
    second = b.node(op, [v], shape)
    return b.node("Add", [first, second], shape)


def _gelu(b: GraphBuilder, d: st.DataObject, v: str, shape: Shape) -> str:
    """``0.5 * v * (1 + Erf(v / sqrt(2)))``, the pattern GELU fusions look for."""
    div = b.node("Div", [v, b.const(np.array(np.sqrt(2.0), np.float32))], shape)
    erf = b.node("Erf", [div], shape)
    plus = b.node("Add", [erf, b.const(np.array(1.0, np.float32))], shape)
    mul = b.node("Mul", [v, plus], shape)
    return b.node("Mul", [mul, b.const(np.array(0.5, np.float32))], shape)


def _reduce(b: GraphBuilder, d: st.DataObject, v: str, shape: Shape) -> str:
    op = d.draw(st.sampled_from(["ReduceSum", "ReduceMean", "ReduceMax"]))
    return b.node(op, [v, b.const(np.array([-1], np.int64))], (*shape[:-1], 1), keepdims=1)


def _softmax(b: GraphBuilder, d: st.DataObject, v: str, shape: Shape) -> str:
    return b.node("Softmax", [v], shape, axis=-1)


RULES: dict[str, Callable[[GraphBuilder, st.DataObject, str, Shape], str]] = {
    "unary": _unary,
    "binary-values": _binary_values,
    "binary-const": _binary_const,
    "no-op": _no_op,
    "matmul": _matmul,
    "transpose": _transpose,
    "reshape": _reshape_round_trip,
    "unsqueeze-squeeze": _unsqueeze_squeeze,
    "constant-chain": _constant_chain,
    "duplicate": _duplicate,
    "gelu": _gelu,
    "reduce": _reduce,
    "softmax": _softmax,
}


@st.composite
def graphs(draw: st.DrawFn) -> onnx.ModelProto:
    data = draw(st.data())
    b = GraphBuilder(dynamic_batch=draw(st.booleans()))
    for _ in range(draw(st.integers(1, 8))):
        rule = draw(st.sampled_from(sorted(RULES)))
        v, shape = draw(st.sampled_from([(n, s) for n, s in b.values if len(s) == 3]))
        RULES[rule](b, data, v, shape)
        note(f"{rule}({v})")
    last = b.values[-1][0]
    extra = draw(st.sampled_from([n for n, _ in b.values if n not in ("x", "z", last)] or [last]))
    return b.model(sorted({last, extra}))


# More examples for a deeper search: GRAPHOPT_PROPERTY_EXAMPLES=1500 (1500 passed, 3 minutes).
EXAMPLES = int(os.environ.get("GRAPHOPT_PROPERTY_EXAMPLES", "40"))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=graphs())
def test_default_recipe_preserves_outputs(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.onnx"
        onnx.save(model, path)
        original = load_model(path)
        specs = input_specs(original)
        feeds = synthesize_feeds(specs, seed=0)
        result = optimize_verified(path, NAMED_RECIPES["default"], feeds, original=original)
        note(f"skipped: {result.skipped}")
        assert result.passed, result.failure
        assert not result.skipped, f"a pass broke the graph and had to be left out: {result.skipped}"
        # Fresh feeds, another batch size where the batch is dynamic: no shape was specialised.
        first = specs[0].shape[0] if specs[0].shape else 2
        batch = 3 if not isinstance(first, int) else 2
        fresh = synthesize_feeds(specs, batch=batch, seed=1)
        report = verify_models(path, result.model, fresh, atol=1e-4, rtol=1e-3, signature=original)
        assert report.passed, report
