"""``graphopt finetune``: distillation end to end, adapters only, and one-line refusals (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.cli import main
from graphopt.feeds import save_feeds
from graphopt.runtime import make_session
from tests.conftest import digest
from tests.executor._parity import rand
from tests.executor.test_train import _pair


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    teacher, student = _pair()
    paths = {"teacher": tmp_path / "teacher.onnx", "student": tmp_path / "student.onnx",
             "data": tmp_path / "train.npz", "eval": tmp_path / "eval.npz", "out": tmp_path / "out.onnx"}
    ir.save(teacher, paths["teacher"])
    ir.save(student, paths["student"])
    save_feeds({"x": rand(64, 6, seed=6)}, paths["data"])
    save_feeds({"x": rand(32, 6, seed=7)}, paths["eval"])
    return paths


def test_distils_writes_and_verifies(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    before = digest(files["student"])
    code = main(["finetune", str(files["student"]), "-o", str(files["out"]), "--data", str(files["data"]),
                 "--teacher", str(files["teacher"]), "--eval-data", str(files["eval"]), "--steps", "60", "--lr", "0.02",
                 "--batch-size", "16", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["loss_after"] < 0.5 * report["loss_before"]
    assert report["max_abs_vs_onnxruntime"] <= 1e-4
    assert digest(files["student"]) == before
    held = {"x": rand(32, 6, seed=7)}
    target = make_session(files["teacher"]).run(None, held)[0]
    err_before = np.mean((make_session(files["student"]).run(None, held)[0] - target) ** 2)
    err_after = np.mean((make_session(files["out"]).run(None, held)[0] - target) ** 2)
    assert err_after == pytest.approx(report["loss_after"], rel=1e-4)
    assert err_after < 0.5 * err_before


def test_trains_only_the_adapters(tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    import graphopt.rewrites  # noqa: F401
    from graphopt.passes import create_pass

    student = ir.load(files["student"])
    create_pass("lora", {"targets": (), "pattern": ".*", "rank": 2})(student)
    adapted = tmp_path / "adapted.onnx"
    ir.save(student, adapted)
    code = main(["finetune", str(adapted), "-o", str(files["out"]), "--data", str(files["data"]), "--teacher",
                 str(files["teacher"]), "--trainable", "adapters", "--steps", "30", "--lr", "0.02"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "wrote" in out
    trained = ir.load(files["out"])
    for name, value in student.graph.initializers.items():
        changed = not np.array_equal(value.const_value.numpy(), trained.graph.initializers[name].const_value.numpy())
        assert changed == name.startswith("graphopt.adapter."), name


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--data": "missing.npz"}, "no such file"),
        ({"-o": "student.onnx"}, "refusing to overwrite"),
        ({"--trainable": "gates"}, "'gates' selects no"),
        ({"--steps": "0"}, "must be positive"),
        ({"--loss": "hinge"}, "invalid choice"),
    ],
)
def test_refusals_are_one_line_and_write_nothing(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], change: dict[str, str], message: str
) -> None:
    args = {"-o": str(files["out"]), "--data": str(files["data"]), "--teacher": str(files["teacher"])}
    args.update({k: str(files["out"].parent / v) if k in ("--data", "-o") else v for k, v in change.items()})
    argv = ["finetune", str(files["student"])] + [x for kv in args.items() for x in kv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and ("\n" not in err or "invalid choice" in err)
    assert not files["out"].exists()


def test_data_that_does_not_fit_the_model(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    save_feeds({"x": rand(8, 5)}, files["data"])
    code = main(["finetune", str(files["student"]), "-o", str(files["out"]), "--data", str(files["data"]),
                 "--teacher", str(files["teacher"])])
    assert code == 2
    assert "'x' has shape (8, 5)" in capsys.readouterr().err
    assert not files["out"].exists()


def test_dry_run_prints_the_settings(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["finetune", str(files["student"]), "-o", str(files["out"]), "--data", str(files["data"]),
                 "--trainable", "adapters", "--dry-run"])
    assert code == 0
    settings = json.loads(capsys.readouterr().out)["settings"]
    assert settings["trainable"] == "adapters" and settings["steps"] == 100
    assert not files["out"].exists()
