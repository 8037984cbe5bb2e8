"""Recipes: named or file-based lists of pass steps that replay a run exactly.

A recipe file (JSON or YAML) looks like::

    name: my-recipe
    steps:
      - pass: fold-constants
        settings: {shape_inference: true}
      - pass: remove-dead-code
    verify: {atol: 1.0e-4, rtol: 1.0e-3}
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx_ir as ir
import yaml

from graphopt.errors import InputError, UsageError
from graphopt.passes import GraphoptPass, PassHook, create_pass, run_passes

__all__ = [
    "NAMED_RECIPES",
    "Recipe",
    "RecipeStep",
    "apply_recipe",
    "load_recipe",
    "resolve_recipe",
]


@dataclasses.dataclass(frozen=True)
class RecipeStep:
    pass_name: str
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pass": self.pass_name}
        if self.settings:
            out["settings"] = dict(self.settings)
        return out


@dataclasses.dataclass(frozen=True)
class Recipe:
    """An ordered list of pass steps plus the tolerances its result is verified with."""

    name: str
    steps: tuple[RecipeStep, ...]
    atol: float = 1e-4
    rtol: float = 1e-3
    description: str = ""

    def build(self) -> list[GraphoptPass[Any]]:
        """Instantiate (and so validate) every step's pass."""
        return [create_pass(step.pass_name, step.settings) for step in self.steps]

    @property
    def output_preserving(self) -> bool:
        return all(p.output_preserving for p in self.build())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out["steps"] = [s.to_dict() for s in self.steps]
        out["verify"] = {"atol": self.atol, "rtol": self.rtol}
        return out

    def dumps(self, fmt: str = "yaml") -> str:
        if fmt == "json":
            return json.dumps(self.to_dict(), indent=2) + "\n"
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "recipe") -> Recipe:
        if not isinstance(data, Mapping):
            raise UsageError(f"{source}: a recipe is a mapping with 'steps'")
        raw_steps = data.get("steps")
        if not isinstance(raw_steps, Sequence) or isinstance(raw_steps, str) or not raw_steps:
            raise UsageError(f"{source}: 'steps' must be a non-empty list")
        steps = []
        for i, raw in enumerate(raw_steps):
            if isinstance(raw, str):
                raw = {"pass": raw}
            if not isinstance(raw, Mapping) or "pass" not in raw:
                raise UsageError(f"{source}: step {i + 1} needs a 'pass' name")
            settings = raw.get("settings") or {}
            if not isinstance(settings, Mapping):
                raise UsageError(f"{source}: step {i + 1}: 'settings' must be a mapping")
            steps.append(RecipeStep(str(raw["pass"]), dict(settings)))
        verify = data.get("verify") or {}
        try:
            recipe = cls(
                name=str(data.get("name", Path(source).stem)),
                steps=tuple(steps),
                atol=float(verify.get("atol", 1e-4)),
                rtol=float(verify.get("rtol", 1e-3)),
                description=str(data.get("description", "")),
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise UsageError(f"{source}: bad 'verify' section ({exc})") from None
        recipe.build()
        return recipe


def _recipe(name: str, description: str, *steps: str | tuple[str, dict[str, Any]]) -> Recipe:
    built = tuple(RecipeStep(s) if isinstance(s, str) else RecipeStep(s[0], s[1]) for s in steps)
    return Recipe(name=name, steps=built, description=description)


_CLEANUP: tuple[str, ...] = (
    "fold-constants",
    "remove-no-ops",
    "simplify-shapes",
    "fold-constants",
    "fuse-standard",
    "deduplicate",
    "remove-dead-code",
)

NAMED_RECIPES: dict[str, Recipe] = {
    "default": _recipe(
        "default",
        "output-preserving cleanup plus the fusions onnxruntime runs fastest",
        *_CLEANUP,
        "fuse-ort",
        "remove-dead-code",
    ),
    "portable": _recipe("portable", "output-preserving cleanup with standard ONNX ops only (any runtime)", *_CLEANUP),
    "minimal": _recipe("minimal", "constant folding and dead-code removal only", "fold-constants", "remove-dead-code"),
}


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise InputError(f"{p}: cannot read recipe ({exc.strerror or exc})") from exc
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise UsageError(
            f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'} ({str(exc).splitlines()[0]})"
        ) from None
    return Recipe.from_dict(data, source=str(p))


def resolve_recipe(name_or_path: str) -> Recipe:
    """A named recipe, or one loaded from a ``.json`` / ``.yaml`` / ``.yml`` file."""
    if name_or_path in NAMED_RECIPES:
        return NAMED_RECIPES[name_or_path]
    if Path(name_or_path).suffix in {".json", ".yaml", ".yml"} or Path(name_or_path).exists():
        return load_recipe(name_or_path)
    raise UsageError(
        f"unknown recipe {name_or_path!r}; named recipes: {', '.join(NAMED_RECIPES)} (or give a .json/.yaml file)"
    )


def apply_recipe(
    model: ir.Model,
    recipe: Recipe,
    *,
    hooks: Sequence[PassHook] = (),
    progress: Callable[[str], None] | None = None,
) -> bool:
    """Run the recipe's passes on ``model`` in place; return whether anything changed."""
    return run_passes(model, recipe.build(), hooks=hooks, progress=progress)
