from __future__ import annotations

import subprocess
import sys

import pytest

from graphopt import __version__
from graphopt.cli import main


def test_help_lists_verbs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in ("inspect", "optimize", "verify", "bench", "encode", "demo"):
        assert verb in out


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys, graphopt.cli; graphopt.cli.build_parser(); "
        "print(sorted(m for m in ('onnx', 'onnx_ir', 'onnxruntime', 'torch', 'numpy') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_python_dash_m_works() -> None:
    result = subprocess.run([sys.executable, "-m", "graphopt", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and __version__ in result.stdout
