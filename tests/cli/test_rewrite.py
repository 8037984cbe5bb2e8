"""``graphopt rewrite`` and ``graphopt inspect --activations``: specs, reports, exit codes, atomic outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.cli import main
from graphopt.cli._rewrite import parse_pass_spec
from graphopt.errors import UsageError
from graphopt.feeds import input_specs, save_feeds, synthesize_feeds
from graphopt.rewrites._markers import ADAPTER_PREFIX, GATE_PREFIX
from tests.conftest import digest
from tests.rewrites.test_attention import ATTENTION


@pytest.fixture
def attention_path(tmp_path: Path) -> Path:
    path = tmp_path / "attn.onnx"
    ir.save(ir.from_onnx_text(ATTENTION), path)
    return path


@pytest.fixture
def feeds_path(tmp_path: Path, attention_path: Path) -> Path:
    specs = input_specs(ir.load(attention_path))
    feeds = synthesize_feeds(specs, shapes={"x": (4, 6, 8), "mask": (4, 1, 1, 6)}, seed=1)
    return save_feeds(feeds, tmp_path / "calib.npz")


def test_parse_pass_spec_converts_to_setting_types():
    assert parse_pass_spec("lora:rank=4,targets=q+v,alpha=8,pattern=none") == (
        "lora", {"rank": 4, "targets": ("q", "v"), "alpha": 8.0, "pattern": None})
    assert parse_pass_spec("clipped-softmax:gamma=-0.01,scope=all") == (
        "clipped-softmax", {"gamma": -0.01, "scope": "all"})
    assert parse_pass_spec("merge-adapters") == ("merge-adapters", {})


@pytest.mark.parametrize(("spec", "message"), [
    ("lora:rank", "expected key=value"), ("lora:rank=x", "not a valid int"), ("lora:depth=2", "no setting 'depth'"),
    ("no-such-pass", "unknown pass"),
])
def test_parse_pass_spec_errors(spec, message):
    with pytest.raises(UsageError, match=message):
        parse_pass_spec(spec)


def test_identity_rewrites_verify_and_write(attention_path, feeds_path, tmp_path, capsys):
    out, before = tmp_path / "out.onnx", digest(attention_path)
    argv = ["rewrite", str(attention_path), "-o", str(out), "--inputs", str(feeds_path), "--verify", "--atol", "0",
            "--rtol", "0", "--pass", "clipped-softmax:gamma=0", "--pass", "gated-attention",
            "--pass", "lora:rank=2,targets=q+k+v+o", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert [p["pass"] for p in report["passes"]] == ["clipped-softmax", "gated-attention", "lora"]
    assert all(p["modified"] for p in report["passes"])
    assert report["verify"]["passed"] and report["verify"]["outputs"][0]["max_abs"] == 0.0
    model = ir.load(out)
    names = set(model.graph.initializers)
    assert {f"{GATE_PREFIX}0.weight", f"{ADAPTER_PREFIX}0.q.A", f"{ADAPTER_PREFIX}0.o.B"} <= names
    assert "graphopt.recipe" in model.metadata_props
    assert digest(attention_path) == before  # the input is never modified


def test_changed_outputs_exit_1_with_verify_and_write_nothing(attention_path, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    argv = ["rewrite", str(attention_path), "-o", str(out), "--shape", "x=2,5,8", "--shape", "mask=2,1,1,5",
            "--pass", "clipped-softmax:alpha=4", "--verify"]
    assert main(argv) == 1
    _, err = capsys.readouterr()
    assert "nothing written" in err and not out.exists()
    assert main(argv[:-1]) == 0  # without --verify the change is reported and the model written
    stdout = capsys.readouterr().out
    assert "clipped-softmax" in stdout and f"wrote {out}" in stdout and out.exists()


def test_merge_after_training_like_change_matches_adapted(attention_path, tmp_path):
    adapted, merged = tmp_path / "adapted.onnx", tmp_path / "merged.onnx"
    assert main(["rewrite", str(attention_path), "-o", str(adapted), "--shape", "x=2,5,8", "--shape",
                 "mask=2,1,1,5", "--pass", "lora:rank=2,b_std=0.5"]) == 0
    assert main(["rewrite", str(adapted), "-o", str(merged), "--shape", "x=2,5,8", "--shape", "mask=2,1,1,5",
                 "--pass", "merge-adapters", "--verify", "--atol", "1e-5", "--rtol", "0"]) == 0
    assert not any(n.startswith(ADAPTER_PREFIX) for n in ir.load(merged).graph.initializers)


@pytest.mark.parametrize(("argv", "message"), [
    (["--pass", "lora:rank=0"], "rank must be >= 1"),
    (["--pass", "lora"], "missing -o/--output"),
    ([], "at least one --pass"),
    (["--pass", "clipped-softmax:gamma=1"], "gamma must be <= 0"),
])
def test_bad_usage_is_one_line_exit_2(attention_path, capsys, argv, message):
    assert main(["rewrite", str(attention_path), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_dry_run_and_list(attention_path, capsys):
    assert main(["rewrite", str(attention_path), "--pass", "lora:targets=q+v", "--dry-run", "--json"]) == 0
    recipe = json.loads(capsys.readouterr().out)
    assert recipe["steps"] == [{"pass": "lora", "settings": {"targets": ["q", "v"]}}]
    assert main(["rewrite", str(attention_path), "--list-passes"]) == 0
    listing = capsys.readouterr().out
    for name in ("clipped-softmax", "gated-attention", "lora", "nola", "bitdelta", "merge-adapters"):
        assert name in listing


def test_inspect_activations(attention_path, feeds_path, capsys):
    assert main(["inspect", str(attention_path), "--activations", str(feeds_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    (layer,) = data["outliers"]["layers"]
    assert layer["layer"] == 0 and layer["tokens"] == 4 * 6
    # Recompute from the output projection's tensor with numpy.
    model = ir.load(attention_path)
    from graphopt.calibration import iter_activations
    from graphopt.feeds import load_feeds

    (batch,) = list(iter_activations(model, load_feeds(feeds_path), [layer["tensor"]], batch_size=None))
    x = batch[layer["tensor"]].reshape(-1, 8).astype(np.float64)
    centred = x - x.mean(-1, keepdims=True)
    kurtosis = ((centred ** 4).mean(-1) / (centred ** 2).mean(-1) ** 2).mean()
    assert layer["max_abs"] == pytest.approx(np.abs(x).max(), rel=1e-6)
    assert layer["kurtosis"] == pytest.approx(kurtosis, rel=1e-6)
    assert main(["inspect", str(attention_path), "--activations", str(feeds_path)]) == 0
    assert "attention output outliers (1 layers)" in capsys.readouterr().out


def test_inspect_activations_bad_feeds_exit_2(attention_path, tmp_path, capsys):
    bad = save_feeds({"y": np.zeros((2, 3), np.float32)}, tmp_path / "bad.npz")
    assert main(["inspect", str(attention_path), "--activations", str(bad)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
