"""Bad input on every verb: one clear line on stderr, exit 2, nothing written, input untouched."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest

from graphopt.cli import main
from tests.conftest import digest, write_cycle_model, write_missing_initializer_model


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _random(p: Path) -> None:
    p.write_bytes(np.random.default_rng(1).bytes(4096))


def _truncated(p: Path, source: Path) -> None:
    data = source.read_bytes()
    p.write_bytes(data[: len(data) * 2 // 3])


def _cycle(p: Path) -> None:
    write_cycle_model(p)


def _missing_initializer(p: Path) -> None:
    write_missing_initializer_model(p)


def _unknown_op(p: Path) -> None:
    graph = oh.make_graph(
        [oh.make_node("FancyOp", ["x"], ["y"])],
        "unknown",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)]), p)


BAD_MODELS: dict[str, Callable[..., None]] = {
    "empty": _empty,
    "random-bytes": _random,
    "truncated": _truncated,
    "cycle": _cycle,
    "missing-initializer": _missing_initializer,
    "unknown-op": _unknown_op,
}

VERBS = {
    "inspect": lambda bad, good, out: ["inspect", str(bad)],
    "optimize": lambda bad, good, out: ["optimize", str(bad), "-o", str(out), "--no-bench"],
    "verify": lambda bad, good, out: ["verify", str(good), str(bad)],
    "bench": lambda bad, good, out: ["bench", str(bad), "--runs", "2", "--warmup", "1"],
}


def _assert_clean_failure(capsys: pytest.CaptureFixture[str], code: int, folder: Path, before: set[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.count("\n") == 0, f"expected one line, got:\n{err}"
    assert "Traceback" not in err
    assert err.startswith("graphopt ")
    assert {p.name for p in folder.iterdir()} == before, "something was left behind"
    return err


@pytest.mark.parametrize("verb", sorted(VERBS))
@pytest.mark.parametrize("kind", sorted(BAD_MODELS))
def test_bad_model(verb: str, kind: str, tmp_path: Path, mlp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / f"{kind}.onnx"
    maker = BAD_MODELS[kind]
    maker(bad, mlp_path) if kind == "truncated" else maker(bad)
    before_files = {p.name for p in tmp_path.iterdir()}
    before_digest = digest(bad)
    code = main(VERBS[verb](bad, mlp_path, tmp_path / "out.onnx"))
    _assert_clean_failure(capsys, code, tmp_path, before_files)
    assert digest(bad) == before_digest


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_missing_file(verb: str, tmp_path: Path, mlp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = {p.name for p in tmp_path.iterdir()}
    code = main(VERBS[verb](tmp_path / "absent.onnx", mlp_path, tmp_path / "out.onnx"))
    assert "no such file" in _assert_clean_failure(capsys, code, tmp_path, before)


@pytest.mark.parametrize(
    ("feeds", "fragment"),
    [
        ({"wrong": np.zeros((2, 4), np.float32)}, "do not match"),
        ({"x": np.zeros((2, 5), np.float32)}, "expects"),
        ({"x": np.zeros((2,), np.float32)}, "rank"),
    ],
)
@pytest.mark.parametrize("verb", ["optimize", "verify", "bench"])
def test_wrong_feeds(
    verb: str,
    feeds: dict[str, np.ndarray],
    fragment: str,
    tmp_path: Path,
    mlp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    npz = tmp_path / "feeds.npz"
    np.savez(npz, **feeds)
    before = {p.name for p in tmp_path.iterdir()}
    argv = [*VERBS[verb](mlp_path, mlp_path, tmp_path / "out.onnx"), "--inputs", str(npz)]
    if verb == "verify":
        argv = ["verify", str(mlp_path), str(mlp_path), "--inputs", str(npz)]
    code = main(argv)
    assert fragment in _assert_clean_failure(capsys, code, tmp_path, before)


def test_output_over_input_refused(mlp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = digest(mlp_path)
    code = main(["optimize", str(mlp_path), "-o", str(mlp_path), "--no-bench"])
    assert "overwrite the input" in _assert_clean_failure(
        capsys, code, mlp_path.parent, {p.name for p in mlp_path.parent.iterdir()}
    )
    assert digest(mlp_path) == before


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder(tmp_path: Path, mlp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code = main(["optimize", str(mlp_path), "-o", str(locked / "out.onnx"), "--no-bench"])
        assert "not writable" in _assert_clean_failure(capsys, code, locked, set())
    finally:
        locked.chmod(0o700)


def test_output_in_missing_folder(tmp_path: Path, mlp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["optimize", str(mlp_path), "-o", str(tmp_path / "no" / "out.onnx"), "--no-bench"])
    assert "does not exist" in _assert_clean_failure(capsys, code, tmp_path, {p.name for p in tmp_path.iterdir()})


def test_output_path_is_a_file_in_place_of_folder(
    tmp_path: Path, mlp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An output under a path component that is a regular file cannot be written (even by root)."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["optimize", str(mlp_path), "-o", str(blocker / "out.onnx"), "--no-bench"])
    _assert_clean_failure(capsys, code, tmp_path, {p.name for p in tmp_path.iterdir()})


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["optimize"]) == 2
    assert main(["no-such-verb"]) == 2
    assert main([]) == 2
