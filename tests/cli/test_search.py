"""``graphopt search``: outputs (front JSON, PNG, checkpoint, ONNX front), resume, and bad input (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import numpy as np
import onnx
import pytest

from graphopt.cli import main
from graphopt.nas.spaces import get_space

SPACE = get_space("nb201")


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    """A synthetic table over every NB201 cell: acc grows with convolutions, lat with their size."""
    path = tmp_path_factory.mktemp("search") / "table.csv"
    rows = ["arch,acc,lat"]
    for arch in (cast(tuple[int, ...], a) for a in SPACE.enumerate()):
        acc = sum(2.0 if o == 2 else 1.0 if o == 3 else 0.0 for o in arch) + 0.01 * arch[0]
        lat = sum(9.0 if o == 2 else 1.0 if o == 3 else 0.5 if o == 4 else 0.0 for o in arch)
        rows.append(f'"{SPACE.to_string(arch)}",{acc},{lat}')
    path.write_text("\n".join(rows) + "\n")
    return path


def _args(table: Path, out: Path, *extra: str, workers: str | None = "1") -> list[str]:
    """Table look-ups are evaluated in this process (``--workers 1``) unless ``workers`` is None (the default pool)."""
    return ["search", "--space", "nb201", "--objective", f"table:{table}:acc:max", "--objective", f"table:{table}:lat",
            "--pop-size", "8", "--seed", "0", "-o", str(out), *extra, *(["--workers", workers] if workers else [])]


def test_search_writes_front_plot_checkpoint_and_onnx(table: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(_args(table, out, "--budget", "24", "--export-front", workers=None)) == 0  # a process pool
    front = json.loads((out / "front.json").read_text())
    assert front["queries"] == 24 and front["failures"] == 0 and front["algorithm"] == "nsga2"
    checkpoint = json.loads((out / "checkpoint.json").read_text())["records"]
    assert len(checkpoint) == 24
    values = np.array([[-r["values"][0], r["values"][1]] for r in checkpoint])
    for member in front["front"]:  # no evaluated cell dominates a front member
        point = np.array([-member["acc"], member["lat"]])
        assert not np.any(np.all(values <= point, axis=1) & np.any(values < point, axis=1))
    assert (out / "front.png").read_bytes()[:4] == b"\x89PNG"
    exported = sorted((out / "front").glob("*.onnx"))
    assert len(exported) == len(front["front"])
    onnx.checker.check_model(onnx.load(exported[0]))
    assert f"{len(front['front'])} on the front" in capsys.readouterr().out


def test_resume_continues_to_the_larger_budget(table: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(_args(table, out, "--budget", "10")) == 0
    first = json.loads((out / "checkpoint.json").read_text())["records"]
    assert main(_args(table, out, "--budget", "20", "--resume")) == 0
    records = json.loads((out / "checkpoint.json").read_text())["records"]
    assert len(records) == 20 and records[:10] == first
    fresh = tmp_path / "fresh"
    assert main(_args(table, fresh, "--budget", "20")) == 0
    assert json.loads((fresh / "checkpoint.json").read_text())["records"] == records


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--objective", "table:/no/such.csv:acc"], "no such file"),
        (["--objective", "flops"], "bad objective"),
        (["--budget", "0"], "--budget"),
        (["--space", "darts"], "no integer encoding"),
        (["--resume"], "no checkpoint"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    table: Path, tmp_path: Path, capsys, extra, message
) -> None:
    out = tmp_path / "run"
    assert main(_args(table, out, "--budget", "5", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_existing_search_needs_resume(table: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(_args(table, out, "--budget", "5")) == 0
    assert main(_args(table, out, "--budget", "5")) == 2
    assert "--resume" in capsys.readouterr().err


def test_missing_column_is_an_input_error(table: Path, tmp_path: Path, capsys) -> None:
    args = ["search", "--objective", f"table:{table}:nope", "-o", str(tmp_path / "run")]
    assert main(args) == 2
    assert "no column 'nope'" in capsys.readouterr().err
