"""Quantization facade: named schemes, calibration data, accuracy-aware fallback, metadata.

``quantize(model, scheme, calib, **options) -> QuantizeResult`` turns a scheme name into recipe
steps (passes of :mod:`graphopt.rewrites`), runs them with the calibration feeds in memory and
records the scheme and its settings in ``metadata_props["graphopt.quantization"]``. With
``target_fidelity``, the last ``holdout`` fraction of the calibration samples is held out; when the
fully quantized model's fidelity (the smallest, over outputs, mean per-sample cosine to the float
model on the held-out samples) is below the target, a sensitivity analysis quantizes each site
(MatMul / Gemm) alone and ranks the sites by the fidelity they cost; the fewest most sensitive
sites are then kept in float (binary search on their number) until the target is met.

Schemes are registered with :func:`register_scheme`; other pass families plug in the same way.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from graphopt.errors import CheckFailed, InputError, UsageError
from graphopt.passes import GraphoptPass, get_pass_class
from graphopt.recipes import Recipe, RecipeStep

__all__ = [
    "QUANTIZATION_KEY",
    "SCHEMES",
    "QuantizeOptions",
    "QuantizeResult",
    "Scheme",
    "feeds_from_text",
    "fidelity",
    "quantize",
    "register_scheme",
    "scheme_recipe",
]

logger = logging.getLogger(__name__)

QUANTIZATION_KEY = "graphopt.quantization"


@dataclasses.dataclass(frozen=True)
class QuantizeOptions:
    """What the user asks for; each scheme reads the options it understands."""

    method: str = "percentile"
    percentile: float = 99.999
    activation_type: str = "uint8"
    smooth_alpha: float | None = None
    quantize_bmm: bool = False
    per_channel: bool = True
    embeddings: bool = True
    exclude: tuple[str, ...] = ()
    target_fidelity: float | None = None
    holdout: float = 0.25
    batch_size: int = 8
    calib_path: str = ""

    def validate(self) -> None:
        if self.target_fidelity is not None and not 0 < self.target_fidelity <= 1:
            raise UsageError(f"target fidelity must lie in (0, 1], not {self.target_fidelity}")
        if self.smooth_alpha is not None and not 0 <= self.smooth_alpha <= 1:
            raise UsageError(f"smooth alpha must lie in [0, 1], not {self.smooth_alpha}")
        if not 0 < self.holdout < 1:
            raise UsageError(f"holdout must lie in (0, 1), not {self.holdout}")


@dataclasses.dataclass(frozen=True)
class Scheme:
    """A named quantization scheme: the recipe steps it runs for given options.

    ``fallback_step`` names the step whose ``exclude`` setting the accuracy fallback fills
    (``None``: the scheme has no per-site fallback).
    """

    name: str
    description: str
    steps: Callable[[QuantizeOptions], list[RecipeStep]]
    needs_calibration: bool = False
    fallback_step: str | None = None


SCHEMES: dict[str, Scheme] = {}


def register_scheme(scheme: Scheme) -> Scheme:
    if scheme.name in SCHEMES and SCHEMES[scheme.name] != scheme:
        raise UsageError(f"quantization scheme {scheme.name!r} is already registered")
    SCHEMES[scheme.name] = scheme
    return scheme


def _holdout(options: QuantizeOptions) -> float:
    return options.holdout if options.target_fidelity is not None else 0.0


def _w8a8_steps(o: QuantizeOptions) -> list[RecipeStep]:
    steps = []
    if o.smooth_alpha is not None:
        steps.append(RecipeStep("smooth-quant", {
            "alpha": o.smooth_alpha, "calib": o.calib_path, "holdout": _holdout(o), "batch_size": o.batch_size,
        }))
    steps.append(RecipeStep("quantize-activations", {
        "calib": o.calib_path, "method": o.method, "percentile": o.percentile, "activation_type": o.activation_type,
        "quantize_bmm": o.quantize_bmm, "exclude": list(o.exclude), "holdout": _holdout(o), "embeddings": o.embeddings,
        "batch_size": o.batch_size,
    }))
    return steps


def _dynamic_steps(o: QuantizeOptions) -> list[RecipeStep]:
    return [RecipeStep("quantize-dynamic", {
        "per_channel": o.per_channel, "exclude": list(o.exclude), "embeddings": o.embeddings,
    })]


def _w4a16_steps(o: QuantizeOptions) -> list[RecipeStep]:
    return [
        RecipeStep("fold-constants"),
        RecipeStep("quantize-weights", {"bits": 4, "block_size": 32, "symmetric": False, "exclude": list(o.exclude)}),
        RecipeStep("lower-matmulnbits"),
    ]


register_scheme(Scheme(
    "w8a8", "static int8 per-channel weights, calibrated 8-bit activations (QDQ); optional SmoothQuant",
    _w8a8_steps, needs_calibration=True, fallback_step="quantize-activations",
))
register_scheme(Scheme(
    "w8a8-dynamic", "int8 per-channel weights, activations quantized at run time (MatMulInteger)",
    _dynamic_steps, fallback_step="quantize-dynamic",
))
register_scheme(Scheme(
    "w4a16", "4-bit blocked weights (RTN, blocks of 32, asymmetric), lowered to MatMulNBits",
    _w4a16_steps,
))


def scheme_recipe(scheme: str, options: QuantizeOptions | None = None) -> Recipe:
    """The recipe a :func:`quantize` call runs (before any fallback adds exclusions)."""
    options = options or QuantizeOptions()
    found = _scheme(scheme)
    return Recipe(name=f"quantize-{found.name}", steps=tuple(found.steps(options)), atol=1.0, rtol=1.0,
                  description=found.description)


def _scheme(name: str) -> Scheme:
    if name not in SCHEMES:
        raise UsageError(f"unknown quantization scheme {name!r}; available: {', '.join(sorted(SCHEMES))}")
    return SCHEMES[name]


@dataclasses.dataclass(frozen=True)
class QuantizeResult:
    model: ir.Model
    scheme: str
    recipe: Recipe
    fidelity: float | None
    fallback: tuple[str, ...]
    sensitivity: dict[str, float]
    trials: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "recipe": self.recipe.to_dict(),
            "fidelity": self.fidelity,
            "fallback": list(self.fallback),
            "sensitivity": self.sensitivity,
            "trials": self.trials,
        }


def quantize(
    model: ir.Model,
    scheme: str,
    calib: Mapping[str, np.ndarray] | str | os.PathLike[str] | None = None,
    *,
    progress: Callable[[str], None] | None = None,
    **options: Any,
) -> QuantizeResult:
    """Quantize a copy of ``model`` with ``scheme`` (see the module docstring); ``model`` is not modified.

    ``calib`` is a feeds mapping or an ``.npz`` path (keys: input names, samples on axis 0);
    ``options`` are the fields of :class:`QuantizeOptions`.
    """
    try:
        opts = QuantizeOptions(**options)
    except TypeError as exc:
        raise UsageError(f"quantize: {exc}") from None
    if isinstance(opts.exclude, list):
        opts = dataclasses.replace(opts, exclude=tuple(opts.exclude))
    opts.validate()
    found = _scheme(scheme)
    feeds: dict[str, np.ndarray] | None = None
    if calib is not None:
        from graphopt.feeds import input_specs, load_feeds, validate_feeds

        if isinstance(calib, (str, os.PathLike)):
            opts = dataclasses.replace(opts, calib_path=opts.calib_path or os.fspath(calib))
            feeds = load_feeds(calib, input_specs(model))
        else:
            feeds = validate_feeds(calib, input_specs(model), source="calibration data")
    if feeds is None and (found.needs_calibration or opts.target_fidelity is not None):
        raise UsageError(f"scheme {scheme!r}{' with a target fidelity' if not found.needs_calibration else ''} "
                         "needs calibration data (an .npz of feeds)")
    steps = found.steps(opts)
    if opts.target_fidelity is None:
        work = model.clone()
        _run_steps(work, steps, feeds, progress)
        result = QuantizeResult(work, scheme, _recipe(found, steps), None, (), {}, 1)
    else:
        assert feeds is not None
        result = _with_fallback(model, found, opts, feeds, progress)
    result.model.metadata_props[QUANTIZATION_KEY] = json.dumps(
        {"scheme": scheme, "options": _jsonable(opts), **{k: v for k, v in result.to_dict().items() if k != "recipe"}},
        sort_keys=True, default=str,
    )
    return result


def _recipe(scheme: Scheme, steps: Sequence[RecipeStep]) -> Recipe:
    return Recipe(name=f"quantize-{scheme.name}", steps=tuple(steps), atol=1.0, rtol=1.0,
                  description=scheme.description)


def _jsonable(options: QuantizeOptions) -> dict[str, Any]:
    data = dataclasses.asdict(options)
    data["exclude"] = list(options.exclude)
    return data


def _build(step: RecipeStep, feeds: Mapping[str, np.ndarray] | None, **extra: Any) -> GraphoptPass[Any]:
    cls = get_pass_class(step.pass_name)
    params = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in extra.items() if k in params}
    if feeds is not None and "feeds" in params:
        kwargs["feeds"] = feeds
    return cls(**kwargs, **dict(step.settings))


def _run_steps(
    model: ir.Model, steps: Sequence[RecipeStep], feeds: Mapping[str, np.ndarray] | None,
    progress: Callable[[str], None] | None, **extra: Any,
) -> None:
    for step in steps:
        if progress is not None:
            progress(step.pass_name)
        _build(step, feeds, **extra)(model)


def fidelity(reference: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> float:
    """The smallest, over outputs, mean per-sample cosine similarity (samples on axis 0)."""
    worst = 1.0
    for a, b in zip(reference, outputs):
        x = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
        y = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
        norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
        cos = np.where(norms > 0, (x * y).sum(axis=1) / np.maximum(norms, 1e-30), 1.0)
        worst = min(worst, float(cos.mean()))
    return worst


def _outputs(model: ir.Model, feeds: Mapping[str, np.ndarray], batch_size: int) -> list[np.ndarray]:
    from graphopt.feeds import input_specs, iter_batches
    from graphopt.runtime import make_session

    session = make_session(model)
    parts: list[list[np.ndarray]] = []
    for batch in iter_batches(dict(feeds), input_specs(model), batch_size):
        for i, array in enumerate(session.run(None, dict(batch))):
            if len(parts) <= i:
                parts.append([])
            parts[i].append(np.asarray(array))
    return [np.concatenate(p) for p in parts]


def _with_fallback(
    model: ir.Model, scheme: Scheme, opts: QuantizeOptions, feeds: Mapping[str, np.ndarray],
    progress: Callable[[str], None] | None,
) -> QuantizeResult:
    from graphopt.rewrites.quantize_activations import collect_ranges, split_holdout, weight_sites

    target = opts.target_fidelity
    assert target is not None
    if scheme.fallback_step is None:
        raise UsageError(f"scheme {scheme.name!r} has no per-site fallback; drop --target-fidelity")
    calib, held = split_holdout(feeds, opts.holdout)
    steps = scheme.steps(opts)
    index = next((i for i, s in enumerate(steps) if s.pass_name == scheme.fallback_step), None)
    assert index is not None, f"{scheme.name}: no step {scheme.fallback_step}"
    prefix, last, suffix = steps[:index], steps[index], steps[index + 1 :]
    reference = _outputs(model, held, opts.batch_size)
    base = model.clone()
    _run_steps(base, prefix, feeds, progress)
    extra: dict[str, Any] = {}
    sites = [s.name for s in weight_sites(base.graph, exclude=opts.exclude)]
    if "collectors" in inspect.signature(get_pass_class(last.pass_name).__init__).parameters:
        names = sorted({s.node.inputs[0].name for s in weight_sites(base.graph) if s.node.inputs[0] is not None
                        and s.node.inputs[0].name})
        if progress is not None:
            progress("calibrating activation ranges")
        extra["collectors"] = collect_ranges(base, calib, [n for n in names if n], batch_size=opts.batch_size)
    trials = 0

    def trial(excluded: Sequence[str]) -> tuple[float, ir.Model, RecipeStep]:
        nonlocal trials
        trials += 1
        settings = dict(last.settings)
        settings["exclude"] = sorted(set(settings.get("exclude", [])) | set(excluded))
        step = RecipeStep(last.pass_name, settings)
        work = base.clone()
        _run_steps(work, [step, *suffix], feeds, None, **extra)
        return fidelity(reference, _outputs(work, held, opts.batch_size)), work, step

    if progress is not None:
        progress(f"fidelity of the fully quantized model (target {target:g})")
    score, work, step = trial(())
    sensitivity: dict[str, float] = {}
    fallback: list[str] = []
    if score < target:
        for i, site in enumerate(sites):
            if progress is not None:
                progress(f"sensitivity {i + 1}/{len(sites)}: {site}")
            alone, _, _ = trial([s for s in sites if s != site])
            sensitivity[site] = 1.0 - alone
        ranked = sorted(sites, key=lambda s: -sensitivity[s])
        lo, hi = 1, len(ranked)
        best: tuple[float, ir.Model, RecipeStep] | None = None
        while lo <= hi:  # smallest k whose fallback meets the target
            k = (lo + hi) // 2
            if progress is not None:
                progress(f"fallback: {k} site(s) in float")
            candidate = trial(ranked[:k])
            if candidate[0] >= target:
                best, hi = candidate, k - 1
                fallback = ranked[:k]
            else:
                lo = k + 1
        if best is None:
            raise CheckFailed(f"fidelity {score:.4f} stays below the target {target:g} even with every site in float")
        score, work, step = best
    logger.info("quantize: fidelity %.5f with %d site(s) in float", score, len(fallback))
    recipe = _recipe(scheme, [*prefix, step, *suffix])
    return QuantizeResult(work, scheme.name, recipe, score, tuple(fallback), sensitivity, trials)


def feeds_from_text(
    model: ir.Model,
    text_file: str | os.PathLike[str],
    tokenizer_dir: str | os.PathLike[str],
    *,
    sequence: int = 128,
    max_samples: int | None = 512,
) -> dict[str, np.ndarray]:
    """Calibration feeds from a text file (one sample per non-empty line) and a tokenizer folder,
    keyed by the model's input names."""
    from graphopt.data import tokenize
    from graphopt.feeds import input_specs

    path = Path(text_file)
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise InputError(f"{path}: cannot read the calibration text ({reason})") from None
    if not lines:
        raise InputError(f"{path}: no text lines to calibrate with")
    if max_samples is not None:
        lines = lines[:max_samples]
    names = [spec.name for spec in input_specs(model)]
    return tokenize(tokenizer_dir, lines, sequence=sequence, input_names=names)
