from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from graphopt.cli import main
from graphopt.errors import InputError, UnsupportedError
from graphopt.export import export_model, exporter
from graphopt.export.on_device import node_placement, provider_problem

CUDA = "CUDAExecutionProvider"
cuda_usable = provider_problem(CUDA) is None


def test_cpu_provider_is_always_usable() -> None:
    assert provider_problem("CPUExecutionProvider") is None


@pytest.mark.skipif(cuda_usable, reason="this machine runs CUDA")
def test_missing_provider_is_explained() -> None:
    problem = provider_problem(CUDA)
    assert problem is not None and CUDA in problem


def test_node_placement_counts_every_node_of_the_run(q4_mlp_path: Path) -> None:
    feeds = {"x": np.ones((2, 64), dtype=np.float32)}
    placement = node_placement(q4_mlp_path, "CPUExecutionProvider", feeds)
    assert placement["nodes"] > 0
    assert placement["counts"] == {"CPUExecutionProvider": placement["nodes"]}
    assert placement["elsewhere"] == []


def test_node_placement_rejects_wrong_feeds(q4_mlp_path: Path) -> None:
    with pytest.raises(InputError, match="could not run"):
        node_placement(q4_mlp_path, "CPUExecutionProvider", {"x": np.ones((2, 3), dtype=np.float32)})


@pytest.mark.skipif(cuda_usable, reason="this machine runs CUDA")
def test_gpu_target_without_its_provider(q4_mlp_path: Path, tmp_path: Path) -> None:
    result = export_model(q4_mlp_path, "ort-cuda", tmp_path / "auto")
    device = result.manifest["device"]
    assert device["provider"] == CUDA and not device["usable"] and CUDA in device["reason"]
    assert result.manifest["verification"]["provider"] == "CPUExecutionProvider"
    with pytest.raises(UnsupportedError, match="cannot check the bundle on its target"):
        export_model(q4_mlp_path, "ort-cuda", tmp_path / "required", on_device="require")
    assert not (tmp_path / "required").exists()
    assert main(["export", str(q4_mlp_path), "--target", "ort-cuda", "-o", str(tmp_path / "cli"),
                 "--on-device", "require"]) == 2
    assert not (tmp_path / "cli").exists()


def test_usable_provider_runs_verification_placement_and_bench_there(
    q4_mlp_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stand the CPU provider in for a GPU one: the plumbing is the same, only the provider differs.
    def on_cpu(spec: Any, on_device: str) -> dict[str, Any]:
        return {"provider": "CPUExecutionProvider", "usable": True, "reason": "ran on the target's provider"}

    monkeypatch.setattr(exporter, "_device_provider", on_cpu)
    result = export_model(q4_mlp_path, "ort-cuda", tmp_path / "b", bench=True, threads=1)
    manifest = result.manifest
    assert manifest["verification"]["ran"] and manifest["verification"]["passed"]
    assert manifest["verification"]["optimization"] == "all" and "note" not in manifest["verification"]
    placement = manifest["device"]["placement"]
    assert placement["counts"] == {"CPUExecutionProvider": placement["nodes"]}
    assert manifest["benchmark"]["provider"] == "CPUExecutionProvider"
    assert manifest["benchmark"]["latency_ratio"]["median"] > 0


def test_on_device_setting_is_checked(q4_mlp_path: Path, tmp_path: Path) -> None:
    from graphopt.errors import UsageError

    with pytest.raises(UsageError, match="on_device"):
        export_model(q4_mlp_path, "ort-cuda", tmp_path / "x", on_device="sometimes")
