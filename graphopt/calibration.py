"""Calibration data and intermediate activations captured with onnxruntime.

``iter_activations(model, feeds, names)`` runs the model batch by batch with the named
intermediate tensors added as graph outputs and yields ``{name: array}`` per batch. The model
is not modified (a clone is run) and the session uses basic graph optimisation only, so that
onnxruntime's fusions cannot remove the tensors asked for. Quantization calibrators (ranges,
histograms) and Hessian estimates (GPTQ) consume it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from graphopt.errors import UsageError
from graphopt.feeds import input_specs, iter_batches, validate_feeds

__all__ = ["iter_activations"]


def iter_activations(
    model: ir.Model,
    feeds: Mapping[str, np.ndarray],
    names: Sequence[str],
    *,
    batch_size: int | None = 8,
    threads: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield ``{name: activation}`` for each batch of ``feeds`` (samples on axis 0).

    ``names`` are value names of ``model`` (graph inputs, outputs or intermediate tensors);
    initializers are not activations and are refused.
    """
    from graphopt.runtime import make_session

    specs = input_specs(model)
    checked = validate_feeds(feeds, specs, source="calibration data")
    work = model.clone()
    values = _values_by_name(work.graph)
    missing = [n for n in names if n not in values]
    if missing:
        raise UsageError(f"no tensor named {', '.join(repr(n) for n in missing[:5])} in the graph")
    constant = [n for n in names if values[n].const_value is not None and n not in _input_names(work.graph)]
    if constant:
        raise UsageError(f"{', '.join(repr(n) for n in constant[:5])} are initializers, not activations")
    present = {v.name for v in work.graph.outputs}
    for name in names:
        if name not in present:
            work.graph.outputs.append(values[name])
            present.add(name)
    session = make_session(work, threads=threads, optimization="basic")
    wanted = list(dict.fromkeys(names))
    for batch in iter_batches(checked, specs, batch_size):
        arrays = session.run(wanted, dict(batch))
        yield dict(zip(wanted, arrays))


def _values_by_name(graph: ir.Graph) -> dict[str, ir.Value]:
    values: dict[str, ir.Value] = {v.name: v for v in graph.inputs if v.name}
    for node in graph:
        for out in node.outputs:
            if out.name:
                values[out.name] = out
    for name, init in graph.initializers.items():
        values.setdefault(name, init)
    return values


def _input_names(graph: ir.Graph) -> set[str]:
    return {v.name for v in graph.inputs if v.name}
