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
import tempfile
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
    "parse_scheme",
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
    residual: bool = False
    per_channel: bool = True
    embeddings: bool = True
    exclude: tuple[str, ...] = ()
    target_fidelity: float | None = None
    holdout: float = 0.25
    batch_size: int = 8
    calib_path: str = ""
    weight_method: str = "auto"
    grouping: str = "output"
    scheme_args: tuple[str, ...] = ()

    def validate(self) -> None:
        if self.target_fidelity is not None and not 0 < self.target_fidelity <= 1:
            raise UsageError(f"target fidelity must lie in (0, 1], not {self.target_fidelity}")
        if self.smooth_alpha is not None and not 0 <= self.smooth_alpha <= 1:
            raise UsageError(f"smooth alpha must lie in [0, 1], not {self.smooth_alpha}")
        if not 0 < self.holdout < 1:
            raise UsageError(f"holdout must lie in (0, 1), not {self.holdout}")
        if self.weight_method not in ("auto", "rtn", "gptq", "awq"):
            raise UsageError(f"weight method must be auto, rtn, gptq or awq, not {self.weight_method!r}")
        if self.grouping not in ("output", "input", "adadim"):
            raise UsageError(f"grouping must be output, input or adadim, not {self.grouping!r}")

    def resolved_weight_method(self) -> str:
        """``auto``: GPTQ when calibration data is at hand, else round-to-nearest."""
        if self.weight_method == "auto":
            return "gptq" if self.calib_path else "rtn"
        return self.weight_method


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
    arguments: str = ""  # e.g. "B" for ``mixed:B``; empty: the scheme takes none


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
        "batch_size": o.batch_size, **({"residual": True} if o.residual else {}),
    }))
    return steps


def _dynamic_steps(o: QuantizeOptions) -> list[RecipeStep]:
    return [RecipeStep("quantize-dynamic", {
        "per_channel": o.per_channel, "exclude": list(o.exclude), "embeddings": o.embeddings,
    })]


def _weight_only(bits: int, lower: bool) -> Callable[[QuantizeOptions], list[RecipeStep]]:
    def steps(o: QuantizeOptions) -> list[RecipeStep]:
        method = o.resolved_weight_method()
        settings: dict[str, Any] = {"bits": bits, "block_size": 32, "symmetric": False, "method": method,
                                    "grouping": o.grouping, "embeddings": o.embeddings, "exclude": list(o.exclude)}
        if method != "rtn" or o.grouping == "adadim":
            settings["calibration"] = o.calib_path
        out = [RecipeStep("fold-constants"), RecipeStep("quantize-weights", settings)]
        return [*out, RecipeStep("lower-matmulnbits")] if lower and o.grouping == "output" else out

    return steps


def _nf4_steps(o: QuantizeOptions) -> list[RecipeStep]:
    method = "awq" if o.resolved_weight_method() == "awq" else "rtn"
    settings: dict[str, Any] = {"format": "nf4", "block_size": 64, "method": method, "embeddings": o.embeddings,
                                "exclude": list(o.exclude)}
    if method == "awq":
        settings["calibration"] = o.calib_path
    return [RecipeStep("fold-constants"), RecipeStep("quantize-weights", settings)]


def _number(text: str, what: str, kind: type = float) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise UsageError(f"{what} must be a number, not {text!r}") from None


def _mixed_steps(o: QuantizeOptions) -> list[RecipeStep]:
    budget = _number(o.scheme_args[0], "mixed:B's average bits B")
    if not 2 <= budget <= 8:
        raise UsageError(f"mixed:B needs 2 <= B <= 8, not {budget:g}")
    method = o.resolved_weight_method()
    settings: dict[str, Any] = {"average_bits": budget, "symmetric": False, "method": method,
                                "embeddings": o.embeddings, "exclude": list(o.exclude)}
    if method != "rtn":
        settings["calibration"] = o.calib_path
    return [RecipeStep("fold-constants"), RecipeStep("quantize-mixed", settings)]


def _ternary_steps(o: QuantizeOptions) -> list[RecipeStep]:
    scale = o.scheme_args[0] if o.scheme_args else "absmean"
    if scale not in ("absmean", "median"):
        raise UsageError(f"ternary takes absmean or median (ternary:median), not {scale!r}")
    return [RecipeStep("fold-constants"), RecipeStep("quantize-ternary", {"scale": scale,
                                                                          "exclude": list(o.exclude)})]


def _lowrank_steps(o: QuantizeOptions) -> list[RecipeStep]:
    if len(o.scheme_args) != 2:
        raise UsageError("lowrank-q takes bits and rank: lowrank-q:B,R (e.g. lowrank-q:3,16)")
    bits = _number(o.scheme_args[0], "lowrank-q's bits B", int)
    rank = _number(o.scheme_args[1], "lowrank-q's rank R", int)
    if bits not in (2, 3, 4, 8) or rank < 1:
        raise UsageError(f"lowrank-q:B,R needs B in 2, 3, 4, 8 and R >= 1, not {bits},{rank}")
    settings: dict[str, Any] = {"bits": bits, "rank": rank, "exclude": list(o.exclude)}
    if o.calib_path:
        settings["calibration"] = o.calib_path
    return [RecipeStep("fold-constants"), RecipeStep("quantize-lowrank", settings)]


