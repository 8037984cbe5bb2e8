"""Models over 2 GB: a synthesised 2.2 GB model (weights in external data) loads, optimizes with
the default recipe (verified), quantizes its weights and saves with external data, in a worker
process whose peak resident memory must stay below 2.5x the model's size."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
WIDTH = 4096
LAYERS = 33  # 33 x 4096 x 4096 float32 = 2.21e9 bytes (2 GiB is 2.15e9)
MODEL_BYTES = LAYERS * WIDTH * WIDTH * 4
PEAK_LIMIT = 2.5

# Runs in a fresh process; prints one JSON line of stage timings and peak RSS (ru_maxrss) after each.
_WORKER = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np
from graphopt._io import load_model, save_model
from graphopt.pipeline import optimize_verified
from graphopt.recipes import NAMED_RECIPES, Recipe, RecipeStep

src, work, WIDTH = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
feeds = {"x": np.random.default_rng(0).standard_normal((2, WIDTH)).astype(np.float32)}
stages, start = [], time.perf_counter()

def mark(name, **extra):
    stages.append({"stage": name, "seconds": round(time.perf_counter() - start, 1),
                   "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, **extra})

model = load_model(src)
mark("load")
result = optimize_verified(src, NAMED_RECIPES["default"], feeds, original=model)
mark("optimize", passed=result.passed, max_abs=result.report.max_abs if result.report else None,
     failure=result.failure)
optimized = save_model(result.model, work / "optimized.onnx", external_data=True)
del result, model
mark("save-optimized")
recipe = Recipe("w4", (RecipeStep("quantize-weights", {"bits": 4, "block_size": 32}),))
quantized = optimize_verified(optimized, recipe, feeds)
mark("quantize", cosine=quantized.report.min_cosine if quantized.report else None, failure=quantized.failure)
save_model(quantized.model, work / "quantized.onnx", external_data=True)
mark("save-quantized")
print(json.dumps(stages))
"""


def synthesize(path: Path) -> None:
    """``y = sum_i Tanh(MatMul(x, W_i))`` over ``LAYERS`` branches, weights written straight to
    ``<path>.data`` one at a time (the test process never holds the model)."""
    rng = np.random.default_rng(0)
    data = path.with_name(path.name + ".data")
    nodes, initializers, value, offset = [], [], "", 0
    with open(data, "wb") as handle:
        for i in range(LAYERS):
            weight = rng.standard_normal((WIDTH, WIDTH), dtype=np.float32) * np.float32(1 / np.sqrt(WIDTH))
            handle.write(weight.tobytes())
            tensor = onnx.TensorProto(name=f"w{i}", data_type=onnx.TensorProto.FLOAT, dims=[WIDTH, WIDTH])
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, val in (("location", data.name), ("offset", str(offset)), ("length", str(weight.nbytes))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, val
            offset += weight.nbytes
            initializers.append(tensor)
            nodes += [oh.make_node("MatMul", ["x", f"w{i}"], [f"h{i}"]), oh.make_node("Tanh", [f"h{i}"], [f"t{i}"])]
            if value:
                nodes.append(oh.make_node("Add", [value, f"t{i}"], [f"s{i}"]))
            value = f"s{i}" if value else f"t{i}"
    graph = oh.make_graph(
        nodes,
        "big",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", WIDTH])],
        [oh.make_tensor_value_info(value, onnx.TensorProto.FLOAT, ["N", WIDTH])],
        initializer=initializers,
    )
    path.write_bytes(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 21)]).SerializeToString())


@pytest.mark.slow
def test_model_over_2gb_round_trip(tmp_path: Path) -> None:
    if psutil.virtual_memory().available < 3 * MODEL_BYTES:
        pytest.skip(f"needs {3 * MODEL_BYTES / 2**30:.1f} GiB of free memory")
    if shutil.disk_usage(tmp_path).free < 5 * MODEL_BYTES:
        pytest.skip(f"needs {5 * MODEL_BYTES / 2**30:.1f} GiB of free disk")
    src = tmp_path / "big.onnx"
    synthesize(src)
    assert src.stat().st_size + src.with_name("big.onnx.data").stat().st_size > 2 * 10**9
    work = tmp_path / "work"
    work.mkdir()
    argv = [sys.executable, "-c", _WORKER, str(src), str(work), str(WIDTH)]
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stderr[-3000:]
    stages = {s["stage"]: s for s in json.loads(run.stdout.strip().splitlines()[-1])}
    print(json.dumps(stages, indent=1))  # the measured numbers, for the report (-s)
    assert stages["optimize"]["passed"], stages["optimize"]["failure"]
    assert stages["quantize"]["cosine"] is not None and stages["quantize"]["cosine"] > 0.95
    for name in ("optimized.onnx", "quantized.onnx"):
        loaded = onnx.load(str(work / name), load_external_data=False)
        assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in loaded.graph.initializer), name
        onnx.checker.check_model(str(work / name))
    quantized_bytes = sum(p.stat().st_size for p in work.glob("quantized.onnx*"))
    assert quantized_bytes < MODEL_BYTES / 4
    peak = max(s["peak_rss"] for s in stages.values())
    assert peak < PEAK_LIMIT * MODEL_BYTES, f"peak RSS {peak / 2**30:.2f} GiB = {peak / MODEL_BYTES:.2f}x the model"
