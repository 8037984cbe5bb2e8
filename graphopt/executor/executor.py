"""``TorchExecutor``: an ONNX graph run with torch operations, as a differentiable ``nn.Module``.

The node plan (implementation, resolved attributes, input/output slots, slots to free) is built
once; ``forward`` is a single walk over that plan. Initializers become buffers, or parameters when
selected by ``trainable``; :meth:`TorchExecutor.write_back` copies trained values into a model.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
import torch

from graphopt.errors import InputError, UnsupportedError, UsageError, one_line

# Importing the op modules fills the registry.
from graphopt.executor import _ops_math, _ops_ms, _ops_nn, _ops_tensor  # noqa: F401
from graphopt.executor._registry import OpContext, OpFn, lookup, tensor_from_ir

__all__ = ["TRAINABLE_MARKERS", "TorchExecutor", "select_trainable"]

#: Named selections: ``adapters``, ``gates`` and ``clip`` are the initializers the rewrite passes insert,
#: named ``graphopt.adapter.*`` / ``graphopt.gate.*`` / ``graphopt.clip.*`` (clipped-softmax with
#: ``parameters=layer|head``; frozen parts such as NOLA's random bases excluded, see
#: :mod:`graphopt.rewrites._markers`); ``all`` is every floating-point initializer.
TRAINABLE_MARKERS = ("adapters", "gates", "clip", "all")

Trainable = str | Sequence[str] | None


@dataclasses.dataclass(frozen=True)
class _Step:
    fn: OpFn
    ctx: OpContext
    inputs: tuple[int, ...]  # -1 for an omitted optional input
    outputs: tuple[int, ...]
    free: tuple[int, ...]  # slots whose last reader is this step


def select_trainable(model: ir.Model, trainable: Trainable) -> list[str]:
    """Names of the floating-point initializers picked by ``trainable``: a marker of
    :data:`TRAINABLE_MARKERS`, initializer names or glob patterns (a list, or one comma-separated
    string). Every item must select something."""
    if trainable is None:
        return []
    items = [s.strip() for s in trainable.split(",")] if isinstance(trainable, str) else list(trainable)
    items = [s for s in items if s]
    from graphopt.rewrites._markers import is_adapter, is_clip, is_gate, is_trainable

    markers = {"adapters": is_adapter, "gates": is_gate, "clip": is_clip}

    floats = [
        name for name, value in model.graph.initializers.items()
        if value.const_value is not None and value.const_value.dtype.is_floating_point()
    ]
    chosen: set[str] = set()
    for item in items:
        if item == "all":
            found = set(floats)
        elif item in markers:
            found = {n for n in floats if markers[item](n) and is_trainable(n)}
        else:
            found = {n for n in floats if n == item or fnmatch.fnmatchcase(n, item)}
        if not found:
            prefix = {"adapters": "graphopt.adapter.", "gates": "graphopt.gate.", "clip": "graphopt.clip."}.get(item)
            hint = f": the model has no {prefix}* initializers" if prefix else ""
            if item == "clip":
                hint += " (apply clipped-softmax with parameters=layer or head first)"
            raise UsageError(f"trainable {item!r} selects no floating-point initializer of the model{hint}")
        chosen |= found
    return [n for n in floats if n in chosen]


class TorchExecutor(torch.nn.Module):
    """Run ``model`` with torch; ``forward(feeds) -> {output name: tensor}``, differentiable.

    ``trainable`` selects initializers to make ``nn.Parameter``s (see :func:`select_trainable`);
    the rest are buffers. An operator without a torch implementation raises
    :class:`~graphopt.errors.UnsupportedError` naming it, here, before anything runs.
    """

    def __init__(self, model: ir.Model, *, trainable: Trainable = None) -> None:
        super().__init__()
        self.model = model
        graph = model.graph
        opsets = {("" if d == "ai.onnx" else d): v for d, v in model.opset_imports.items()}
        self.trainable_names: tuple[str, ...] = tuple(select_trainable(model, trainable))
        slots: dict[str, int] = {}

        def slot(value: ir.Value) -> int:
            return slots.setdefault(value.name or f"<anonymous {id(value)}>", len(slots))

        self._state: list[tuple[int, str]] = []  # (slot, attribute holding the tensor)
        self._param_names: dict[str, str] = {}  # ONNX name -> attribute
        trainable_set = set(self.trainable_names)
        for i, (name, value) in enumerate(graph.initializers.items()):
            if value.const_value is None:
                raise InputError(f"executor: initializer {name!r} has no value")
            tensor = tensor_from_ir(value.const_value)
            attr = f"init_{i}"
            if name in trainable_set:
                self.register_parameter(attr, torch.nn.Parameter(tensor))
                self._param_names[name] = attr
            else:
                self.register_buffer(attr, tensor, persistent=False)
            self._state.append((slot(value), attr))
        self._inputs = [(v.name or "", slot(v), v.name in graph.initializers) for v in graph.inputs]
        self._steps: list[_Step] = []
        last_use: dict[int, int] = {}
        for node in graph:
            if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
                raise UnsupportedError(
                    f"executor: operator {node.op_type} (control flow with subgraphs) is not supported"
                )
            fn = lookup(node.domain, node.op_type)
            domain = "" if node.domain == "ai.onnx" else node.domain
            attrs = {k: _attribute(a) for k, a in node.attributes.items()}
            used = [i for i, out in enumerate(node.outputs) if out.uses() or out.is_graph_output()]
            ctx = OpContext(node.op_type, node.name or "", opsets.get(domain, 1), attrs, (used[-1] + 1) if used else 1)
            inputs = tuple(-1 if v is None else slot(v) for v in node.inputs)
            while inputs and inputs[-1] == -1:
                inputs = inputs[:-1]
            for s in inputs:
                if s >= 0:
                    last_use[s] = len(self._steps)
            if node.op_type == "Constant" and domain == "":
                attr = f"const_{len(self._state)}"
                self.register_buffer(attr, fn(ctx, []), persistent=False)
                self._state.append((slot(node.outputs[0]), attr))
                continue
            self._steps.append(_Step(fn, ctx, inputs, tuple(slot(o) for o in node.outputs), ()))
        self._outputs = [(v.name or "", slot(v)) for v in graph.outputs]
        keep = {s for _, s in self._outputs}
        frees: dict[int, list[int]] = {}
        for s, step_index in last_use.items():
            if s not in keep:
                frees.setdefault(step_index, []).append(s)
        self._steps = [dataclasses.replace(st, free=tuple(frees.get(i, ()))) for i, st in enumerate(self._steps)]
        self._slots = len(slots)

    @property
    def input_names(self) -> list[str]:
        """Inputs that must be fed (initializers listed as inputs are optional)."""
        return [name for name, _, optional in self._inputs if not optional]

    @property
    def output_names(self) -> list[str]:
        return [name for name, _ in self._outputs]

    def named_trainable_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        """``(ONNX initializer name, parameter)`` for every trainable initializer."""
        for name, attr in self._param_names.items():
            yield name, getattr(self, attr)

    def forward(self, feeds: Mapping[str, Any]) -> dict[str, torch.Tensor]:  # type: ignore[override]
        env: list[Any] = [None] * self._slots
        for s, attr in self._state:
            env[s] = getattr(self, attr)
        for name, s, optional in self._inputs:
            if name in feeds:
                env[s] = _as_tensor(feeds[name])
            elif not optional:
                raise InputError(f"executor: missing feed for input {name!r}")
        for step in self._steps:
            args = [env[i] if i >= 0 else None for i in step.inputs]
            try:
                out = step.fn(step.ctx, args)
            except UnsupportedError:
                raise
            except (RuntimeError, ValueError, IndexError, TypeError) as exc:
                raise InputError(
                    f"executor: {step.ctx.op_type} node {step.ctx.name!r} failed: {one_line(exc)}"
                ) from exc
            if isinstance(out, (tuple, list)):
                for s, value in zip(step.outputs, out):
                    env[s] = value
            else:
                env[step.outputs[0]] = out
            for s in step.free:
                env[s] = None
        return {name: env[s] for name, s in self._outputs}

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """``forward`` without gradients, as numpy arrays."""
        with torch.no_grad():
            return {k: v.detach().cpu().numpy() for k, v in self.forward(feeds).items()}

    def write_back(self, model: ir.Model | None = None) -> ir.Model:
        """Copy the trainable values into ``model``'s initializers (default: the model this executor
        was built from), in their original element types; return that model."""
        target = self.model if model is None else model
        for name, param in self.named_trainable_parameters():
            value = target.graph.initializers.get(name)
            if value is None or value.const_value is None:
                raise UsageError(f"write_back: the target model has no initializer {name!r}")
            dtype = value.const_value.dtype.numpy()
            array = param.detach().to(torch.float64 if dtype == np.float64 else torch.float32).cpu().numpy()
            if tuple(array.shape) != tuple(value.const_value.shape.numpy()):
                raise UsageError(f"write_back: initializer {name!r} has another shape in the target model")
            value.const_value = ir.Tensor(array.astype(dtype), name=name)
        return target


def _attribute(attr: ir.Attr) -> Any:
    value = attr.value
    if attr.type == ir.AttributeType.TENSOR:
        return tensor_from_ir(value)
    if attr.type in (ir.AttributeType.INTS, ir.AttributeType.FLOATS, ir.AttributeType.STRINGS):
        return list(value)
    return value


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    array = np.asarray(value)
    return torch.from_numpy(array if array.flags.c_contiguous else array.copy())
