"""torch modules to ONNX, verified with onnxruntime before they land.

:func:`export_module` exports any ``torch.nn.Module`` with the dynamo exporter (``torch.export``)
first and the TorchScript exporter as the fallback, with dynamic batch / sequence axes. The
exported graph is run in onnxruntime on the example inputs (and, when axes are dynamic, on a
second input of another batch / sequence size) and compared with torch's outputs before the
file is renamed into place.
torch and transformers are imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from graphopt._io import atomic_output, check_output_path, load_model, save_model
from graphopt.errors import CheckFailed, ExportError, GraphoptError, InputError, UnsupportedError, UsageError

__all__ = ["EXPORTERS", "DynamicAxes", "ExportResult", "export_module"]

logger = logging.getLogger(__name__)

EXPORTERS = ("auto", "dynamo", "torchscript")

DynamicAxes = dict[str, dict[int, str]]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """Where the model went, which exporter wrote it, and how far it is from torch.

    ``max_abs_error`` is the largest absolute difference between torch and onnxruntime over all
    outputs and verification inputs (``None`` when not verified); ``seconds`` is the wall time of
    export, save and verification.
    """

    path: Path
    exporter: str
    max_abs_error: float | None
    seconds: float
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# torch.nn.Module -> ONNX


def export_module(
    module: Any,
    example_inputs: tuple[Any, ...] | Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    opset: int = 18,
    exporter: str = "auto",
    verify: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    keep_parameters: bool = False,
) -> ExportResult:
    """Export ``module`` to ONNX at ``path`` and check it against torch with onnxruntime.

    ``example_inputs`` is a tuple of tensors (positional arguments; names come from
    ``input_names`` or the parameters of ``forward``) or a mapping of keyword arguments (names are
    its keys). ``dynamic_axes`` maps input (and, for the TorchScript exporter, output) names to
    ``{axis: dim_name}``; inputs sharing a dim name share a size. ``exporter`` is ``"dynamo"``,
    ``"torchscript"`` or ``"auto"`` (dynamo, then TorchScript if dynamo fails to export or to
    verify). Raises :class:`ExportError` when every exporter fails and :class:`CheckFailed` when
    an export ran but its outputs differ from torch's beyond ``atol + rtol * |expected|``.
    The module runs in eval mode during the export; its previous mode is restored afterwards.
    ``keep_parameters`` turns the exporters' graph optimisations off, which otherwise fold a zero
    bias away and merge parameters that happen to be equal (fresh LayerNorm scales): every parameter
    stays its own initializer, as training in the graph (``graphopt finetune``) needs. Only the dynamo
    exporter can: the TorchScript exporter merges equal parameters whatever its options.
    """
    torch = _torch()
    if exporter not in EXPORTERS:
        raise UsageError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"export_module expects a torch.nn.Module, got {type(module).__name__}")
    if opset < 13:
        raise UsageError(f"opset {opset} is too old; use 13 or newer")
    out = check_output_path(path)
    args, kwargs, names = _normalise_inputs(module, example_inputs, input_names)
    job = _Job(module, args, kwargs, names, list(output_names) if output_names else None,
               _check_dynamic_axes(dynamic_axes, names, output_names), opset, keep_parameters)
    if keep_parameters and exporter == "torchscript":
        raise UsageError("keep_parameters needs the dynamo exporter: the TorchScript exporter merges parameters "
                         "of equal value")
    order = ("dynamo",) if keep_parameters else ("dynamo", "torchscript") if exporter == "auto" else (exporter,)
    start = time.perf_counter()
    failures: list[tuple[str, GraphoptError]] = []
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            checks = _reference_outputs(job) if verify else []
            for name in order:
                try:
                    error, inputs, outputs = _export_once(job, name, out, checks, atol, rtol)
                except (ExportError, CheckFailed, InputError) as exc:
                    failures.append((name, exc))
                    if name != order[-1]:
                        logger.warning("the %s exporter failed (%s); trying %s", name, exc, order[-1])
                    continue
                logger.info("exported %s with the %s exporter", out, name)
                return ExportResult(out, name, error, time.perf_counter() - start, inputs, outputs)
    finally:
        module.train(was_training)
    for name, failure in failures:
        if isinstance(failure, CheckFailed):
            raise CheckFailed(f"{name} export: {failure}") from failure
    summary = "; ".join(f"{name}: {failure}" for name, failure in failures)
    raise ExportError(f"cannot export {type(module).__name__} to ONNX ({summary})")


@dataclasses.dataclass(frozen=True)
class _Job:
    """One export request, normalised: positional ``args`` or keyword ``kwargs`` named ``names``."""

    module: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    names: list[str]
    output_names: list[str] | None
    axes: DynamicAxes
    opset: int
    keep_parameters: bool = False


# (inputs as (args, kwargs), torch's outputs, a label for messages)
_Check = tuple[tuple[tuple[Any, ...], dict[str, Any]], list[Any], str]


def _reference_outputs(job: _Job) -> list[_Check]:
    """torch's outputs on the example inputs and, with dynamic axes, on resized inputs."""
    expected = _flatten_tensors(job.module(*job.args, **job.kwargs))
    if not expected:
        raise UsageError("the module returns no tensors; nothing to export")
    checks: list[_Check] = [((job.args, job.kwargs), expected, "example inputs")]
    second = _resized_inputs(job.args, job.kwargs, job.names, job.axes)
    if second is not None:
        checks.append((second, _flatten_tensors(job.module(*second[0], **second[1])), "resized inputs"))
    return checks


