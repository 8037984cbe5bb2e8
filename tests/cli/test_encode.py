"""``graphopt encode``: text, variants, features, JSON, ``--shape`` and bad input, through the verb's
own ``register``/``run`` (the lead registers the verb in ``graphopt.cli``)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest

import graphopt.cli._encode as encode_verb
from graphopt.errors import InputError, UsageError
from graphopt.predict import FEATURE_NAMES

_TEXT = """<ir_version: 10, opset_import: ["" : 17]>
mlp (float[N,16] x) => (float[N,10] y) {
    h = MatMul(x, w1)
    a = Relu(h)
    y = MatMul(a, w2)
}
"""


@pytest.fixture
def model_path(tmp_path):
    proto = onnx.parser.parse_model(_TEXT)
    rng = np.random.default_rng(0)
    for name, shape in (("w1", (16, 32)), ("w2", (32, 10))):
        proto.graph.initializer.append(
            onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        )
    path = tmp_path / "mlp.onnx"
    ir.save(ir.serde.deserialize_model(proto), path)
    return path


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="graphopt")
    encode_verb.register(parser.add_subparsers())
    args = parser.parse_args(["encode", *argv])
    return args.func(args)


def test_prints_the_full_encoding(model_path, capsys):
    assert _run([str(model_path)]) == 0
    out = capsys.readouterr().out
    assert out == "In1:1x16 --> MatMul(_, Param[16,32]) --> Relu --> MatMul(_, Param[32,10]) --> Out1:1x10\n"


def test_variant_and_shape(model_path, capsys):
    assert _run([str(model_path), "--variant", "ops"]) == 0
    assert capsys.readouterr().out == "In1 --> MatMul --> Relu --> MatMul --> Out1\n"
    assert _run([str(model_path), "--variant", "shapes", "--shape", "x=4,16"]) == 0
    assert capsys.readouterr().out == "In1:4x16 --> MatMul --> Relu --> MatMul --> Out1:4x10\n"


def test_features_table(model_path, capsys):
    assert _run([str(model_path), "--features"]) == 0
    out = capsys.readouterr().out
    rows = dict(line.split() for line in out.splitlines()[2:])
    assert list(rows) == list(FEATURE_NAMES)
    assert rows["parameter_count"] == str(16 * 32 + 32 * 10)
    assert rows["depth"] == "3" and rows["op_MatMul"] == "2"


def test_json_has_encoding_and_features(model_path, capsys):
    assert _run([str(model_path), "--json", "--variant", "params"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["variant"] == "params"
    assert data["encoding"] == "In1 --> MatMul(_, Param[16,32]) --> Relu --> MatMul(_, Param[32,10]) --> Out1"
    assert list(data["features"]) == list(FEATURE_NAMES)
    assert data["features"]["macs"] == 16 * 32 + 32 * 10


def test_bad_input(tmp_path, model_path):
    missing = tmp_path / "missing.onnx"
    with pytest.raises(InputError) as info:
        _run([str(missing)])
    assert info.value.exit_code == 2
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model at all")
    with pytest.raises(InputError):
        _run([str(garbage)])
    with pytest.raises(UsageError):
        _run([str(model_path), "--shape", "nope=1,16"])
    with pytest.raises(SystemExit) as exit_info:
        _run([str(model_path), "--variant", "tokens"])
    assert exit_info.value.code == 2
