"""Latency measured with onnxruntime on this machine, as a predictor target."""

from __future__ import annotations

import numpy as np

from graphopt.predict.latency import measure_latency

from .conftest import write_mlp


def test_a_much_bigger_model_measures_slower(tmp_path):
    small = write_mlp(tmp_path / "small.onnx", [4])
    big = write_mlp(tmp_path / "big.onnx", [1024, 1024])  # ~1000x the multiply-adds
    other = tmp_path / "other.onnx"  # another signature: timed in its own worker
    import onnx

    proto = onnx.load(small)
    proto.graph.input[0].name = "z"
    proto.graph.node[0].input[0] = "z"
    onnx.save(proto, other)
    ms = measure_latency([big, small, other], runs=10)
    assert ms.shape == (3,) and np.all(ms > 0)
    assert ms[0] > ms[1] and ms[0] > ms[2]