def _float_steps(dtype: str, compute: bool) -> Callable[[QuantizeOptions], list[RecipeStep]]:
    return lambda o: [RecipeStep("quantize-float", {"dtype": dtype, "compute": compute})]


def _fp8_steps(o: QuantizeOptions) -> list[RecipeStep]:
    return [RecipeStep("fold-constants"), RecipeStep("quantize-fp8", {"embeddings": o.embeddings,
                                                                      "exclude": list(o.exclude)})]


register_scheme(Scheme(
    "w8a8", "static int8 per-channel weights, calibrated 8-bit activations (QDQ); optional SmoothQuant",
    _w8a8_steps, needs_calibration=True, fallback_step="quantize-activations",
))
register_scheme(Scheme(
    "w8a8-dynamic", "int8 per-channel weights, activations quantized at run time (MatMulInteger)",
    _dynamic_steps, fallback_step="quantize-dynamic",
))
register_scheme(Scheme(
    "w4a16", "4-bit blocked weights (blocks of 32, asymmetric; GPTQ with calibration, else RTN), "
    "lowered to MatMulNBits", _weight_only(4, lower=True),
))
register_scheme(Scheme("w3a16", "3-bit blocked weights (GPTQ with calibration, else RTN), reference QDQ",
                       _weight_only(3, lower=False)))
register_scheme(Scheme("w2a16", "2-bit blocked weights (GPTQ with calibration, else RTN), reference QDQ",
                       _weight_only(2, lower=False)))
register_scheme(Scheme("nf4", "4-bit NormalFloat codebook (QLoRA levels), blocks of 64", _nf4_steps))
register_scheme(Scheme("mixed", "per-layer bit widths from BAQ's rate-distortion allocation at an average of B "
                       "bits", _mixed_steps, arguments="B"))
register_scheme(Scheme("ternary", "BitNet b1.58 ternary weights (absmean scale; ternary:median for the median "
                       "variant)", _ternary_steps, arguments="[absmean|median]"))
register_scheme(Scheme("lowrank-q", "LQ-LoRA: B-bit quantized base plus a float rank-R branch", _lowrank_steps,
                       arguments="B,R"))
register_scheme(Scheme("fp16", "float16 weights and compute, sensitive ops kept in float32",
                       _float_steps("float16", True)))
register_scheme(Scheme("bf16", "bfloat16 weight storage, float32 compute (onnxruntime CPU has no bf16 MatMul)",
                       _float_steps("bfloat16", False)))
register_scheme(Scheme("fp8", "float8 E4M3 weights (QDQ, opset 19+)", _fp8_steps))


def parse_scheme(text: str) -> tuple[Scheme, tuple[str, ...]]:
    """``mixed:3`` -> (the ``mixed`` scheme, ("3",)); a scheme without arguments refuses them."""
    name, _, rest = text.partition(":")
    found = _scheme(name)
    args = tuple(a.strip() for a in rest.split(",")) if rest else ()
    if args and not found.arguments:
        raise UsageError(f"scheme {name!r} takes no arguments (got {text!r})")
    if found.arguments and not found.arguments.startswith("[") and not args:
        raise UsageError(f"scheme {name!r} needs arguments: {name}:{found.arguments}")
    return found, args


def scheme_recipe(scheme: str, options: QuantizeOptions | None = None) -> Recipe:
    """The recipe a :func:`quantize` call runs (before any fallback adds exclusions)."""
    options = options or QuantizeOptions()
    found, args = parse_scheme(scheme)
    options = dataclasses.replace(options, scheme_args=args)
    return Recipe(name=f"quantize-{scheme.replace(':', '-').replace(',', '-')}", steps=tuple(found.steps(options)),
                  atol=1.0, rtol=1.0, description=found.description)


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
    found, args = parse_scheme(scheme)
    opts = dataclasses.replace(opts, scheme_args=args)
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
    with tempfile.TemporaryDirectory(prefix="graphopt-calib-") as scratch:
        if feeds is not None and not opts.calib_path:  # weight-only passes read calibration from a file
            from graphopt.feeds import save_feeds

            opts = dataclasses.replace(opts, calib_path=os.fspath(save_feeds(feeds, Path(scratch) / "calib.npz")))
        steps = found.steps(opts)
        if opts.target_fidelity is None:
            work = model.clone()
            _run_steps(work, steps, feeds, progress)
            result = QuantizeResult(work, scheme, _recipe(found, steps), None, (), {}, 1)
        else:
            assert feeds is not None
            result = _with_fallback(model, found, opts, feeds, progress)
        if opts.calib_path.startswith(scratch):
            opts = dataclasses.replace(opts, calib_path="<in-memory calibration feeds>")
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
