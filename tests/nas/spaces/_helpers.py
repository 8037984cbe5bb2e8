"""Helpers for the search-space tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

#: ``../shared/data/nasbench`` from the project root
NASBENCH = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "nasbench"


def run_model(model: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Check ``model`` with the ONNX checker and run it with onnxruntime on CPU."""
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)  # type: ignore[return-value]


def model_bytes(model: ir.Model) -> bytes:
    return ir.to_proto(model).SerializeToString()


def images(batch: int = 2, size: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)}
