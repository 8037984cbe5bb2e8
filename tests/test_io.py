from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from graphopt import _io
from graphopt._io import check_output_path, load_model, save_model
from graphopt.errors import InputError, InvalidModelError, UnsupportedError
from tests.conftest import SMALL_MLP, write_cycle_model, write_missing_initializer_model, write_text_model


def test_load_valid_model(mlp_path: Path) -> None:
    model = load_model(mlp_path)
    assert [v.name for v in model.graph.inputs] == ["x"]


@pytest.mark.parametrize(
    ("content", "error", "fragment"),
    [
        (b"", InvalidModelError, "empty file"),
        (b"\x8f\x01\xff\xfe random bytes \x00\x13" * 20, InvalidModelError, "not"),
    ],
)
def test_load_rejects_garbage(tmp_path: Path, content: bytes, error: type, fragment: str) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(error, match=fragment):
        load_model(path)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_model(tmp_path / "nope.onnx")


def test_load_truncated_model(tmp_path: Path, mlp_path: Path) -> None:
    data = mlp_path.read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModelError):
        load_model(path)


def test_load_rejects_cycle(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelError, match=r"DAG|cycle|neither"):
        load_model(write_cycle_model(tmp_path / "cycle.onnx"))


def test_load_rejects_missing_initializer(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelError, match="'w'"):
        load_model(write_missing_initializer_model(tmp_path / "missing.onnx"))


def test_load_rejects_unknown_op(tmp_path: Path) -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[2] x) => (float[2] y) { y = NoSuchOp(x) }
    """
    path = write_text_model(tmp_path / "unknown.onnx", text)
    with pytest.raises(UnsupportedError, match="NoSuchOp"):
        load_model(path)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    model = ir.from_onnx_text(SMALL_MLP)
    out = save_model(model, tmp_path / "out.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]
    assert load_model(out).graph.outputs[0].name == "y"


def test_save_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_save(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_io.ir, "save", broken_save)
    with pytest.raises(InputError, match="No space left"):
        save_model(ir.from_onnx_text(SMALL_MLP), tmp_path / "out.onnx")
    assert list(tmp_path.iterdir()) == []


def test_external_data_chosen_above_threshold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_io, "EXTERNAL_DATA_THRESHOLD", 64)
    model = ir.from_onnx_text(SMALL_MLP)
    model.graph.initializers["big"] = ir.Value(name="big", const_value=ir.tensor(np.ones((64,), np.float32)))
    save_model(model, tmp_path / "out.onnx")
    assert (tmp_path / "out.onnx.data").exists()
    loaded = load_model(tmp_path / "out.onnx")
    np.testing.assert_array_equal(loaded.graph.initializers["big"].const_value.numpy(), np.ones(64))


def test_model_over_2gb_round_trips(tmp_path: Path) -> None:
    """Protobuf cannot hold 2 GiB; saving must switch to external data by itself."""
    text = """
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4] x) => (float[N, 4] y) { y = Add(x, w0) }
    """
    model = ir.from_onnx_text(text)
    chunk = 600 * 1024 * 1024 // 4
    for i in range(4):  # 2.4 GB of weights
        array = np.full((chunk,), float(i), dtype=np.float32)
        model.graph.initializers[f"big{i}"] = ir.Value(name=f"big{i}", const_value=ir.tensor(array))
    model.graph.initializers["w0"] = ir.Value(name="w0", const_value=ir.tensor(np.ones((4,), np.float32)))
    out = save_model(model, tmp_path / "huge.onnx")
    del model
    assert out.stat().st_size < 10_000_000
    loaded = load_model(out)
    assert loaded.graph.initializers["big3"].const_value.numpy()[-1] == 3.0
    assert _io.model_bytes(loaded) > 2**31


def test_check_output_path_refuses_input(mlp_path: Path) -> None:
    with pytest.raises(InputError, match="overwrite the input"):
        check_output_path(mlp_path, mlp_path)


def test_check_output_path_refuses_missing_folder(tmp_path: Path, mlp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        check_output_path(tmp_path / "no" / "out.onnx", mlp_path)


def test_model_with_external_data_saves_inline_elsewhere(tmp_path: Path) -> None:
    source, target = tmp_path / "a", tmp_path / "b"
    source.mkdir()
    target.mkdir()
    ir.save(
        ir.from_onnx_text(SMALL_MLP_WITH_INITIALIZER),
        source / "m.onnx",
        external_data="m.onnx.data",
        size_threshold_bytes=0,
    )
    model = load_model(source / "m.onnx")
    save_model(model, target / "copy.onnx")
    assert sorted(p.name for p in target.iterdir()) == ["copy.onnx"]
    (source / "m.onnx.data").unlink()  # the copy must not depend on the original's data file
    copy = load_model(target / "copy.onnx")
    np.testing.assert_array_equal(copy.graph.initializers["w"].const_value.numpy(), [1, 2, 3, 4])


def test_session_from_model_with_external_data(tmp_path: Path) -> None:
    from graphopt.runtime import make_session

    ir.save(
        ir.from_onnx_text(SMALL_MLP_WITH_INITIALIZER),
        tmp_path / "m.onnx",
        external_data="m.onnx.data",
        size_threshold_bytes=0,
    )
    session = make_session(load_model(tmp_path / "m.onnx"))
    (y,) = session.run(None, {"x": np.zeros(4, np.float32)})
    np.testing.assert_array_equal(y, [1, 2, 3, 4])


SMALL_MLP_WITH_INITIALIZER = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[4] x) => (float[4] y) <float[4] w = {1, 2, 3, 4}> { y = Add(x, w) }
"""


def test_unsorted_graph_loads_sorted(tmp_path: Path) -> None:
    import onnx
    import onnx.helper as oh

    graph = oh.make_graph(
        [oh.make_node("Relu", ["a"], ["y"]), oh.make_node("Neg", ["x"], ["a"])],
        "unsorted",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
    path = tmp_path / "unsorted.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)]), path)
    assert [n.op_type for n in load_model(path).graph] == ["Neg", "Relu"]
