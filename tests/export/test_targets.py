from __future__ import annotations

import pytest

from graphopt.errors import UsageError
from graphopt.export.targets import TARGET_NAMES, max_opset, parse_target


@pytest.mark.parametrize("name", [n for n in TARGET_NAMES if n != "onnx-opsetN"])
def test_fixed_targets_parse(name: str) -> None:
    spec = parse_target(name)
    assert spec.name == name
    assert spec.to_dict()["model_file"] == spec.model_file


def test_lowering_choices_per_target() -> None:
    cpu, cuda, trt, ort = (parse_target(n) for n in ("ort-cpu", "ort-cuda", "ort-tensorrt", "ort-format"))
    assert cpu.matmulnbits and not cpu.float16 and cpu.check == "probe"
    assert cuda.matmulnbits and cuda.float16 and cuda.check == "structural" and cuda.atol > cpu.atol
    assert cuda.ort_optimization is None  # a CPU session would bake its float32 fallbacks into the graph
    # TensorRT parses standard ONNX only: QDQ stays, no contrib kernels.
    assert not trt.matmulnbits and trt.fallbacks == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert ort.ort_format and ort.model_file == "model.ort" and cpu.model_file == "model.onnx"


def test_opset_target() -> None:
    spec = parse_target("onnx-opset17")
    assert spec.opset == 17 and spec.provider is None and not spec.matmulnbits


@pytest.mark.parametrize("name", ["ort-gpu", "onnx-opset", "onnx-opsetx", "ORT-CPU", ""])
def test_unknown_target(name: str) -> None:
    with pytest.raises(UsageError, match="unknown target"):
        parse_target(name)


@pytest.mark.parametrize("opset", [0, 6, 999])
def test_opset_out_of_range(opset: int) -> None:
    with pytest.raises(UsageError, match=rf"opset {opset} is out of range \(7\.\.{max_opset()}\)"):
        parse_target(f"onnx-opset{opset}")
