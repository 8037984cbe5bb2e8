"""Verified optimisation: apply a recipe, check the result in onnxruntime, and if an
output-preserving recipe broke the model, find the pass responsible, leave it out and retry."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any

import onnx_ir as ir

from graphopt._io import load_model
from graphopt.errors import GraphoptError, InputError, PassError
from graphopt.feeds import Feeds
from graphopt.passes import TimingHook, run_passes
from graphopt.recipes import Recipe, apply_recipe
from graphopt.verify import VerifyReport, verify_models

__all__ = ["OptimizeResult", "SkippedStep", "optimize_verified"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SkippedStep:
    """A recipe step left out because the model failed verification after it."""

    index: int
    pass_name: str
    reason: str


@dataclasses.dataclass(frozen=True)
class OptimizeResult:
    model: ir.Model
    report: VerifyReport | None
    failure: str | None
    skipped: tuple[SkippedStep, ...]
    passes: tuple[dict[str, Any], ...]

    @property
    def passed(self) -> bool:
        return self.report is not None and self.report.passed


def optimize_verified(
    path: str | os.PathLike[str],
    recipe: Recipe,
    feeds: Feeds,
    *,
    verify: bool = True,
    max_skips: int = 3,
    progress: Callable[[str], None] | None = None,
    original: ir.Model | None = None,
) -> OptimizeResult:
    """Apply ``recipe`` to the model at ``path`` and verify it against the original on ``feeds``.

    When an output-preserving recipe fails verification (or yields a graph onnxruntime rejects),
    the recipe is replayed step by step, verifying after each, to find the first failing step; that
    step is dropped (logged, and listed in ``skipped``) and the recipe runs again, up to
    ``max_skips`` times. Recipes that change outputs on purpose are verified but never repaired.
    ``original`` is the model as loaded from ``path``, when the caller has it; it is not modified
    (each attempt rewrites a clone, which shares the weight tensors).
    """
    signature = original if original is not None else load_model(path)
    remaining = list(enumerate(recipe.steps))  # (index in the recipe, step)
    skipped: list[SkippedStep] = []
    while True:
        active = dataclasses.replace(recipe, steps=tuple(step for _, step in remaining))
        model = signature.clone()
        timing = TimingHook()
        try:
            apply_recipe(model, active, hooks=[timing], progress=progress)
        except PassError as exc:
            # A pass that raises is left out like one that breaks the outputs (output-preserving only).
            if not recipe.output_preserving or len(skipped) >= max_skips:
                raise
            index, step = remaining.pop(len(timing.records))
            logger.warning("leaving out recipe step %d (%s): %s", index + 1, step.pass_name, exc)
            skipped.append(SkippedStep(index, step.pass_name, str(exc)))
            if not remaining:
                return _unchanged(path, signature, feeds, recipe, verify, skipped)
            continue
        if not verify:
            return OptimizeResult(model, None, None, tuple(skipped), tuple(timing.records))
        report, failure = _check(path, model, feeds, recipe, signature)
        if failure is not None and not skipped and (recipe.output_preserving or report is None):
            _check_original(path, feeds, recipe, signature)
        if (report is not None and report.passed) or not recipe.output_preserving or len(skipped) >= max_skips:
            return OptimizeResult(model, report, failure, tuple(skipped), tuple(timing.records))
        culprit = _first_failing_step(path, active, feeds, signature)
        if culprit is None:  # only the combination fails; nothing single to blame
            return OptimizeResult(model, report, failure, tuple(skipped), tuple(timing.records))
        position, reason = culprit
        index, step = remaining.pop(position)
        logger.warning("leaving out recipe step %d (%s): %s", index + 1, step.pass_name, reason)
        skipped.append(SkippedStep(index, step.pass_name, reason))
        if not remaining:
            return _unchanged(path, signature, feeds, recipe, verify, skipped)


def _unchanged(
    path: str | os.PathLike[str],
    signature: ir.Model,
    feeds: Feeds,
    recipe: Recipe,
    verify: bool,
    skipped: list[SkippedStep],
) -> OptimizeResult:
    """Every step was left out: the result is the original."""
    model = signature.clone()
    if not verify:
        return OptimizeResult(model, None, None, tuple(skipped), ())
    report, failure = _check(path, model, feeds, recipe, signature)
    return OptimizeResult(model, report, failure, tuple(skipped), ())


def _check_original(path: str | os.PathLike[str], feeds: Feeds, recipe: Recipe, signature: ir.Model) -> None:
    """Raise :class:`InputError` when the original cannot be verified against itself: then no
    step is to blame (onnxruntime rejects it, the feeds do not fit, or random operators)."""
    report, failure = _check(path, signature.clone(), feeds, recipe, signature)
    if report is not None and not report.passed:
        raise InputError(
            "the original model gives different outputs on two runs (random operators?), so no rewrite "
            "can be verified; use --no-verify to skip verification"
        )
    if failure is not None:
        raise InputError(f"cannot verify against the original model: {failure}")


def _check(
    path: str | os.PathLike[str], model: ir.Model, feeds: Feeds, recipe: Recipe, signature: ir.Model
) -> tuple[VerifyReport | None, str | None]:
    try:
        report = verify_models(path, model, feeds, atol=recipe.atol, rtol=recipe.rtol, signature=signature)
    except GraphoptError as exc:
        return None, str(exc)
    if report.passed:
        return report, None
    return report, f"max abs error {report.max_abs:.3g} beyond atol {recipe.atol:g} / rtol {recipe.rtol:g}"


def _first_failing_step(
    path: str | os.PathLike[str], recipe: Recipe, feeds: Feeds, signature: ir.Model
) -> tuple[int, str] | None:
    model = signature.clone()
    for index, pass_ in enumerate(recipe.build()):
        try:
            run_passes(model, [pass_])
        except PassError as exc:
            return index, str(exc)
        _, failure = _check(path, model, feeds, recipe, signature)
        if failure is not None:
            return index, failure
    return None
