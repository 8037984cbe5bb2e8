"""Run a graph with the torch executor and with onnxruntime (no graph optimizations) and compare."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir
import torch

from graphopt.executor import TorchExecutor
from graphopt.feeds import input_specs, synthesize_feeds
from graphopt.runtime import make_session

torch.set_num_threads(1)  # the test machines are shared: more threads make torch spin, not run faster


def graph(body: str, inputs: str, outputs: str, opset: int = 18, ms: bool = False) -> str:
    """ONNX text of a one-graph model (``ms`` imports com.microsoft)."""
    imports = f'"" : {opset}' + (', "com.microsoft" : 1' if ms else "")
    return f"<ir_version: 10, opset_import: [{imports}]>\ng ({inputs}) => ({outputs}) {{\n{body}\n}}"


def max_abs_diff(
    model: ir.Model | str, feeds: Mapping[str, np.ndarray] | None = None, *, seed: int = 0, relative: bool = False
) -> float:
    """Largest |executor - onnxruntime| over all outputs (``relative``: divided by the output's largest
    magnitude); shapes and dtypes must agree exactly."""
    if isinstance(model, str):
        model = ir.from_onnx_text(model)
    if feeds is None:
        feeds = synthesize_feeds(input_specs(model), batch=2, seed=seed)
    got = TorchExecutor(model).run(feeds)
    ref = make_session(model, optimization="disabled").run(None, dict(feeds))
    worst = 0.0
    for (name, g), r in zip(got.items(), ref):
        assert g.shape == r.shape, f"{name}: shape {g.shape} != {r.shape}"
        assert g.dtype == r.dtype, f"{name}: dtype {g.dtype} != {r.dtype}"
        if g.size:
            diff = float(np.max(np.abs(g.astype(np.float64) - r.astype(np.float64))))
            if relative:
                diff /= max(float(np.max(np.abs(r.astype(np.float64)))), 1e-30)
            worst = max(worst, diff)
    return worst


def rand(*shape: int, seed: int = 0, low: float = -2.0, high: float = 2.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


def with_initializers(text: str, values: Mapping[str, np.ndarray]) -> ir.Model:
    """The model of ``text`` with the named graph inputs turned into initializers holding ``values``."""
    model = ir.from_onnx_text(text)
    graph = model.graph
    for name, array in values.items():
        value = next(v for v in graph.inputs if v.name == name)
        graph.inputs.remove(value)
        value.const_value = ir.tensor(array, name=name)
        graph.register_initializer(value)
    return model
