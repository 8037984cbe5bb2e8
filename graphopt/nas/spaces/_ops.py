"""Building blocks shared by the spaces, written as ONNX through :class:`GraphBuilder`.

Each mirrors the torch module of the benchmark's reference code (the names in the docstrings), with
BatchNormalization in inference form.
"""

from __future__ import annotations

import onnx_ir as ir

from graphopt.nas.spaces._build import GraphBuilder

__all__ = ["avg_pool", "conv_bn", "conv_bn_relu", "max_pool", "relu_conv_bn", "zeros_like"]


def relu_conv_bn(b: GraphBuilder, x: ir.Value, c_in: int, c_out: int, kernel: int, *, name: str, stride: int = 1,
                 padding: int | None = None, dilation: int = 1, affine: bool = True) -> ir.Value:
    """``ReLUConvBN``: ``BN(Conv(Relu(x)))`` (conv without bias)."""
    y = b.conv(b.relu(x), c_in, c_out, kernel, name=f"{name}.conv", stride=stride, padding=padding,
               dilation=dilation)
    return b.batch_norm(y, c_out, name=f"{name}.bn", affine=affine)


def conv_bn(b: GraphBuilder, x: ir.Value, c_in: int, c_out: int, kernel: int, *, name: str, stride: int = 1,
            affine: bool = True) -> ir.Value:
    """``BN(Conv(x))`` (conv without bias)."""
    return b.batch_norm(b.conv(x, c_in, c_out, kernel, name=f"{name}.conv", stride=stride), c_out,
                        name=f"{name}.bn", affine=affine)


def conv_bn_relu(b: GraphBuilder, x: ir.Value, c_in: int, c_out: int, kernel: int, *, name: str,
                 stride: int = 1) -> ir.Value:
    """``Relu(BN(Conv(x)))`` (NAS-Bench-101's ``conv_bn_relu``, TransNAS-Bench's ``ConvBNReLU`` order)."""
    return b.relu(conv_bn(b, x, c_in, c_out, kernel, name=name, stride=stride))


def avg_pool(b: GraphBuilder, x: ir.Value, kernel: int = 3, stride: int = 1, *, pad: int | None = None,
             include_pad: bool = False) -> ir.Value:
    """``AvgPool2d(kernel, stride, padding=pad, count_include_pad=include_pad)``, ``pad`` by default ``kernel // 2``."""
    pad = kernel // 2 if pad is None else pad
    return b.op("AveragePool", x, kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pad] * 4,
                count_include_pad=int(include_pad))


def max_pool(b: GraphBuilder, x: ir.Value, kernel: int = 3, stride: int = 1, *, same: bool = True) -> ir.Value:
    """``MaxPool2d``; ``same`` pads as TensorFlow's ``'same'`` (``SAME_UPPER``), else ``kernel // 2``."""
    if same:
        return b.op("MaxPool", x, kernel_shape=[kernel, kernel], strides=[stride, stride], auto_pad="SAME_UPPER")
    pad = kernel // 2
    return b.op("MaxPool", x, kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pad] * 4)


def zeros_like(b: GraphBuilder, x: ir.Value) -> ir.Value:
    """``x * 0`` (the benchmarks' ``Zero`` op at stride 1, as torch exports ``x.mul(0.)``)."""
    return b.op("Mul", x, b.constant(0.0), name="zero")
