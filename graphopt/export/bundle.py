"""Deployable bundles: a folder written atomically with the model, its manifest, its compatibility
report and a minimal runnable example.

Layout of ``DIR``::

    model.onnx (+ model.onnx.data) | model.ort
    manifest.json          graphopt version, target, source, passes and settings, signature,
                           verification and benchmark results, files with sha256
    compatibility.json     per-node report (graphopt.export.compatibility)
    run_example.py         loads the model with onnxruntime and runs it on random or given feeds

The folder is assembled in a hidden staging folder beside ``DIR`` and renamed into place only
when everything succeeded; on failure nothing is left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx_ir as ir

from graphopt.errors import InputError

__all__ = [
    "COMPATIBILITY_FILE",
    "EXAMPLE_FILE",
    "MANIFEST_FILE",
    "check_output_dir",
    "file_record",
    "signature",
    "staged_directory",
    "write_example",
    "write_json",
]

MANIFEST_FILE = "manifest.json"
COMPATIBILITY_FILE = "compatibility.json"
EXAMPLE_FILE = "run_example.py"


def check_output_dir(
    output: str | os.PathLike[str], *, force: bool = False, inputs: tuple[str | os.PathLike[str], ...] = ()
) -> Path:
    """Refuse a bundle folder that is a file, non-empty (unless ``force``), holds one of ``inputs``
    (even with ``force``) or lies in a missing/unwritable folder."""
    out = Path(output)
    for source in inputs:
        if out.resolve() in Path(source).resolve().parents:
            raise InputError(f"{out}: refusing to replace the folder that holds the input model {source}")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InputError(f"{out}: folder exists and is not empty; choose another or pass --force to replace it")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise InputError(f"{out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{out}: folder {parent} is not writable")
    return out


@contextlib.contextmanager
def staged_directory(
    output: str | os.PathLike[str], *, force: bool = False, inputs: tuple[str | os.PathLike[str], ...] = ()
) -> Iterator[Path]:
    """Yield an empty staging folder beside ``output``; on success it replaces ``output`` (an
    existing non-empty one only with ``force``), on failure it is removed."""
    out = check_output_dir(output, force=force, inputs=inputs)
    parent = out.resolve().parent
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would make the bundle private
    try:
        yield staging
        _replace(staging, out.resolve())
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace(staging: Path, out: Path) -> None:
    if not out.exists():
        os.rename(staging, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.rmdir(old)
    os.rename(out, old)
    try:
        os.rename(staging, out)
    except OSError:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_example(directory: Path) -> Path:
    """Write ``run_example.py`` (needs only numpy and onnxruntime; reads ``manifest.json``)."""
    path = directory / EXAMPLE_FILE
    path.write_text(_EXAMPLE)
    return path


def file_record(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def signature(model: ir.Model) -> dict[str, list[dict[str, Any]]]:
    """Inputs and outputs: name, element type and shape (ints for static dims, names for dynamic ones)."""
    from graphopt.feeds import input_specs

    highs = {s.name: s.int_high for s in input_specs(model)}

    def describe(value: ir.Value) -> dict[str, Any]:
        shape = None
        if value.shape is not None:
            shape = [d if isinstance(d, int) else (d.value or None) for d in value.shape]
        entry: dict[str, Any] = {"name": value.name, "dtype": _numpy_name(value.dtype),
                                 "shape": shape}
        if highs.get(value.name or ""):
            entry["int_high"] = highs[value.name or ""]
        return entry

    inputs = [describe(v) for v in model.graph.inputs if v.name not in model.graph.initializers]
    return {"inputs": inputs, "outputs": [describe(v) for v in model.graph.outputs]}


def _numpy_name(dtype: ir.DataType | None) -> str | None:
    if dtype is None:
        return None
    try:
        return str(dtype.numpy().name)
    except (TypeError, ValueError):
        return dtype.name.lower()


_EXAMPLE = '''"""Run this bundle's model with onnxruntime (needs numpy and onnxruntime only).

    python run_example.py                      # random feeds from the signature in manifest.json
    python run_example.py --inputs feeds.npz   # .npz keyed by input name
    python run_example.py --provider CUDAExecutionProvider

Without --provider, the target's provider and its fallbacks (manifest.json) are tried in order,
with the target's provider options; providers this onnxruntime lacks are skipped.
"""

import argparse
import json
import pathlib
import sys

import numpy as np
import onnxruntime as ort

HERE = pathlib.Path(__file__).resolve().parent


def random_feeds(manifest, batch, sequence, seed):
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in manifest["signature"]["inputs"]:
        dims = spec["shape"] or []
        shape = [d if isinstance(d, int) and d > 0 else (batch if axis == 0 else sequence)
                 for axis, d in enumerate(dims)]
        dtype = np.dtype(spec["dtype"])
        name = spec["name"].lower()
        if np.issubdtype(dtype, np.integer):
            if "mask" in name:
                feeds[spec["name"]] = np.ones(shape, dtype=dtype)
            elif "type" in name or "segment" in name:
                feeds[spec["name"]] = np.zeros(shape, dtype=dtype)
            else:
                feeds[spec["name"]] = rng.integers(0, spec.get("int_high") or 2, size=shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[spec["name"]] = rng.random(shape) < 0.5
        else:
            feeds[spec["name"]] = rng.standard_normal(shape).astype(dtype)
    return feeds


def main(argv=None):
    manifest = json.loads((HERE / "manifest.json").read_text())
    parser = argparse.ArgumentParser(description="Run the exported model once and print its outputs.")
    parser.add_argument("--inputs", help=".npz feeds keyed by input name")
    parser.add_argument("--provider", help="run on this provider only (then CPU)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--sequence", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    target = manifest["target"]
    wanted = [args.provider] if args.provider else [target["provider"] or "CPUExecutionProvider",
                                                    *target.get("fallbacks", [])]
    available = ort.get_available_providers()
    providers = [p for p in wanted if p in available]
    missing = [p for p in wanted if p not in available]
    if missing:
        print(f"note: {', '.join(missing)} not available here; using {', '.join(providers) or 'CPU'}", file=sys.stderr)
    if "CPUExecutionProvider" not in providers:
        providers.append("CPUExecutionProvider")
    options = target.get("provider_options") or {}
    session = ort.InferenceSession(str(HERE / manifest["model"]["file"]),
                                   providers=[(p, options.get(p, {})) for p in providers])
    if args.inputs:
        with np.load(args.inputs) as data:
            feeds = {name: data[name] for name in data.files}
    else:
        feeds = random_feeds(manifest, args.batch, args.sequence, args.seed)
    outputs = session.run(None, feeds)
    print(f"providers: {', '.join(session.get_providers())}")
    for meta, value in zip(session.get_outputs(), outputs):
        flat = np.asarray(value).ravel()
        print(f"{meta.name}: shape {list(value.shape)} dtype {value.dtype} first values {flat[:4].tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''
