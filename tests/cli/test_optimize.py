from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from graphopt._io import load_model
from graphopt.cli import main
from graphopt.provenance import read_provenance
from tests.conftest import digest


def test_optimize_writes_verified_model(mlp_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.onnx"
    before = digest(mlp_path)
    assert main(["optimize", str(mlp_path), "-o", str(out), "--no-bench"]) == 0
    text = capsys.readouterr().out
    assert "nodes" in text and "max abs error" in text and "wrote" in text
    model = load_model(out)
    assert [n.op_type for n in model.graph] == ["MatMul", "Relu", "MatMul"]
    assert "remove-no-ops" in [r["pass"] for r in read_provenance(model)]
    assert "graphopt.recipe" in model.metadata_props
    assert digest(mlp_path) == before


def test_optimize_with_bench_reports_latency_ratio(
    mlp_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(mlp_path), "-o", str(out), "--json", "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verify"]["passed"]
    assert report["before"]["nodes"] > report["after"]["nodes"]
    assert len(report["bench"]["models"]) == 2 and report["bench"]["ratios"][0]["median"] > 0


def test_dry_run_prints_recipe_and_writes_nothing(
    mlp_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(mlp_path), "-o", str(out), "--dry-run"]) == 0
    recipe = yaml.safe_load(capsys.readouterr().out)
    assert recipe["name"] == "default" and recipe["steps"][0]["pass"] == "fold-constants"
    assert not out.exists()


def test_saved_recipe_replays(mlp_path: Path, tmp_path: Path) -> None:
    recipe_file = tmp_path / "r.json"
    first, second = tmp_path / "a.onnx", tmp_path / "b.onnx"
    assert (
        main(
            [
                "optimize",
                str(mlp_path),
                "-o",
                str(first),
                "--recipe",
                "portable",
                "--no-bench",
                "--save-recipe",
                str(recipe_file),
            ]
        )
        == 0
    )
    assert json.loads(recipe_file.read_text())["name"] == "portable"
    assert main(["optimize", str(mlp_path), "-o", str(second), "--recipe", str(recipe_file), "--no-bench"]) == 0
    assert first.read_bytes() == second.read_bytes()


def test_failed_verification_exits_1_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A recipe step that changes outputs although it claims to preserve them."""
    from tests.test_passes import _TouchPass  # noqa: F401  (registers test-touch)

    model = tmp_path / "m.onnx"
    from tests.conftest import write_text_model

    write_text_model(model, '<ir_version: 8, opset_import: ["" : 18]>\ng (float[2] x) => (float[2] y) { y = Relu(x) }')
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps: [test-break-outputs]\n")
    out = tmp_path / "out.onnx"
    argv = ["optimize", str(model), "-o", str(out), "--recipe", str(recipe), "--no-bench"]
    assert main([*argv, "--no-repair"]) == 1
    assert "verification failed" in capsys.readouterr().err
    assert not out.exists()
    # Without --no-repair the breaking step is left out and the (unchanged) model written.
    assert main(argv) == 0
    assert "left out step 1 (test-break-outputs)" in capsys.readouterr().err
    assert [n.op_type for n in load_model(out).graph] == ["Relu"]


def test_pass_that_breaks_outputs_is_left_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The default tolerance catches a pass that changes outputs; the step is dropped, the rest kept."""
    from tests.conftest import write_text_model
    from tests.test_passes import _BreakOutputsPass  # noqa: F401  (registers test-break-outputs)

    model = write_text_model(
        tmp_path / "m.onnx",
        '<ir_version: 8, opset_import: ["" : 18]>\ng (float[2] x) => (float[2] y) { a = Identity(x)\n y = Relu(a) }',
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps: [test-break-outputs, remove-no-ops]\n")
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(model), "-o", str(out), "--recipe", str(recipe), "--no-bench", "--json"]) == 0
    captured = capsys.readouterr()
    assert "left out step 1 (test-break-outputs)" in captured.err
    report = json.loads(captured.out)
    assert report["skipped"][0]["pass_name"] == "test-break-outputs"
    assert [n.op_type for n in load_model(out).graph] == ["Relu"]
