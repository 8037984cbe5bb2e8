"""``graphopt prune``: writes a smaller model atomically, one-line errors (exit 2), dry run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
import yaml

from graphopt._io import load_model
from graphopt.cli import main
from graphopt.provenance import read_provenance
from graphopt.prune import parameter_count
from graphopt.runtime import make_session
from tests.conftest import digest
from tests.rewrites.prune._toy import toy_cnn, toy_transformer, transformer_feeds


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "toy.onnx"
    ir.save(toy_transformer(), path)
    return path


def test_prune_heads_and_mlp(model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, calib = tmp_path / "pruned.onnx", tmp_path / "calib.npz"
    np.savez(calib, x=transformer_feeds(batch=4)["x"])
    before = digest(model_path)
    argv = ["prune", str(model_path), "-o", str(out), "--heads", "0.5", "--mlp", "0.25",
            "--importance", "activation", "--calib", str(calib), "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["applied"] == ["prune-heads", "prune-mlp"] and report["skipped"] == []
    pruned = load_model(out)
    assert report["parameters"]["after"] == parameter_count(pruned) < report["parameters"]["before"]
    assert [r["pass"] for r in read_provenance(pruned)] == ["prune-heads", "prune-mlp"]
    assert digest(model_path) == before


def test_prune_conv_channels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, out = tmp_path / "cnn.onnx", tmp_path / "cnn-pruned.onnx"
    ir.save(toy_cnn(), path)
    assert main(["prune", str(path), "-o", str(out), "--channels", "0.5"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert parameter_count(load_model(out)) == 112 + 148 + 25
    rounded = tmp_path / "cnn-rounded.onnx"
    assert main(["prune", str(path), "-o", str(rounded), "--channels", "0.4", "--multiple-of", "4"]) == 0
    assert parameter_count(load_model(rounded)) == 112 + 148 + 25  # 5 of 8 channels kept, rounded down to 4


def test_prune_hidden_channels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.rewrites.prune.test_hidden import embedded_toy, ids_feeds

    path, out, calib = tmp_path / "emb.onnx", tmp_path / "emb-pruned.onnx", tmp_path / "calib.npz"
    ir.save(embedded_toy(), path)
    np.savez(calib, ids=ids_feeds(batch=4)["ids"])
    argv = ["prune", str(path), "-o", str(out), "--hidden", "0.25", "--importance", "activation", "--calib",
            str(calib), "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["applied"] == ["prune-hidden"] and report["skipped"] == []
    assert len(report["hidden_channels_kept"]["y"]) == 12
    pruned = load_model(out)
    assert report["parameters"]["after"] == parameter_count(pruned) < report["parameters"]["before"]
    assert make_session(pruned).run(None, ids_feeds())[0].shape == (3, 5, 12)
    assert main(["prune", str(path), "-o", str(tmp_path / "table.onnx"), "--hidden", "0.5"]) == 0
    assert re.search(r"output y\s+8 channels kept", capsys.readouterr().out)


def test_prune_think_key_channels(model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "think.onnx"
    assert main(["prune", str(model_path), "-o", str(out), "--think", "0.5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["applied"] == ["prune-key-channels"]
    q = next(n for n in load_model(out).graph if n.name == "l0.q.matmul").inputs[1]
    assert q is not None and q.const_value is not None and q.const_value.shape == (16, 8)  # 4 heads x 2 of 4


def test_two_four_sparsity(model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sparse.onnx"
    assert main(["prune", str(model_path), "-o", str(out), "--nm", "2:4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["applied"] == ["prune-unstructured"]
    weight = next(n for n in load_model(out).graph if n.name == "l0.up.matmul").inputs[1]
    assert weight is not None and weight.const_value is not None
    assert float((weight.const_value.numpy() == 0).mean()) == 0.5


def test_dry_run_prints_a_replayable_recipe(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prune", str(model_path), "--layers", "1", "--heads", "0.25", "--dry-run"]) == 0
    recipe = yaml.safe_load(capsys.readouterr().out)
    assert [s["pass"] for s in recipe["steps"]] == ["prune-layers", "prune-heads"]
    assert recipe["steps"][0]["settings"]["count"] == 1
    assert main(["prune", str(model_path), "--hidden", "0.25", "--think", "0.5", "--mlp", "0.5", "--dry-run"]) == 0
    recipe = yaml.safe_load(capsys.readouterr().out)
    assert [s["pass"] for s in recipe["steps"]] == ["prune-mlp", "prune-key-channels", "prune-hidden"]
    assert recipe["steps"][2]["settings"]["fraction"] == 0.25


@pytest.mark.parametrize(("extra", "message"), [
    ([], "nothing to prune"),
    (["--heads", "1.5"], "fraction must be in [0, 1)"),
    (["--heads", "0.5", "--importance", "wanda"], "needs calibration data"),
    (["--heads", "0.5", "--importance", "activation", "--calib", "missing.npz"], "not found"),
    (["--layers", "5"], "cannot drop 5 of 2 layers"),
    (["--nm", "2-4"], "pattern must be N:M"),
    (["--unstructured", "0.5", "--importance", "random"], "not random"),
    (["--hidden", "1.5"], "fraction must be in [0, 1)"),
    (["--mlp", "0.5", "--multiple-of", "0"], "multiple_of must be at least 1"),
    (["--think", "0.5", "--importance", "random"], "--think ranks key channels by activation or magnitude"),
    (["--hidden", "0.5"], "nothing was pruned: residual stream 0: the hidden channels reach graph input 'x'"),
])
def test_bad_input_is_one_line_and_writes_nothing(model_path: Path, tmp_path: Path, extra: list[str], message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "never.onnx"
    assert main(["prune", str(model_path), "-o", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_refuses_to_overwrite_its_input(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = digest(model_path)
    assert main(["prune", str(model_path), "-o", str(model_path), "--heads", "0.5"]) == 2
    assert digest(model_path) == before
