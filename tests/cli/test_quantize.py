"""``graphopt quantize``: writes a quantized model atomically, one-line errors, dry run, replayable recipe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
import yaml

from graphopt._io import load_model
from graphopt.cli import main
from graphopt.quantize import QUANTIZATION_KEY
from tests.conftest import digest
from tests.rewrites.test_quantize_activations import block_model, feeds


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "block.onnx"
    ir.save(block_model(), path)
    return path


@pytest.fixture
def calib_path(tmp_path: Path) -> Path:
    path = tmp_path / "calib.npz"
    np.savez(path, x=feeds()["x"])
    return path


def test_quantize_w8a8(model_path: Path, calib_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, recipe = tmp_path / "q.onnx", tmp_path / "r.yaml"
    before = digest(model_path)
    argv = ["quantize", str(model_path), "-o", str(out), "--calib", str(calib_path), "--smooth-alpha", "0.5",
            "--save-recipe", str(recipe)]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    model = load_model(out)
    assert "QuantizeLinear" in [n.op_type for n in model.graph]
    assert json.loads(model.metadata_props[QUANTIZATION_KEY])["options"]["smooth_alpha"] == 0.5
    assert digest(model_path) == before
    steps = yaml.safe_load(recipe.read_text())["steps"]
    assert [s["pass"] for s in steps] == ["smooth-quant", "quantize-activations"]
    # The recipe replays through `optimize`.
    replay = tmp_path / "replay.onnx"
    assert main(["optimize", str(model_path), "-o", str(replay), "--recipe", str(recipe), "--no-bench"]) == 0
    assert replay.exists()


def test_target_fidelity_json(model_path: Path, calib_path: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "q.onnx"
    argv = ["quantize", str(model_path), "-o", str(out), "--calib", str(calib_path), "--scheme", "w8a8-dynamic",
            "--target-fidelity", "0.9", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fidelity"] >= 0.9 and report["weight_bytes"]["after"] < report["weight_bytes"]["before"]


def test_dry_run_and_list(model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quantize", str(model_path), "--dry-run", "--calib", "c.npz", "--method", "mse"]) == 0
    recipe = yaml.safe_load(capsys.readouterr().out)
    assert recipe["steps"][0]["settings"]["method"] == "mse"
    assert main(["quantize", "--list-schemes"]) == 0
    assert "w8a8-dynamic" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == [model_path]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "needs calibration data"),
        (["--scheme", "w9"], "unknown quantization scheme"),
        (["--calib-text", "t.txt"], "--tokenizer"),
        (["--calib", "missing.npz"], "no such file"),
        (["--calib", "CALIB", "--target-fidelity", "2"], "target fidelity"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    model_path: Path, calib_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    extra: list[str], message: str,
) -> None:
    out = tmp_path / "q.onnx"
    extra = [str(calib_path) if e == "CALIB" else e for e in extra]
    assert main(["quantize", str(model_path), "-o", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_unreachable_target_exits_1(model_path: Path, calib_path: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import graphopt.quantize as facade

    monkeypatch.setattr(facade, "fidelity", lambda reference, outputs: 0.0)
    out = tmp_path / "q.onnx"
    argv = ["quantize", str(model_path), "-o", str(out), "--calib", str(calib_path), "--target-fidelity", "0.9"]
    assert main(argv) == 1
    assert not out.exists()


@pytest.mark.slow
def test_calib_text_with_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from graphopt.data import stdlib_sentences
    from graphopt.frontend import minilm_dir

    text = """<ir_version: 10, opset_import: ["" : 18]>
    g (int64[N, S] input_ids, int64[N, S] attention_mask) => (float[N, S, 8] y)
    <float[30522, 8] table = {0.0}> {
      e = Gather(table, input_ids)
      y = Identity(e)
    }"""
    model = ir.from_onnx_text(text)
    weights = np.random.default_rng(0).standard_normal((30522, 8)).astype(np.float32)
    model.graph.initializers["table"].const_value = ir.Tensor(weights, name="table")
    path, corpus = tmp_path / "m.onnx", tmp_path / "calib.txt"
    ir.save(model, path)
    corpus.write_text("\n".join(stdlib_sentences(12, seed=1)))
    out, saved = tmp_path / "q.onnx", tmp_path / "calib.npz"
    argv = ["quantize", str(path), "-o", str(out), "--scheme", "w8a8-dynamic", "--calib-text", str(corpus),
            "--tokenizer", str(minilm_dir()), "--sequence", "32", "--save-calib", str(saved), "--json"]
    assert main(argv) == 0
    with np.load(saved) as data:
        assert data["input_ids"].shape == (12, 32) and set(data.files) == {"input_ids", "attention_mask"}
    assert json.loads(capsys.readouterr().out)["scheme"] == "w8a8-dynamic"
