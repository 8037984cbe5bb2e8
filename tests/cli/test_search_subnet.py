"""``graphopt search --space subnet``: sub-networks of a small BERT with latency and evaluation-set objectives,
process-pool evaluation, recorded failures, resume, and bad input (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.cli import main
from graphopt.feeds import input_specs, synthesize_feeds
from graphopt.nas.objectives import save_eval_set
from graphopt.nas.spaces.bert import BertSpace
from graphopt.runtime import make_session


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 3-layer BERT encoder (4 heads, MLP 64) and an evaluation set of its own outputs on 16 inputs."""
    folder = tmp_path_factory.mktemp("search-subnet")
    model = BertSpace(vocab_size=100, max_positions=64).build((3, 4, 32, 64), seed=2)
    ir.save(model, folder / "bert.onnx")
    inputs = synthesize_feeds(input_specs(model), batch=16, sequence=8, seed=1)
    return folder / "bert.onnx", save_eval_set(folder / "eval.npz", inputs, reference=model)


def _args(bert: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    return ["search", "--space", "subnet", "--model", str(bert[0]), "--objective", f"eval:{bert[1]}",
            "--head-fractions", "0.5,1", "--mlp-fractions", "0.25,0.5,1", "--pop-size", "6", "-o", str(out), *extra]


def test_subnet_search_writes_front_and_resumes(bert: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(_args(bert, out, "--objective", "macs", "--budget", "4", "--workers", "1")) == 0
    first = json.loads((out / "checkpoint.json").read_text())["records"]
    assert main(_args(bert, out, "--objective", "macs", "--budget", "7", "--workers", "1", "--resume",
                      "--export-front")) == 0
    records = json.loads((out / "checkpoint.json").read_text())["records"]
    assert len(records) == 7 and records[:4] == first
    front = json.loads((out / "front.json").read_text())
    assert front["space"] == "subnet" and front["model"] == str(bert[0]) and front["failed"] == []
    assert [o["name"] for o in front["objectives"]] == ["eval_cosine", "macs"]
    assert (out / "front.png").read_bytes()[:4] == b"\x89PNG"
    modes = {(out / name).stat().st_mode & 0o777 for name in ("front.png", "front.json", "checkpoint.json")}
    assert len(modes) == 1  # the plot is not left private by its temp file
    exported = sorted((out / "front").glob("*.onnx"))
    assert len(exported) == len(front["front"]) >= 1
    feeds = {k: v for k, v in np.load(bert[1]).items() if k in ("input_ids", "attention_mask")}
    for path, member in zip(exported, front["front"]):  # each file is its front member, and runs
        model = ir.load(path)
        assert model.metadata_props["graphopt.nas.arch"] == member["arch"]
        assert make_session(model).run(None, feeds)[0].shape == (16, 8, 32)
    for record in records:  # the cosine to the whole network's outputs: 1 for the whole network only
        whole = record["arch"] == "L0-A4-I64|L1-A4-I64|L2-A4-I64"
        assert (record["values"][0] == pytest.approx(1.0, abs=1e-6)) == whole
    assert "on the front" in capsys.readouterr().out


def test_failed_candidates_are_listed_in_the_front_json(bert: tuple[Path, Path], tmp_path: Path) -> None:
    module = tmp_path / "picky.py"
    module.write_text("import onnx\n\n\ndef layers(path):\n"
                      "    arch = {p.key: p.value for p in onnx.load(path).metadata_props}['graphopt.nas.arch']\n"
                      "    if '|' not in arch:\n        raise RuntimeError('one layer is not enough')\n"
                      "    return float(arch.count('|') + 1)\n")
    out = tmp_path / "run"
    assert main(_args(bert, out, "--objective", f"py:{module}:layers", "--budget", "8", "--algorithm", "random",
                      "--workers", "1")) == 0
    front = json.loads((out / "front.json").read_text())
    assert front["failures"] == len(front["failed"]) >= 1
    assert all("|" not in f["arch"] and f["error"] == "RuntimeError: one layer is not enough"
               for f in front["failed"])
    assert all("|" in m["arch"] for m in front["front"])


@pytest.mark.slow
def test_latency_and_eval_search_in_a_process_pool_resumes(bert: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    latency = "latency:batch=2,sequence=16,repeats=5,warmup=1"
    assert main(_args(bert, out, "--objective", latency, "--budget", "6", "--workers", "2")) == 0
    first = json.loads((out / "checkpoint.json").read_text())["records"]
    assert main(_args(bert, out, "--objective", latency, "--budget", "9", "--workers", "2", "--resume",
                      "--export-front")) == 0
    records = json.loads((out / "checkpoint.json").read_text())["records"]
    assert len(records) == 9 and records[:6] == first and not any(r["error"] for r in records)
    front = json.loads((out / "front.json").read_text())
    assert [o["name"] for o in front["objectives"]] == ["eval_cosine", "latency_ms"]
    assert all(m["latency_ms"] > 0 for m in front["front"])
    assert len(list((out / "front").glob("*.onnx"))) == len(front["front"])
    assert (out / "front.png").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "/no/such.onnx"], "no such file"),
        (["--head-fractions", "0.5,x"], "--head-fractions"),
        (["--head-fractions", "0,1"], "fractions in (0, 1]"),
        (["--layers", "9"], "layer choices"),
        (["--workers", "0"], "--workers"),
        (["--address", "auto"], "--address is for the ray backend"),
        (["--backend", "ray", "--workers", "2"], "--workers is for the local backend"),
        (["--objective", "latency:batch=0"], "latency options"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    bert: tuple[Path, Path], tmp_path: Path, capsys, extra: list[str], message: str
) -> None:
    out = tmp_path / "run"
    args = _args(bert, out, "--budget", "3")
    if extra[0] == "--model":
        args[args.index("--model") + 1] = extra[1]
        extra = []
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_model_and_space_must_agree(bert: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["search", "--space", "subnet", "--objective", "macs", "-o", str(out)]) == 2
    assert "needs --model" in capsys.readouterr().err
    assert main(["search", "--space", "nb201", "--model", str(bert[0]), "--objective", "macs", "-o", str(out)]) == 2
    assert "--model is for --space subnet" in capsys.readouterr().err
    assert not out.exists()
