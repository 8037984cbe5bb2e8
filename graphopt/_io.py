"""Loading, validating and atomically saving ONNX models (with external data above 2 GB)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from graphopt.errors import InputError, InvalidModelError, UnsupportedError, one_line

__all__ = [
    "EXTERNAL_DATA_THRESHOLD",
    "atomic_output",
    "check_output_path",
    "load_model",
    "model_bytes",
    "release_external_data",
    "save_model",
    "validate_model",
]

# Protobuf cannot serialise a message over 2 GiB; stay well below it.
EXTERNAL_DATA_THRESHOLD = 1 << 30


def load_model(path: str | os.PathLike[str], *, validate: bool = True) -> ir.Model:
    """Load an ONNX file (external data stays lazy) and check that it is a valid graph."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if not p.is_file():
        raise InputError(f"{p}: not a file")
    if p.stat().st_size == 0:
        raise InvalidModelError(f"{p}: empty file, not an ONNX model")
    try:
        model = ir.load(p)
    except (DecodeError, ValueError, RuntimeError, TypeError, KeyError, IndexError, UnicodeDecodeError) as exc:
        raise InvalidModelError(f"{p}: not a readable ONNX model ({one_line(exc)})") from exc
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror or exc})") from exc
    if validate:
        validate_model(model, source=str(p), path=p)
    return model


def validate_model(model: ir.Model, *, source: str = "model", path: str | os.PathLike[str] | None = None) -> None:
    """Raise :class:`InvalidModelError` unless the model is a well-formed ONNX graph.

    Nodes are put in topological order in memory (ONNX requires it; some exporters do not); the
    file the model came from is never touched.
    """
    graph = model.graph
    if not graph.outputs:
        raise InvalidModelError(f"{source}: the graph has no outputs (is this an ONNX model?)")
    known = {v.name for v in graph.inputs} | set(graph.initializers)
    for node in graph:
        for value in node.inputs:
            if value is None or value.producer() is not None or value.name in known:
                continue
            raise InvalidModelError(
                f"{source}: node {node.name or node.op_type!r} reads {value.name!r}, "
                "which is neither a graph input, an initializer nor a node output"
            )
    try:
        graph.sort()
    except Exception as exc:  # onnx_ir raises a plain ValueError on cycles
        raise InvalidModelError(f"{source}: the graph is not a DAG ({one_line(exc)})") from exc
    external = any(isinstance(v.const_value, ir.ExternalTensor) for v in graph.initializers.values())
    checked: onnx.ModelProto | str | None = None
    if path is not None:
        # From the file: faster than serialising, and external data resolves next to the file.
        checked = os.fspath(path)
    elif not external and model_bytes(model) < EXTERNAL_DATA_THRESHOLD:
        checked = ir.serde.serialize_model(model)
    if checked is not None:
        try:
            try:
                onnx.checker.check_model(checked)
            except onnx.checker.ValidationError as exc:
                # The file's node order may be the only fault; the graph is sorted in memory now.
                if "topologically sorted" not in str(exc) or external:
                    raise
                onnx.checker.check_model(ir.serde.serialize_model(model))
        except onnx.checker.ValidationError as exc:
            message = one_line(exc)
            if "No Op registered" in message or "No opset import" in message:
                raise UnsupportedError(f"{source}: {message}") from exc
            raise InvalidModelError(f"{source}: invalid ONNX model ({message})") from exc


def model_bytes(model: ir.Model) -> int:
    """Total bytes of the model's initializers (the bulk of any real model)."""
    total = 0
    for value in model.graph.initializers.values():
        if value.const_value is not None:
            total += value.const_value.nbytes
    return total


def release_external_data(*models: ir.Model) -> None:
    """Unmap the external-data tensors read so far (each is read again on demand), so that their
    pages leave the resident set before onnxruntime loads its own copy of the weights."""
    for model in models:
        for value in model.graph.initializers.values():
            if isinstance(value.const_value, ir.ExternalTensor):
                with contextlib.suppress(BufferError):  # a view of the mapping is still alive
                    value.const_value.release()


def check_output_path(output: str | os.PathLike[str], *inputs: str | os.PathLike[str]) -> Path:
    """Refuse an output that would overwrite an input or land in a missing/unwritable folder."""
    out = Path(output)
    for src in inputs:
        if Path(src).exists() and out.exists() and os.path.samefile(src, out):
            raise InputError(f"{out}: refusing to overwrite the input model; choose another output path")
        if Path(src).resolve() == out.resolve():
            raise InputError(f"{out}: refusing to overwrite the input model; choose another output path")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{out}: folder {parent} is not writable")
    if out.is_dir():
        raise InputError(f"{out}: is a folder, expected a file path")
    return out


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder in ``path``'s folder; files written there named like ``path`` (or
    ``path``'s name plus a suffix) are renamed into place only if the block succeeds."""
    out = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent or "."))
    try:
        yield tmp
        # Companion files (external data) first, the model last: a reader never sees a model
        # whose data is missing. The folder is locked meanwhile, so that two writers of the same
        # path cannot leave one's model beside the other's data.
        produced = sorted(tmp.iterdir(), key=lambda f: f.name == out.name)
        with _folder_lock(out.parent):
            for item in produced:
                os.replace(item, out.parent / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``folder`` (POSIX ``flock``; a no-op where unavailable)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    fd = os.open(folder if str(folder) else ".", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def save_model(
    model: ir.Model,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
) -> Path:
    """Write ``model`` to ``path`` atomically.

    ``external_data=None`` stores weights in ``<name>.data`` beside the model only when they exceed
    :data:`EXTERNAL_DATA_THRESHOLD` (protobuf's 2 GiB limit would otherwise be hit).
    """
    out = Path(path)
    use_external = model_bytes(model) >= EXTERNAL_DATA_THRESHOLD if external_data is None else external_data
    try:
        with atomic_output(out) as tmp:
            target = tmp / out.name
            if use_external:
                ir.save(model, target, external_data=f"{out.name}.data", size_threshold_bytes=1024)
            else:
                # Tensors still lazily read from another file's external data would otherwise be
                # written as references to a path that does not exist beside the new model.
                ir.external_data.load_to_model(model)
                ir.save(model, target)
    except OSError as exc:
        raise InputError(f"{out}: cannot write ({exc.strerror or exc})") from exc
    return out
