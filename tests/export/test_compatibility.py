from __future__ import annotations

from pathlib import Path

import onnx_ir as ir

from graphopt.export.compatibility import (
    FALLBACK,
    NATIVE,
    UNSUPPORTED,
    CompatibilityReport,
    NodeCompatibility,
    check_compatibility,
    cpu_kernel_status,
)
from graphopt.export.lowering import lower_model
from graphopt.export.targets import parse_target
from tests.export.conftest import float_mlp, quantized_mlp

# Erf has an ONNX schema for double but onnxruntime registers a CPU kernel for float only;
# Sinh has a CPU kernel but is missing from the CUDA table.
MIXED = """<ir_version: 8, opset_import: ["" : 18]>
mixed (double[N] d, float[N] x) => (double[N] e, float[N] s) {
  e = Erf(d)
  r = Relu(x)
  s = Sinh(r)
}"""


def _by_op(report: CompatibilityReport) -> dict[str, NodeCompatibility]:
    return {n.op: n for n in report.nodes}


def test_cpu_probe_all_native() -> None:
    report = check_compatibility(float_mlp(), parse_target("ort-cpu"))
    assert report.ok and report.method == "probe"
    assert report.counts == {"native": 3, "fallback": 0, "unsupported": 0, "unknown": 0}
    assert all(n.provider == "CPUExecutionProvider" for n in report.nodes)


def test_cpu_probe_finds_the_node_without_kernel() -> None:
    model = ir.from_onnx_text(MIXED)
    status = cpu_kernel_status(model)
    ops = {node.op_type: status[id(node)] for node in model.graph}
    assert ops["Erf"] == (False, "onnxruntime has no CPU kernel for these input types")
    assert ops["Relu"] == (True, "") and ops["Sinh"] == (True, "")
    report = check_compatibility(model, parse_target("ort-cpu"))
    nodes = _by_op(report)
    assert nodes["Erf"].status == UNSUPPORTED and nodes["Erf"].provider is None
    assert not report.ok and report.counts[UNSUPPORTED] == 1


def test_cuda_structural_check_and_cpu_fallback() -> None:
    report = check_compatibility(ir.from_onnx_text(MIXED), parse_target("ort-cuda"))
    assert report.method.startswith("structural")
    nodes = _by_op(report)
    assert nodes["Relu"].status == NATIVE and nodes["Relu"].provider == "CUDAExecutionProvider"
    sinh = nodes["Sinh"]
    assert (sinh.status, sinh.provider) == (FALLBACK, "CPUExecutionProvider")
    assert "not in the CUDA kernel table" in sinh.reason
    # Erf is in the CUDA table (types are checked coarsely there), so it is native on CUDA.
    assert nodes["Erf"].status == NATIVE


def test_tensorrt_rejects_asymmetric_qdq_and_contrib_ops(tmp_path: Path) -> None:
    spec = parse_target("ort-tensorrt")
    asym = _by_op(check_compatibility(quantized_mlp(symmetric=False), spec))["DequantizeLinear"]
    assert (asym.status, asym.provider) == (FALLBACK, "CUDAExecutionProvider")
    assert "UINT4" in asym.reason
    sym = check_compatibility(quantized_mlp(symmetric=True), spec)
    assert sym.ok, sym.problems()
    # A graph lowered for the CPU (MatMulNBits) is not for TensorRT: those nodes fall back to CUDA.
    lowered = lower_model(quantized_mlp(symmetric=True), parse_target("ort-cpu"), tmp_path / "w")
    nbits = _by_op(check_compatibility(lowered.model, spec))["com.microsoft::MatMulNBits"]
    assert (nbits.status, nbits.provider) == (FALLBACK, "CUDAExecutionProvider")
    assert "custom-domain" in nbits.reason


def test_tensorrt_opset_issue() -> None:
    old = ir.from_onnx_text('<ir_version: 4, opset_import: ["" : 8]>\ng (float[2] x) => (float[2] y) { y = Relu(x) }')
    report = check_compatibility(old, parse_target("ort-tensorrt"))
    assert not report.ok and "opset 8" in report.issues[0]
    assert report.counts[NATIVE] == 1


def test_report_dict_groups_problems() -> None:
    data = check_compatibility(ir.from_onnx_text(MIXED), parse_target("ort-cuda")).to_dict()
    assert data["counts"] == {"native": 2, "fallback": 1, "unsupported": 0, "unknown": 0}
    assert [(p["op"], p["status"], p["nodes"]) for p in data["problems"]] == [("Sinh", "fallback", ["Sinh:s"])]
    assert len(data["nodes"]) == 3 and "CUDAExecutionProvider" in data["source"] + data["provider"]
