"""Concurrency: two graphopt processes writing the same output path never leave a corrupt file;
the final file is always one of the two complete results, and no temporary file is left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.test_determinism import write_model

ROOT = Path(__file__).resolve().parent.parent

# Saves the model at argv[1] to argv[2] at least argv[3] times (external data when argv[4] == "1"), and
# goes on (at most 2000 times) until the file argv[5] exists, so that the reader has time to look.
_WRITER = """
import os, sys
from graphopt._io import load_model, save_model
model = load_model(sys.argv[1])
for i in range(2000):
    save_model(model, sys.argv[2], external_data=sys.argv[4] == "1")
    if i + 1 >= int(sys.argv[3]) and os.path.exists(sys.argv[5]):
        break
"""


def _weights(path: Path) -> dict[str, np.ndarray]:
    """The initializers of the model at ``path`` (external data resolved)."""
    return _weights_of(onnx.load(str(path)), path.parent)


def _weights_of(model: onnx.ModelProto, base_dir: Path | None = None) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t, base_dir=str(base_dir or "")) for t in model.graph.initializer}


def _describe(weights: dict[str, np.ndarray]) -> str:
    """Names, shapes and checksums: enough to tell a truncated or mixed read from a complete one."""
    return ", ".join(f"{k}{list(v.shape)}:{float(np.nansum(v)):.4f}" for k, v in sorted(weights.items()))


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _writers(
    sources: list[Path], out: Path, rounds: int, external: bool, stop: Path
) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(src), str(out), str(rounds), "1" if external else "0", str(stop)],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for src in sources
    ]


@pytest.mark.parametrize("external", [False, True], ids=["embedded", "external-data"])
def test_two_writers_same_path(tmp_path: Path, external: bool) -> None:
    sources = [write_model(tmp_path / "a.onnx", seed=1), write_model(tmp_path / "b.onnx", seed=2, hidden=96)]
    expected = [_weights(p) for p in sources]
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "model.onnx"
    stop = tmp_path / "stop"
    processes = _writers(sources, out, rounds=20, external=external, stop=stop)
    seen = 0
    while any(p.poll() is None for p in processes):
        if out.exists() and not external:
            # A single-file model is replaced by one rename: every read sees a complete file.
            data = out.read_bytes()
            read = _weights_of(onnx.load_from_string(data))
            assert any(_same(read, e) for e in expected), (
                f"a read of {len(data)} bytes is neither result: {_describe(read)}; "
                f"expected {[_describe(e) for e in expected]}")
            seen += 1
        if seen >= 10 or external:
            stop.touch()
        time.sleep(0.002)
    for process in processes:
        _, err = process.communicate()
        assert process.returncode == 0, err
    final = _weights(out)
    assert any(_same(final, e) for e in expected), "the final model is not one of the two results"
    names = sorted(p.name for p in folder.iterdir())
    assert names == (["model.onnx", "model.onnx.data"] if external else ["model.onnx"]), names
    if not external:
        assert seen > 0


def test_interleaved_external_data_saves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writer A stalls between renaming its data and its model while writer B saves in full:
    without the folder lock the final file would be A's model reading B's data."""
    import onnx_ir as ir

    from graphopt import _io

    models = [ir.load(write_model(tmp_path / f"{n}.onnx", seed=i, hidden=128 - 32 * i)) for i, n in enumerate("ab")]
    for model in models:
        ir.external_data.load_to_model(model)
    expected = [_weights(tmp_path / "a.onnx"), _weights(tmp_path / "b.onnx")]
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    real_replace = os.replace
    a_stalled = threading.Event()

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        real_replace(src, dst)
        if threading.current_thread().name == "writer-a" and Path(dst) == out.with_name("model.onnx.data"):
            a_stalled.set()
            time.sleep(0.5)

    monkeypatch.setattr(_io.os, "replace", replace)
    writer_a = threading.Thread(target=_io.save_model, args=(models[0], out), kwargs={"external_data": True},
                                name="writer-a")
    writer_a.start()
    assert a_stalled.wait(10)
    _io.save_model(models[1], out, external_data=True)
    writer_a.join(10)
    try:
        final = _weights(out)
    except Exception as exc:  # onnx cannot read data beyond the end of a shorter file
        pytest.fail(f"model and external data come from different writers: {exc}")
    assert any(_same(final, e) for e in expected), "model and external data come from different writers"


def test_two_cli_processes_same_output(tmp_path: Path) -> None:
    from graphopt.cli import main

    sources = [write_model(tmp_path / "a.onnx", seed=1), write_model(tmp_path / "b.onnx", seed=2, hidden=96)]
    references = []
    for src in sources:
        ref = tmp_path / f"ref-{src.stem}.onnx"
        assert main(["optimize", str(src), "-o", str(ref), "--no-bench"]) == 0
        references.append(ref.read_bytes())
    assert references[0] != references[1]
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "model.onnx"
    processes = [
        subprocess.Popen([sys.executable, "-m", "graphopt", "optimize", str(src), "-o", str(out), "--no-bench"],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONHASHSEED": str(i)})
        for i, src in enumerate(sources)
    ]
    for process in processes:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    assert out.read_bytes() in references
    assert [p.name for p in folder.iterdir()] == ["model.onnx"]
