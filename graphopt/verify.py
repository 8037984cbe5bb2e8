"""Verification: run an original and a rewritten model in onnxruntime on the same feeds and compare."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from graphopt._io import release_external_data
from graphopt.errors import InputError, one_line
from graphopt.feeds import Feeds, input_specs, iter_batches, validate_feeds
from graphopt.runtime import make_session

__all__ = ["OutputComparison", "VerifyReport", "compare_outputs", "verify_models"]


@dataclasses.dataclass(frozen=True)
class OutputComparison:
    """Errors of one output over all batches."""

    name: str
    max_abs: float
    max_rel: float
    cosine: float
    passed: bool
    note: str = ""


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    outputs: tuple[OutputComparison, ...]
    atol: float
    rtol: float
    batches: int

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def min_cosine(self) -> float:
        return min((o.cosine for o in self.outputs), default=1.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "atol": self.atol,
            "rtol": self.rtol,
            "batches": self.batches,
            "outputs": [dataclasses.asdict(o) for o in self.outputs],
        }


def compare_outputs(
    expected: Sequence[np.ndarray], actual: Sequence[np.ndarray], names: Sequence[str], atol: float, rtol: float
) -> list[OutputComparison]:
    """Compare output arrays pairwise: max abs/rel error, cosine and the allclose verdict."""
    results = []
    for name, a, b in zip(names, expected, actual, strict=True):
        if isinstance(a, list) or isinstance(b, list) or a is None or b is None:
            results.append(_compare_sequences(name, a, b, atol, rtol))
            continue
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            results.append(
                OutputComparison(name, float("inf"), float("inf"), 0.0, False, f"shape {b.shape} != {a.shape}")
            )
            continue
        if a.dtype.kind not in "fciub" or b.dtype.kind not in "fciub":
            equal = bool(np.array_equal(a, b))
            results.append(OutputComparison(name, 0.0 if equal else float("inf"), 0.0, 1.0, equal))
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        both_nan = np.isnan(a64) & np.isnan(b64)
        same_inf = np.isinf(a64) & (a64 == b64)
        diff = np.where(both_nan | same_inf, 0.0, np.abs(a64 - b64))
        diff = np.nan_to_num(diff, nan=np.inf)
        max_abs = float(diff.max()) if diff.size else 0.0
        rel = diff / np.maximum(np.abs(a64), np.finfo(np.float64).tiny)
        max_rel = float(np.where(diff == 0, 0.0, rel).max()) if diff.size else 0.0
        finite = np.isfinite(a64) & np.isfinite(b64)
        na, nb = np.linalg.norm(a64[finite]), np.linalg.norm(b64[finite])
        if na == 0 and nb == 0:
            cosine = 1.0
        elif na == 0 or nb == 0:
            cosine = 0.0
        else:
            cosine = float(np.dot(a64[finite], b64[finite]) / (na * nb))
        passed = bool(np.all(diff <= atol + rtol * np.abs(np.nan_to_num(a64, posinf=0, neginf=0))))
        results.append(OutputComparison(name, max_abs, max_rel, cosine, passed))
    return results


def _compare_sequences(name: str, a: Any, b: Any, atol: float, rtol: float) -> OutputComparison:
    """Sequence outputs (lists of arrays) element by element; ``None`` is an empty optional."""
    if a is None or b is None:
        equal = a is None and b is None
        return OutputComparison(name, 0.0 if equal else float("inf"), 0.0, 1.0 if equal else 0.0, equal)
    if not isinstance(a, list) or not isinstance(b, list) or len(a) != len(b):
        sizes = [len(v) if isinstance(v, list) else "a tensor" for v in (b, a)]
        return OutputComparison(name, float("inf"), float("inf"), 0.0, False, f"sequence {sizes[0]} != {sizes[1]}")
    items = compare_outputs(a, b, [f"{name}[{i}]" for i in range(len(a))], atol, rtol)
    return OutputComparison(
        name,
        max((i.max_abs for i in items), default=0.0),
        max((i.max_rel for i in items), default=0.0),
        min((i.cosine for i in items), default=1.0),
        all(i.passed for i in items),
        "; ".join(i.note for i in items if i.note),
    )


def _merge(per_batch: list[list[OutputComparison]]) -> tuple[OutputComparison, ...]:
    merged = []
    for items in zip(*per_batch, strict=True):
        merged.append(
            OutputComparison(
                items[0].name,
                max(i.max_abs for i in items),
                max(i.max_rel for i in items),
                min(i.cosine for i in items),
                all(i.passed for i in items),
                "; ".join(sorted({i.note for i in items if i.note})),
            )
        )
    return tuple(merged)


def verify_models(
    original: ir.Model | str | os.PathLike[str],
    candidate: ir.Model | str | os.PathLike[str],
    feeds: Feeds,
    *,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    provider: str | None = None,
    batch_size: int | None = None,
    signature: ir.Model | None = None,
) -> VerifyReport:
    """Run both models on ``feeds`` (samples on axis 0) and compare every output.

    Outputs are matched by name, or by position when the names differ but the counts agree.
    ``signature`` (an ``ir.Model``) gives the input specs when ``original`` is a path.
    """
    release_external_data(*(m for m in (original, candidate, signature) if isinstance(m, ir.Model)))
    specs_model = signature if signature is not None else original
    if isinstance(specs_model, ir.Model):
        specs = input_specs(specs_model)
        feeds = validate_feeds(feeds, specs)
    else:
        specs = []
    batches = list(iter_batches(feeds, specs, batch_size))
    # One session at a time, so that a large model's weights are held by the runtime only once.
    sess_a = make_session(original, provider=provider)
    names_a = [o.name for o in sess_a.get_outputs()]
    inputs_a = {i.name for i in sess_a.get_inputs()}
    expected = [_run(sess_a, names_a, batch) for batch in batches]
    del sess_a
    sess_b = make_session(candidate, provider=provider)
    names_b = [o.name for o in sess_b.get_outputs()]
    if names_a == names_b or sorted(names_a) == sorted(names_b):
        fetch_b = names_a
    elif len(names_a) == len(names_b):
        fetch_b = names_b
    else:
        raise InputError(f"the models have different outputs: {names_a} vs {names_b}")
    inputs_b = {i.name for i in sess_b.get_inputs()}
    if inputs_a != inputs_b:
        raise InputError(f"the models have different inputs: {sorted(inputs_a)} vs {sorted(inputs_b)}")
    per_batch = [
        compare_outputs(out_a, _run(sess_b, fetch_b, batch), names_a, atol, rtol)
        for out_a, batch in zip(expected, batches)
    ]
    return VerifyReport(_merge(per_batch), atol, rtol, len(per_batch))


def _run(session: Any, names: list[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    try:
        return list(session.run(names, dict(feeds)))
    except Exception as exc:  # onnxruntime raises its own exception types for bad feeds
        raise InputError(f"onnxruntime could not run the model on these feeds: {one_line(exc)}") from exc
