"""onnx's bundled 'light' model-zoo graphs go through the default recipe with outputs verified.

These IR-3 models list their initializers as graph inputs (overridable), so output-preserving
cleanup must leave those weights alone; the check is that nothing breaks and outputs match.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from graphopt._io import load_model
from graphopt.feeds import input_specs, synthesize_feeds
from graphopt.recipes import NAMED_RECIPES, apply_recipe
from graphopt.verify import verify_models

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = sorted(p.name for p in LIGHT.glob("light_*.onnx"))


def test_light_zoo_present() -> None:
    assert len(MODELS) >= 8


@pytest.mark.parametrize("name", MODELS)
def test_light_model_optimizes_and_verifies(name: str) -> None:
    path = LIGHT / name
    original = load_model(path)
    model = load_model(path)
    apply_recipe(model, NAMED_RECIPES["default"])
    feeds = synthesize_feeds(input_specs(original), batch=1)
    report = verify_models(path, model, feeds, signature=original)
    assert report.passed, report
    assert sum(1 for _ in model.graph) <= sum(1 for _ in original.graph)
