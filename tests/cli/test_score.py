"""``graphopt score``: one score per input in order, JSON, spread, zero-shot ONNX, and bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.cli import main
from graphopt.nas.spaces import get_space
from graphopt.predict import FeatureSpec, save_predictor, train_predictor
from tests.predict.conftest import write_mlp

SPACE = get_space("nb201")


@pytest.fixture(scope="module")
def predictors(tmp_path_factory):
    """A one-hot + structural predictor of conv count (both heads) and a one-hot-only one."""
    folder = tmp_path_factory.mktemp("score")
    archs = [SPACE.to_string(a) for a in SPACE.sample(np.random.default_rng(5), 12)]
    y = np.array([sum(3 if o == 2 else 1 if o == 3 else 0 for o in SPACE.parse(a)) for a in archs], float)
    full = train_predictor(archs, y, spec=FeatureSpec(("onehot", "structural"), "nb201"), model="ridge", members=3)
    onehot = train_predictor(archs, y, spec=FeatureSpec(("onehot",), "nb201"), model="ridge", members=3)
    return save_predictor(full, folder / "full.pred"), save_predictor(onehot, folder / "onehot.pred")


@pytest.fixture
def archs_file(tmp_path):
    path = tmp_path / "archs.txt"
    path.write_text("# best first\n(2, 2, 2, 2, 2, 2)\n\n(3, 3, 3, 3, 3, 3)\n"
                    "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|\n")
    return path


def test_scores_archs_in_input_order(predictors, archs_file, capsys):
    assert main(["score", "--predictor", str(predictors[1]), "--space", "nb201", "--archs", str(archs_file)]) == 0
    values = [float(v) for v in capsys.readouterr().out.split()]
    assert len(values) == 3
    assert values[0] > values[1] > values[2]  # 18, 6 and 0 conv weight


def test_json_is_a_list_of_numbers_and_std_adds_spread(predictors, archs_file, capsys):
    argv = ["score", "--predictor", str(predictors[1]), "--space", "nb201", "--archs", str(archs_file), "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert isinstance(data, list) and len(data) == 3 and all(isinstance(v, float) for v in data)
    assert main([*argv, "--std"]) == 0
    rich = json.loads(capsys.readouterr().out)
    assert [r["score"] for r in rich] == data and all(r["std"] >= 0 for r in rich)


def test_scores_onnx_files_zero_shot(predictors, tmp_path, capsys):
    paths = []
    for k, arch in enumerate([(2, 2, 2, 2, 2, 2), (1, 1, 1, 1, 1, 1)]):
        paths.append(str(tmp_path / f"{k}.onnx"))
        ir.save(SPACE.build(arch), paths[-1])
    paths.append(str(write_mlp(tmp_path / "mlp.onnx", [16])))  # any ONNX file gets a score
    assert main(["score", "--predictor", str(predictors[0]), *paths, "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert len(scores) == 3 and scores[0] > scores[1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--space", "nb201"], "give either MODEL.onnx files or --space SPACE --archs FILE"),
        (["--archs", "ARCHS"], "--archs needs --space"),
        (["--space", "nb201", "--archs", "missing.txt"], "missing.txt: no such file"),
        (["MODEL", "--space", "nb201", "--archs", "ARCHS"], "give either MODEL.onnx files or"),
        (["nope.onnx"], "nope.onnx: no such file"),
    ],
)
def test_bad_input_exits_2_with_one_line(predictors, archs_file, tmp_path, capsys, argv, message):
    model = write_mlp(tmp_path / "m.onnx", [4])
    argv = [str(archs_file) if a == "ARCHS" else str(model) if a == "MODEL" else a for a in argv]
    assert main(["score", "--predictor", str(predictors[0]), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_onehot_predictor_explains_it_cannot_score_onnx(predictors, tmp_path, capsys):
    model = write_mlp(tmp_path / "m.onnx", [4])
    assert main(["score", "--predictor", str(predictors[1]), str(model)]) == 2
    assert "score architectures with --space nb201 --archs FILE" in capsys.readouterr().err


def test_bad_architecture_and_bad_predictor(predictors, tmp_path, capsys):
    archs = tmp_path / "bad.txt"
    archs.write_text("(2, 2, 2)\n")
    assert main(["score", "--predictor", str(predictors[1]), "--space", "nb201", "--archs", str(archs)]) == 2
    assert "six op indices" in capsys.readouterr().err
    junk = tmp_path / "junk.pred"
    junk.write_text("hello")
    assert main(["score", "--predictor", str(junk), "--space", "nb201", "--archs", str(archs)]) == 2
    assert "not a readable graphopt predictor file" in capsys.readouterr().err


def test_predictor_is_required(capsys):
    assert main(["score", "m.onnx"]) == 2
    assert "--predictor" in capsys.readouterr().err
