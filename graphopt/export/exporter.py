"""``export_model``: lower a model for a target, check it, verify it, and write the bundle.

Source model -> :func:`~graphopt.export.lowering.lower_model` -> compatibility report ->
verification against the source in onnxruntime on CPU (where CPU can run the lowered graph) ->
optional latency ratio -> bundle (:mod:`graphopt.export.bundle`), all in a staging folder that
replaces ``DIR`` only when every step succeeded.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import onnx_ir as ir

from graphopt._io import EXTERNAL_DATA_THRESHOLD, load_model
from graphopt.errors import CheckFailed, GraphoptError, InputError, UnsupportedError, UsageError, one_line
from graphopt.export import bundle
from graphopt.export.compatibility import CompatibilityReport, check_compatibility
from graphopt.export.lowering import lower_model
from graphopt.export.targets import TargetSpec, parse_target
from graphopt.feeds import Feeds, input_specs, synthesize_feeds
from graphopt.provenance import read_provenance
from graphopt.runtime import make_session

__all__ = ["ExportResult", "export_model"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote (``directory``) and the manifest it wrote there."""

    directory: Path
    spec: TargetSpec
    manifest: dict[str, Any]
    compatibility: CompatibilityReport


def export_model(
    source: str | os.PathLike[str],
    target: str | TargetSpec,
    output_dir: str | os.PathLike[str],
    *,
    feeds: Mapping[str, Any] | None = None,
    original: ir.Model | None = None,
    force: bool = False,
    verify: bool = True,
    bench: bool = False,
    threads: int | None = None,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    progress: Callable[[str], None] | None = None,
    on_device: str = "auto",
) -> ExportResult:
    """Export the model at ``source`` for ``target`` into the bundle folder ``output_dir``.

    ``feeds`` (samples on axis 0) drive verification and the latency ratio; by default they are
    synthesised from the signature. Verification runs on onnxruntime's CPU provider with the
    target's tolerances. A source onnxruntime cannot run, or a bundle for a CPU target that it
    cannot run, raises :class:`InputError` / :class:`UnsupportedError`; for GPU targets a lowered
    graph the CPU cannot run is recorded as not verified (with the reason). A verification that
    runs and fails raises :class:`CheckFailed`. Nothing is written on any error. ``original`` is
    the model as loaded from ``source``, when the caller has it.

    ``on_device`` concerns GPU targets: ``"auto"`` runs verification, node placement and the
    latency ratio on the target's provider when this machine has it usable (else on CPU, saying
    why in the manifest's ``device`` entry), ``"require"`` raises :class:`UnsupportedError` when it
    has not, ``"off"`` never uses it.
    """
    spec = parse_target(target) if isinstance(target, str) else target
    if threads is not None and threads < 1:
        raise UsageError("threads must be at least 1")
    device = _device_provider(spec, on_device)
    bundle.check_output_dir(output_dir, force=force, inputs=(source,))
    model = original if original is not None else load_model(source)
    inputs: Feeds = {}
    if feeds is not None:
        inputs = dict(feeds)
    elif verify or bench:
        inputs = synthesize_feeds(input_specs(model))
    say = progress or (lambda _: None)
    # A source onnxruntime rejects is bad input: find out before lowering anything.
    reference = make_session(source, optimization="basic") if verify else None
    with bundle.staged_directory(output_dir, force=force, inputs=(source,)) as staging:
        say(f"lowering for {spec.name}")
        lowered = lower_model(model, spec, staging / ".work", external_data_threshold=external_data_threshold)
        files = []
        for path in lowered.files:
            files.append(staging / path.name)
            os.replace(path, files[-1])
        shutil.rmtree(staging / ".work")
        say("checking compatibility")
        compatibility = check_compatibility(lowered.model, spec)
        verification = (
            _verify(reference, files[0], inputs, spec, model, device["provider"] if device["usable"] else None)
            if reference is not None else {"ran": False, "reason": "--no-verify"}
        )
        if verification.get("ran") and not verification["passed"]:
            raise CheckFailed(
                f"the exported model differs from the source beyond tolerance (max abs error "
                f"{verification['max_abs']:.3g}, atol {spec.atol:g}, rtol {spec.rtol:g}); nothing written"
            )
        if device["usable"]:
            say(f"reading node placement on {device['provider']}")
            sample = inputs or synthesize_feeds(input_specs(model))
            device["placement"] = _placement(files[0], device["provider"], sample, model)
        run_on = device["provider"] if device["usable"] else None
        benchmark = _bench(source, files[0], inputs, threads, say, run_on) if bench else None
        manifest = _manifest(source, spec, model, lowered, files, compatibility, verification, benchmark)
        manifest["device"] = device
        bundle.write_json(staging / bundle.MANIFEST_FILE, manifest)
        bundle.write_json(staging / bundle.COMPATIBILITY_FILE, compatibility.to_dict())
        bundle.write_example(staging)
    return ExportResult(Path(output_dir), spec, manifest, compatibility)


