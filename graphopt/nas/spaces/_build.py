"""Emit ONNX graphs of search-space networks directly with onnx_ir, fast and deterministically.

Exporting a torch module costs seconds per architecture; predictors encode thousands, so the spaces
write the graph the exporter would give (Conv, BatchNormalization in inference form, Relu, pools,
Add/Concat, Gemm) straight from the architecture spec, in a few milliseconds. Weights follow torch's
default initialisation (uniform in ``+-1/sqrt(fan_in)``), drawn lazily (when a tensor is first read)
from a ``numpy`` generator seeded with ``(seed, draw number)``; BatchNormalization starts as torch's
(scale 1, bias 0, running mean 0, running variance 1); names come from counters. The same
architecture and seed give a byte-identical model.

Initializers that are not trainable parameters (running statistics, the fixed scale/bias of a
non-affine BatchNormalization, shape constants) carry a name ending in one of
:data:`BUFFER_SUFFIXES`, so :func:`trainable_parameter_count` counts what the published
benchmarks count.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

__all__ = ["BUFFER_SUFFIXES", "OPSET", "GraphBuilder", "trainable_parameter_count"]

OPSET = 18
BUFFER_SUFFIXES = (".running_mean", ".running_var", ".fixed_scale", ".fixed_bias", ".const")
_FLOAT = ir.DataType.FLOAT


class GraphBuilder:
    """Accumulates nodes and seeded initializers; :meth:`model` closes the graph."""

    def __init__(self, name: str, *, seed: int = 0) -> None:
        self.name = name
        self._seed = seed
        self._draws = 0
        self._nodes: list[ir.Node] = []
        self._initializers: list[ir.Value] = []
        self._inputs: list[ir.Value] = []
        self._names: collections.Counter[str] = collections.Counter()
        self._constants: dict[tuple[str, bytes], ir.Value] = {}

    # -- values -------------------------------------------------------------------------------

    def _unique(self, hint: str) -> str:
        self._names[hint] += 1
        return hint if self._names[hint] == 1 else f"{hint}_{self._names[hint] - 1}"

    def input(self, name: str, dims: Sequence[int | str], dtype: ir.DataType = _FLOAT) -> ir.Value:
        """A graph input (``str`` dims are symbolic)."""
        value = ir.Value(name=name, shape=ir.Shape(list(dims)), type=ir.TensorType(dtype))
        self._inputs.append(value)
        return value

    def param(self, name: str, array: np.ndarray) -> ir.Value:
        """An initializer holding ``array`` (name made unique)."""
        name = self._unique(name)
        return self._initializer(ir.Tensor(array, name=name), array.shape)

    def uniform(self, name: str, shape: Sequence[int], bound: float) -> ir.Value:
        """A float initializer drawn uniformly from ``[-bound, bound)``, generated when first read.

        Each draw has its own generator, seeded with ``(seed, draw number)``: the values do not depend
        on which tensors are read, or in which order, and graphs that are only encoded never pay for them.
        """
        name = self._unique(name)
        dims, key = tuple(int(d) for d in shape), (self._seed, self._draws)
        self._draws += 1

        def draw() -> ir.Tensor:
            data = np.random.default_rng(key).random(dims, dtype=np.float32)
            data *= np.float32(2.0 * bound)
            data -= np.float32(bound)
            return ir.Tensor(data, name=name)

        return self._initializer(ir.LazyTensor(draw, _FLOAT, ir.Shape(dims), cache=True, name=name), dims)

    def _initializer(self, tensor: ir.TensorProtocol, dims: Sequence[int]) -> ir.Value:
        value = ir.Value(name=tensor.name, shape=ir.Shape(dims), type=ir.TensorType(tensor.dtype), const_value=tensor)
        self._initializers.append(value)
        return value

    def constant(self, array: np.ndarray | float | Sequence[int]) -> ir.Value:
        """A shared non-trainable constant (scalars as float32, int lists as int64)."""
        arr = np.asarray(array)
        arr = arr.astype(np.int64) if arr.dtype.kind in "iu" else arr.astype(np.float32)
        key = (f"{arr.dtype}{arr.shape}", arr.tobytes())
        if key not in self._constants:
            self._constants[key] = self.param("c.const", arr)
        return self._constants[key]

    # -- nodes --------------------------------------------------------------------------------

    def op(self, op_type: str, *inputs: ir.Value | None, name: str | None = None, outputs: int = 1,
           **attributes: object) -> ir.Value:
        """Append a node; return its (first) output."""
        node_name = self._unique(name or op_type)
        node = ir.Node("", op_type, list(inputs), [_attr(k, v) for k, v in attributes.items()],
                       num_outputs=outputs, name=node_name)
        for i, out in enumerate(node.outputs):
            out.name = node_name if outputs == 1 else f"{node_name}:{i}"
        self._nodes.append(node)
        return node.outputs[0]

    def add_n(self, values: Sequence[ir.Value], *, name: str = "add") -> ir.Value:
        """``values[0] + values[1] + ...`` as a chain of ``Add``."""
        if not values:
            raise ValueError("add_n needs at least one value")
        total = values[0]
        for value in values[1:]:
            total = self.op("Add", total, value, name=name)
        return total

    def conv(self, x: ir.Value, c_in: int, c_out: int, kernel: int | tuple[int, int], *, name: str,
             stride: int = 1, padding: int | tuple[int, int] | None = None, dilation: int = 1, groups: int = 1,
             bias: bool = False) -> ir.Value:
        """``Conv`` with torch's default initialisation; ``padding`` defaults to 'same' for stride 1."""
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        if padding is None:
            padding = (dilation * (kh - 1) // 2, dilation * (kw - 1) // 2)
        ph, pw = (padding, padding) if isinstance(padding, int) else padding
        fan_in = (c_in // groups) * kh * kw
        bound = 1.0 / float(np.sqrt(fan_in))
        weight = self.uniform(f"{name}.weight", (c_out, c_in // groups, kh, kw), bound)
        b = self.uniform(f"{name}.bias", (c_out,), bound) if bias else None
        return self.op("Conv", x, weight, b, name=name, kernel_shape=[kh, kw], strides=[stride, stride],
                       pads=[ph, pw, ph, pw], dilations=[dilation, dilation], group=groups)

    def batch_norm(self, x: ir.Value, channels: int, *, name: str, affine: bool = True,
                   epsilon: float = 1e-5) -> ir.Value:
        """``BatchNormalization`` in inference form, torch's initial state."""
        ones = np.ones(channels, dtype=np.float32)
        zeros = np.zeros(channels, dtype=np.float32)
        scale = self.param(f"{name}.weight" if affine else f"{name}.fixed_scale", ones)
        shift = self.param(f"{name}.bias" if affine else f"{name}.fixed_bias", zeros)
        mean = self.param(f"{name}.running_mean", zeros.copy())
        var = self.param(f"{name}.running_var", ones.copy())
        return self.op("BatchNormalization", x, scale, shift, mean, var, name=name, epsilon=epsilon)

    def relu(self, x: ir.Value) -> ir.Value:
        return self.op("Relu", x)

    def linear(self, x: ir.Value, d_in: int, d_out: int, *, name: str, bias: bool = True) -> ir.Value:
        """torch ``Linear``: ``Gemm(transB=1)`` for 2-D inputs."""
        bound = 1.0 / float(np.sqrt(d_in))
        weight = self.uniform(f"{name}.weight", (d_out, d_in), bound)
        b = self.uniform(f"{name}.bias", (d_out,), bound) if bias else None
        return self.op("Gemm", x, weight, b, name=name, transB=1)

    def matmul_linear(self, x: ir.Value, d_in: int, d_out: int, *, name: str, bias: bool = True) -> ir.Value:
        """torch ``Linear`` on an N-D input: ``Add(MatMul(x, W^T), b)`` as the exporter writes it."""
        bound = 1.0 / float(np.sqrt(d_in))
        weight = self.uniform(f"{name}.weight", (d_in, d_out), bound)
        y = self.op("MatMul", x, weight, name=f"{name}.matmul")
        if bias:
            y = self.op("Add", y, self.uniform(f"{name}.bias", (d_out,), bound), name=f"{name}.add")
        return y

    def classifier_head(self, x: ir.Value, channels: int, classes: int) -> ir.Value:
        """Global average pool, flatten, linear."""
        pooled = self.op("GlobalAveragePool", x)
        flat = self.op("Flatten", pooled, axis=1)
        return self.linear(flat, channels, classes, name="classifier")

    # -- closing ------------------------------------------------------------------------------

    def model(self, outputs: Sequence[tuple[ir.Value, Sequence[int | str]]], *,
              metadata: dict[str, str] | None = None) -> ir.Model:
        """The finished model; ``outputs`` pairs each output value with its dims."""
        outs = []
        for i, (value, dims) in enumerate(outputs):
            value.name = "logits" if len(outputs) == 1 else f"output_{i}"
            value.shape = ir.Shape(list(dims))
            value.type = ir.TensorType(_FLOAT)
            outs.append(value)
        graph = ir.Graph(self._inputs, outs, nodes=self._nodes, initializers=self._initializers,
                         opset_imports={"": OPSET}, name=self.name)
        return ir.Model(graph, ir_version=10, producer_name="graphopt.nas", metadata_props=dict(metadata or {}))


def _attr(name: str, value: object) -> ir.Attr:
    """An attribute from a plain Python value (ints, floats, strings and lists of ints)."""
    if isinstance(value, bool | int):
        return ir.AttrInt64(name, int(value))
    if isinstance(value, float):
        return ir.AttrFloat32(name, value)
    if isinstance(value, str):
        return ir.AttrString(name, value)
    if isinstance(value, list | tuple) and all(isinstance(v, int) for v in value):
        return ir.AttrInt64s(name, [int(v) for v in value])
    raise TypeError(f"unsupported attribute {name}={value!r}")


def trainable_parameter_count(model: ir.Model) -> int:
    """Elements of the initializers that are trainable parameters (buffers and constants excluded)."""
    return sum(
        int(np.prod(value.shape.numpy())) if value.shape is not None else 0
        for name, value in model.graph.initializers.items()
        if not _is_buffer(name)
    )


def _is_buffer(name: str) -> bool:
    """A buffer name, allowing the ``_k`` suffix :meth:`GraphBuilder._unique` appends."""
    base, _, tail = name.rpartition("_")
    return name.endswith(BUFFER_SUFFIXES) or (tail.isdigit() and base.endswith(BUFFER_SUFFIXES))
