from __future__ import annotations

import json
from pathlib import Path

import onnx_ir as ir
import pytest

from graphopt.errors import UsageError
from graphopt.recipes import NAMED_RECIPES, Recipe, apply_recipe, load_recipe, resolve_recipe
from tests.conftest import SMALL_MLP


@pytest.mark.parametrize("name", sorted(NAMED_RECIPES))
def test_named_recipes_build(name: str) -> None:
    recipe = NAMED_RECIPES[name]
    assert recipe.build()
    assert recipe.output_preserving


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_recipe_file_round_trip(tmp_path: Path, suffix: str) -> None:
    recipe = NAMED_RECIPES["default"]
    path = tmp_path / f"r{suffix}"
    path.write_text(recipe.dumps("json" if suffix == ".json" else "yaml"))
    loaded = load_recipe(path)
    assert loaded == recipe
    assert resolve_recipe(str(path)) == recipe


def test_recipe_replays_same_result(tmp_path: Path) -> None:
    first, second = ir.from_onnx_text(SMALL_MLP), ir.from_onnx_text(SMALL_MLP)
    apply_recipe(first, NAMED_RECIPES["default"])
    path = tmp_path / "replay.yaml"
    path.write_text(NAMED_RECIPES["default"].dumps())
    apply_recipe(second, load_recipe(path))
    assert ir.to_proto(first).SerializeToString() == ir.to_proto(second).SerializeToString()


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("steps: []", "non-empty list"),
        ("just a string", "mapping"),
        ("steps: [{pass: no-such-pass}]", "unknown pass"),
        ("steps: [{settings: {}}]", "needs a 'pass'"),
        ("steps: [{pass: fold-constants, settings: {bogus: 1}}]", "known settings"),
        ("steps: [fold-constants]\nverify: {atol: abc}", "verify"),
        ("steps: [: :", "not valid YAML"),
    ],
)
def test_bad_recipe_files(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(UsageError, match=fragment):
        load_recipe(path)


def test_unknown_recipe_name() -> None:
    with pytest.raises(UsageError, match="named recipes"):
        resolve_recipe("fastest-please")


def test_recipe_to_dict_is_json() -> None:
    data = json.loads(NAMED_RECIPES["portable"].dumps("json"))
    assert data["steps"][0] == {"pass": "fold-constants"}
    assert Recipe.from_dict(data) == NAMED_RECIPES["portable"]