def _device_provider(spec: TargetSpec, on_device: str) -> dict[str, Any]:
    """Whether the bundle of a GPU target is checked on its own provider here (``usable``), or why not."""
    from graphopt.export.on_device import provider_problem

    if on_device not in ("auto", "require", "off"):
        raise UsageError(f"on_device must be auto, require or off, not {on_device!r}")
    provider = spec.provider
    if provider in (None, "CPUExecutionProvider"):
        return {"provider": provider, "usable": False, "reason": "CPU target"}
    if on_device == "off":
        return {"provider": provider, "usable": False, "reason": "not asked (--on-device off)"}
    problem = provider_problem(provider)
    if problem is not None and on_device == "require":
        raise UnsupportedError(f"cannot check the bundle on its target here: {problem}")
    return {"provider": provider, "usable": problem is None, "reason": problem or "ran on the target's provider"}


def _placement(exported: Path, provider: str, feeds: Feeds, original: ir.Model) -> dict[str, Any]:
    from graphopt.export.on_device import node_placement
    from graphopt.feeds import iter_batches, validate_feeds

    specs = input_specs(original)
    first = next(iter(iter_batches(validate_feeds(feeds, specs), specs)))
    return node_placement(exported, provider, first)


def _verify(
    reference: Any, exported: Path, feeds: Feeds, spec: TargetSpec, original: ir.Model, provider: str | None = None
) -> dict[str, Any]:
    """Compare the exported model with the source (``reference``, a session at onnxruntime's ``basic`` level).

    The reference avoids onnxruntime's extended fusions, which change results on their own (blocked
    QDQ MatMuls become MatMulNBits with int8 activations). The exported model runs as deployed
    (onnxruntime defaults) for CPU targets and on the target's ``provider`` when given, and at
    ``basic`` on CPU for the others, whose CPU run only checks the graph's semantics.
    """
    import numpy as np

    from graphopt.feeds import iter_batches, validate_feeds
    from graphopt.verify import compare_outputs

    cpu_target = spec.provider in (None, "CPUExecutionProvider")
    level = "all" if spec.provider == "CPUExecutionProvider" or provider else "basic"
    try:
        candidate = make_session(exported, optimization=level, provider=provider)
    except GraphoptError as exc:
        if cpu_target:  # never ship a CPU bundle that was not run
            raise UnsupportedError(f"onnxruntime on CPU cannot load the exported model: {exc}") from exc
        logger.warning("export: verification not run: %s", exc)
        return {"ran": False, "reason": f"onnxruntime on CPU cannot load the exported model here: {exc}"}
    names = [o.name for o in reference.get_outputs()]
    if sorted(names) != sorted(o.name for o in candidate.get_outputs()):
        raise CheckFailed(f"the exported model's outputs differ from the source's: {names}")
    casts = {i.name: _numpy_type(i.type) for i in candidate.get_inputs()}
    specs = input_specs(original)
    comparisons = []
    for batch in iter_batches(validate_feeds(feeds, specs), specs):
        try:
            expected = reference.run(names, batch)
        except Exception as exc:  # onnxruntime raises its own types at run time
            raise InputError(f"onnxruntime could not run the source model on these feeds: {one_line(exc)}") from exc
        try:
            actual = candidate.run(names, {k: v.astype(casts.get(k) or v.dtype) for k, v in batch.items()})
        except Exception as exc:  # onnxruntime raises its own types at run time
            if cpu_target:
                raise UnsupportedError(f"onnxruntime on CPU failed to run the exported model: {one_line(exc)}") from exc
            return {"ran": False, "reason": f"onnxruntime on CPU failed to run the exported model: {one_line(exc)}"}
        actual = [np.asarray(a).astype(np.asarray(e).dtype) for a, e in zip(actual, expected, strict=True)]
        comparisons.append(compare_outputs(expected, actual, names, spec.atol, spec.rtol))
    outputs = []
    for per_output in zip(*comparisons):
        outputs.append({
            "name": per_output[0].name,
            "max_abs": max(c.max_abs for c in per_output),
            "max_rel": max(c.max_rel for c in per_output),
            "cosine": min(c.cosine for c in per_output),
            "passed": all(c.passed for c in per_output),
        })
    data: dict[str, Any] = {
        "ran": True,
        "passed": all(o["passed"] for o in outputs),
        "provider": provider or "CPUExecutionProvider",
        "reference": "source model, onnxruntime basic optimisation on CPU",
        "optimization": level,
        "atol": spec.atol,
        "rtol": spec.rtol,
        "batches": len(comparisons),
        "max_abs": max((o["max_abs"] for o in outputs), default=0.0),
        "min_cosine": min((o["cosine"] for o in outputs), default=1.0),
        "outputs": outputs,
    }
    if spec.provider not in (None, "CPUExecutionProvider") and provider is None:
        data["note"] = (
            f"run on CPU; {spec.provider} is checked structurally only"
            + ("; the CPU provider computes float16 nodes it has no kernel for in float32" if spec.float16 else "")
        )
    return data