def _export_once(
    job: _Job, exporter: str, out: Path, checks: Sequence[_Check], atol: float, rtol: float
) -> tuple[float | None, tuple[str, ...], tuple[str, ...]]:
    """Export with one exporter into a temporary file, validate and verify it, then move it to
    ``out``; return (max abs error, input names, output names). Nothing is left on failure."""
    with atomic_output(out) as tmp:
        produced = tmp / out.name
        _run_exporter(exporter, job, produced)
        model = load_model(produced)
        errors = [_verify_export(produced, job.names, inputs, expected, atol, rtol, label=label)
                  for inputs, expected, label in checks]
    inputs = tuple(str(v.name) for v in model.graph.inputs if v.name not in model.graph.initializers)
    return max(errors) if errors else None, inputs, tuple(str(v.name) for v in model.graph.outputs)


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise UsageError("torch is not installed: pip install 'graphopt[torch]'") from exc
    return torch


def _normalise_inputs(
    module: Any, example_inputs: Any, input_names: Sequence[str] | None
) -> tuple[tuple[Any, ...], dict[str, Any], list[str]]:
    torch = _torch()
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if isinstance(example_inputs, Mapping):
        kwargs = dict(example_inputs)
        if input_names is not None and list(input_names) != list(kwargs):
            raise UsageError("input_names must be left out (or equal the keys) when example_inputs "
                             "is a mapping")
        # Both exporters order keyword inputs as forward() declares them.
        params = list(inspect.signature(module.forward).parameters)
        position = {name: i for i, name in enumerate(params)}
        kwargs = dict(sorted(kwargs.items(), key=lambda kv: position.get(kv[0], len(params))))
        args: tuple[Any, ...] = ()
        names = list(kwargs)
        values = list(kwargs.values())
    elif isinstance(example_inputs, (tuple, list)):
        args, kwargs = tuple(example_inputs), {}
        values = list(args)
        if input_names is None:
            params = [
                p.name for p in inspect.signature(module.forward).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
            if len(params) < len(args):
                params = [f"input_{i}" for i in range(len(args))]
            names = params[: len(args)]
        else:
            names = list(input_names)
            if len(names) != len(args):
                raise UsageError(f"{len(names)} input_names for {len(args)} example inputs")
    else:
        raise UsageError("example_inputs must be a tuple of tensors or a mapping of name -> tensor")
    if not values:
        raise UsageError("example_inputs is empty")
    for name, value in zip(names, values):
        if not isinstance(value, torch.Tensor):
            raise UsageError(f"example input {name!r} is a {type(value).__name__}, expected a torch.Tensor")
    if len(set(names)) != len(names):
        raise UsageError(f"input names must be unique: {names}")
    return args, kwargs, names


def _check_dynamic_axes(
    dynamic_axes: Mapping[str, Mapping[int, str]] | None,
    names: Sequence[str],
    output_names: Sequence[str] | None,
) -> DynamicAxes:
    axes: DynamicAxes = {}
    known = set(names) | set(output_names or ())
    for key, dims in (dynamic_axes or {}).items():
        if key not in known:
            raise UsageError(f"dynamic_axes names {key!r}, which is not an input or output name "
                             f"(inputs: {', '.join(names)})")
        if not isinstance(dims, Mapping):
            raise UsageError(f"dynamic_axes[{key!r}] must map axis -> dim name, e.g. {{0: 'batch'}}")
        axes[key] = {int(axis): str(dim) for axis, dim in dims.items()}
    return axes


def _flatten_tensors(value: Any) -> list[Any]:
    torch = _torch()
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _flatten_tensors(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _flatten_tensors(v)]
    return []


def _resized_inputs(
    args: tuple[Any, ...], kwargs: dict[str, Any], names: Sequence[str], axes: DynamicAxes
) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """The example inputs with every dynamic dim changed in size (by repeating or truncating
    the example along that axis, which keeps ids, masks and pixel values in range)."""
    values = list(args) + list(kwargs.values())
    sizes: dict[str, int] = {}
    for name, value in zip(names, values):
        for axis, dim in axes.get(name, {}).items():
            if axis >= value.ndim:
                raise UsageError(f"dynamic_axes[{name!r}] names axis {axis}, "
                                 f"but the input has rank {value.ndim}")
            size = int(value.shape[axis])
            sizes.setdefault(dim, size - 1 if size >= 4 else size + 1)
    if not sizes:
        return None
    resized = []
    for name, value in zip(names, values):
        for axis, dim in axes.get(name, {}).items():
            new, old = sizes[dim], int(value.shape[axis])
            if new > old:
                reps = [1] * value.ndim
                reps[axis] = -(-new // old)
                value = value.repeat(*reps)
            value = value.narrow(axis, 0, new).contiguous()
        resized.append(value)
    return tuple(resized[: len(args)]), dict(zip(kwargs, resized[len(args):]))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep the exporters' warnings, graph dumps and progress lines off the console (logged at DEBUG)."""
    noisy = logging.getLogger("torch")
    level = noisy.level
    captured = io.StringIO()
    try:
        noisy.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(captured), \
                contextlib.redirect_stderr(captured):
            warnings.simplefilter("ignore")
            yield
    finally:
        noisy.setLevel(level)
        if captured.getvalue().strip():
            logger.debug("exporter output:\n%s", captured.getvalue())


def _run_exporter(exporter: str, job: _Job, target: Path) -> None:
    """Run one exporter and write its model, weights inline (below 1 GiB), to ``target``."""
    torch = _torch()
    module, args, kwargs, names, outputs, axes = (
        job.module, job.args, job.kwargs, job.names, job.output_names, job.axes
    )
    try:
        if exporter == "dynamo":
            if kwargs:
                shapes: Any = {name: axes.get(name) or None for name in kwargs}
            else:
                shapes = tuple(axes.get(name) or None for name in names)
            with _quiet():
                program = torch.onnx.export(
                    module, args, None, kwargs=kwargs or None, dynamo=True,
                    input_names=None if kwargs else list(names), output_names=outputs,
                    dynamic_shapes=shapes if axes else None, opset_version=job.opset,
                    optimize=not job.keep_parameters, verbose=False,
                )
            if program is None:
                raise ExportError("the dynamo exporter returned no program")
            model = program.model
            got = [v.name for v in model.graph.inputs]
            if not set(got) <= set(names):
                raise ExportError(f"dynamo named the inputs {got}, expected {list(names)}")
            # ONNXProgram.save(external_data=True) is torch's default; graphopt keeps weights inline.
            save_model(model, target)
        else:
            with tempfile.TemporaryDirectory(prefix="graphopt-export-") as scratch:
                raw = Path(scratch) / target.name
                with _quiet():
                    torch.onnx.export(
                        module, args, str(raw), kwargs=kwargs or None, dynamo=False,
                        input_names=list(names), output_names=outputs,
                        dynamic_axes={k: dict(v) for k, v in axes.items()} or None,
                        opset_version=job.opset, do_constant_folding=True,
                    )
                save_model(load_model(raw, validate=False), target)
    except GraphoptError:
        raise
    except Exception as exc:  # exporters raise anything from torch._dynamo errors to RuntimeError
        raise ExportError(_root_cause(exc)) from exc


def _verify_export(
    path: Path,
    names: Sequence[str],
    inputs: tuple[tuple[Any, ...], dict[str, Any]],
    expected: Sequence[Any],
    atol: float,
    rtol: float,
    *,
    label: str = "example inputs",
) -> float:
    """Run the file in onnxruntime on ``inputs``; return the max abs error or raise CheckFailed."""
    from graphopt.runtime import make_session
    from graphopt.verify import compare_outputs

    args, kwargs = inputs
    values = {name: _to_numpy(v) for name, v in zip(names, list(args) + list(kwargs.values()))}
    try:
        session = make_session(path)
    except (InputError, UnsupportedError) as exc:
        raise ExportError(f"onnxruntime cannot load the export: {exc}") from exc
    wanted = [i.name for i in session.get_inputs()]
    missing = [n for n in wanted if n not in values]
    if missing:
        raise ExportError(f"the export has inputs {missing} that are not among the example inputs "
                          f"{list(names)}")
    outputs = [o.name for o in session.get_outputs()]
    if len(outputs) != len(expected):
        raise CheckFailed(f"the export has {len(outputs)} outputs, torch returned {len(expected)}")
    try:
        actual = session.run(outputs, {n: values[n] for n in wanted})
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ExportError(f"onnxruntime cannot run the export on the {label}: {_first_line(exc)}") from exc
    comparisons = compare_outputs([_to_numpy(t) for t in expected], actual, outputs, atol, rtol)
    failed = [c for c in comparisons if not c.passed]
    if failed:
        worst = failed[0]
        raise CheckFailed(
            f"the export differs from torch on the {label}: output {worst.name!r} max abs error "
            f"{worst.max_abs:.3g} (atol {atol:g}, rtol {rtol:g}){' ' + worst.note if worst.note else ''}"
        )
    return max((c.max_abs for c in comparisons), default=0.0)


def _to_numpy(tensor: Any) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().cpu().numpy())


def _root_cause(exc: BaseException) -> str:
    """``Type: first line`` of the innermost exception: the exporters wrap the real reason in
    several layers of generic advice."""
    inner = exc
    seen = {id(inner)}
    while True:
        nxt = inner.__cause__ or inner.__context__
        if nxt is None or id(nxt) in seen:
            break
        seen.add(id(nxt))
        inner = nxt
    return f"{type(inner).__name__}: {_first_line(inner)}"


def _first_line(exc: BaseException) -> str:
    for line in _ANSI.sub("", str(exc)).splitlines():
        if line.strip() and not line.strip().startswith("#"):
            return line.strip()[:300]
    return type(exc).__name__
