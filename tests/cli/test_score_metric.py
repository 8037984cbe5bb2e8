"""``graphopt score --metric``: one score per model or architecture in order, several metrics, bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.cli import main
from graphopt.nas.metrics import score_model
from graphopt.nas.spaces import get_space
from tests.nas.metrics.conftest import tiny_model

ARCHS = ["(3, 3, 3, 3, 3, 3)", "(1, 1, 1, 1, 1, 1)", "|nor_conv_1x1~0|+|skip_connect~0|none~1|+|none~0|none~1|"
         "avg_pool_3x3~2|"]


@pytest.fixture
def archs_file(tmp_path):
    path = tmp_path / "archs.txt"
    path.write_text("# three cells\n" + "\n".join(ARCHS) + "\n")
    return path


def test_space_archs_in_input_order(archs_file, capsys):
    assert main(["score", "--metric", "flops", "--space", "nb201", "--archs", str(archs_file), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    space = get_space("nb201")
    assert got == [pytest.approx(score_model(space.build(space.parse(a)), "flops"), rel=1e-12) for a in ARCHS]
    assert got[0] > got[2] > got[1]  # all 1x1 convs > one conv > empty cells


def test_models_with_several_metrics_and_inputs(tmp_path, capsys):
    paths = []
    for seed in (0, 1):
        paths.append(tmp_path / f"m{seed}.onnx")
        ir.save(tiny_model(seed), paths[-1])
    feeds = tmp_path / "feeds.npz"
    x = np.random.default_rng(0).standard_normal((6, 3, 6, 6)).astype(np.float32)
    np.savez(feeds, input=x)
    argv = ["score", "--metric", "nwot,params", *map(str, paths), "--inputs", str(feeds), "--json"]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [sorted(r) for r in rows] == [["nwot", "params"]] * 2
    assert rows[1]["nwot"] == pytest.approx(score_model(tiny_model(1), "nwot", data={"input": x}))
    assert main(["score", "--metric", "synflow,jacob_cov", str(paths[0])]) == 0
    assert len(capsys.readouterr().out.split()) == 2


@pytest.mark.parametrize(("argv", "message"), [
    (["--metric", "nope", "MODEL"], "unknown metric 'nope'"),
    (["--metric", "synflow", "--std", "MODEL"], "--std goes with --predictor"),
    (["--metric", "synflow", "missing.onnx"], "missing.onnx"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, message):
    model = tmp_path / "m.onnx"
    ir.save(tiny_model(), model)
    argv = [str(model) if a == "MODEL" else a for a in argv]
    assert main(["score", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_bad_inputs_file(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    ir.save(tiny_model(), model)
    bad = tmp_path / "bad.npz"
    np.savez(bad, other=np.zeros((2, 3, 6, 6), np.float32))
    assert main(["score", "--metric", "nwot", str(model), "--inputs", str(bad)]) == 2
    assert "input" in capsys.readouterr().err
