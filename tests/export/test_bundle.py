from __future__ import annotations

import os
from pathlib import Path

import pytest

from graphopt.errors import InputError
from graphopt.export.bundle import check_output_dir, file_record, signature, staged_directory
from tests.export.conftest import float_mlp


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_check_output_dir(tmp_path: Path) -> None:
    assert check_output_dir(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    with pytest.raises(InputError, match=r"exists and is not empty; .* --force"):
        check_output_dir(full)
    check_output_dir(full, force=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="exists and is not a folder"):
        check_output_dir(tmp_path / "file", force=True)
    with pytest.raises(InputError, match="does not exist"):
        check_output_dir(tmp_path / "missing" / "bundle")


def test_staged_directory_renames_into_place(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    with staged_directory(out) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".bundle.")
        (staging / "a.txt").write_text("a")
        assert not out.exists()
    assert _leftovers(out) == ["a.txt"] and _leftovers(tmp_path) == ["bundle"]
    assert os.stat(out).st_mode & 0o077 == 0o777 & ~_umask() & 0o077  # not mkdtemp's private 0700


def test_staged_directory_leaves_nothing_on_failure(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), staged_directory(tmp_path / "bundle") as staging:
        (staging / "a.txt").write_text("a")
        raise RuntimeError("boom")
    assert _leftovers(tmp_path) == []


def test_staged_directory_force_replaces(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with staged_directory(out, force=True) as staging:
        (staging / "new.txt").write_text("new")
    assert _leftovers(out) == ["new.txt"] and _leftovers(tmp_path) == ["bundle"]
    # Without --force the old content survives a failed attempt untouched.
    with pytest.raises(InputError), staged_directory(out):
        pass
    assert _leftovers(out) == ["new.txt"]


def test_signature_and_file_record(tmp_path: Path) -> None:
    assert signature(float_mlp()) == {
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["N", 64]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": ["N", 16]}],
    }
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    assert file_record(path) == {
        "name": "f.bin", "bytes": 3, "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    }


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