def _numpy_type(ort_type: str) -> Any:
    import numpy as np

    names = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}
    return names.get(ort_type)


def _bench(
    source: Any, exported: Path, feeds: Feeds, threads: int | None, say: Callable[[str], None],
    provider: str | None = None,
) -> dict[str, Any]:
    """Latency of the bundle over the source's, both on ``provider`` (default CPU), alternating in one worker."""
    from graphopt.bench import benchmark

    say(f"measuring latency on {provider or 'CPU'}")
    try:
        report = benchmark([Path(source), exported], feeds, threads=threads, provider=provider, warmup=3, runs=15)
    except GraphoptError as exc:  # e.g. the CPU cannot run a graph lowered for a GPU
        logger.warning("export: latency not measured: %s", exc)
        return {"error": str(exc)}
    ratio = report.ratio
    assert ratio is not None
    return {
        "latency_ratio": {"median": ratio.median, "p10": ratio.p10, "p90": ratio.p90},
        "source_median_ms": report.models[0].median_ms,
        "exported_median_ms": report.models[1].median_ms,
        "rounds": report.rounds,
        "threads": threads,
        "provider": provider or "CPUExecutionProvider",
        "onnxruntime": report.onnxruntime,
    }


def _manifest(
    source: Any,
    spec: TargetSpec,
    original: ir.Model,
    lowered: Any,
    files: list[Path],
    compatibility: CompatibilityReport,
    verification: dict[str, Any],
    benchmark: dict[str, Any] | None,
) -> dict[str, Any]:
    import onnxruntime

    from graphopt import __version__

    source_path = Path(source)
    steps = [dataclasses.asdict(step) for step in lowered.steps]
    return {
        "graphopt": __version__,
        "onnxruntime": onnxruntime.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "target": spec.to_dict(),
        "source": {**bundle.file_record(source_path), "path": str(source_path),
                   "nodes": sum(1 for _ in original.graph.all_nodes())},
        "model": {
            "file": files[0].name,
            "files": [bundle.file_record(path) for path in files],
            "nodes": sum(1 for _ in lowered.model.graph.all_nodes()),
            "opset_imports": dict(lowered.model.opset_imports),
        },
        "passes": read_provenance(lowered.model),
        "lowering": steps,
        "signature": bundle.signature(lowered.model),
        "compatibility": {k: v for k, v in compatibility.to_dict().items() if k not in ("nodes", "problems")},
        "verification": verification,
        "benchmark": benchmark,
    }
