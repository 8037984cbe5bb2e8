"""``graphopt inspect``: report, JSON output, ``--shape``, and bad input (exit 2, one line, no traceback)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest

from graphopt.cli import main

_TEXT = """<ir_version: 10, opset_import: ["" : 17]>
mlp (float[N,128,64] x) => (float[N,128,64] y) {
    h = MatMul(x, w1)
    a = Relu(h)
    y = MatMul(a, w2)
}
"""
_MACS = 2 * 128 * 64 * 256


@pytest.fixture
def model_path(tmp_path):
    proto = onnx.parser.parse_model(_TEXT)
    rng = np.random.default_rng(0)
    for name, shape in (("w1", (64, 256)), ("w2", (256, 64))):
        array = rng.standard_normal(shape).astype(np.float32)
        proto.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    path = tmp_path / "mlp.onnx"
    ir.save(ir.serde.deserialize_model(proto), path)
    return path


def test_json_output(model_path, capsys):
    assert main(["inspect", str(model_path), "--json"]) == 0
    out, err = capsys.readouterr()
    data = json.loads(out)  # stdout holds the JSON and nothing else
    assert data["cost"]["macs"] == _MACS
    assert data["cost"]["input_shapes"] == {"x": [1, 128, 64]}
    assert data["op_histogram"] == {"MatMul": 2, "Relu": 1}
    assert data["parameter_count"] == 2 * 64 * 256
    assert data["mlp_blocks"][0]["activation"] == "relu"
    assert data["inputs"] == [{"name": "x", "dtype": "float", "shape": ["N", 128, 64]}]
    assert err == ""


def test_shape_option(model_path, capsys):
    assert main(["inspect", str(model_path), "--json", "--shape", "x=4,128,64"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["cost"]["input_shapes"] == {"x": [4, 128, 64]}
    assert data["cost"]["macs"] == 4 * _MACS


def test_human_report(model_path, capsys):
    assert main(["inspect", str(model_path)]) == 0
    out = capsys.readouterr().out
    assert "4.19M MACs" in out and "x=[1,128,64]" in out
    assert "MLP blocks (1)" in out and "relu" in out
    assert "parameters  32,768" in out


def test_the_model_file_is_left_alone(model_path, capsys):
    before = hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert main(["inspect", str(model_path), "--json"]) == 0
    assert hashlib.sha256(model_path.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in model_path.parent.iterdir()) == ["mlp.onnx"]


def _one_line_error(capsys) -> str:
    out, err = capsys.readouterr()
    assert out == ""
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_missing_file(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nope.onnx")]) == 2
    assert "no such file" in _one_line_error(capsys)


def test_random_bytes(tmp_path, capsys):
    path = tmp_path / "noise.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    assert main(["inspect", str(path), "--json"]) == 2
    assert "noise.onnx" in _one_line_error(capsys)


@pytest.mark.parametrize(
    ("shape", "message"),
    [("y=1,128,64", "unknown inputs: y"), ("x=1,128", "rank"), ("x=1,a", "integers")],
)
def test_bad_shape(model_path, capsys, shape, message):
    assert main(["inspect", str(model_path), "--shape", shape]) == 2
    assert message in _one_line_error(capsys)
