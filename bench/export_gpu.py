"""Run the GPU targets' bundles of all-MiniLM-L6-v2 on a GPU: node placement, verification, latency.

Two steps, because the GPU machine cannot reach the models' sources:

``pack``  (here)  stores the fp32 and 4-bit MiniLM sources that ``bench/export_minilm.py`` caches, with their
                  float32 weights as float16 bytes (half the size, to travel) and tokenised real
                  sentences (standard-library docstrings, batch 8 x 128) as ``feeds.npz``.
``run``   (on the GPU machine, with onnxruntime-gpu) restores float32 sources whose weights are the
                  float16-rounded originals, exports each to ``ort-cuda`` and ``ort-tensorrt`` with
                  ``graphopt.export.export_model(on_device="auto")``, which verifies the bundle on the
                  target's provider against the source on CPU, reads onnxruntime's node placement and
                  measures bundle / source latency, both on the provider, alternating in one worker;
                  then runs the fp16 bundle's ``run_example.py`` on CUDA. Writes ``export_gpu.json``/``.md``.

Run: ``python bench/export_gpu.py pack --cache DIR -o PACKED`` then, on the GPU machine,
``python bench/export_gpu.py run PACKED --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import _common
import numpy as np
from _common import log

PACKED_KEY = "graphopt.bench.float16_packed"
TARGETS = ("ort-cuda", "ort-tensorrt")
BATCH, SEQUENCE = 8, 128


def pack(cache: Path, out: Path) -> None:
    """Write the two MiniLM sources with float16-stored weights, and the real-sentence feeds."""
    import onnx

    from graphopt.data import stdlib_sentences, tokenize
    from graphopt.frontend import minilm_dir

    out.mkdir(parents=True, exist_ok=True)
    for name in ("fp32", "w4"):
        path = cache / f"minilm-{name}.onnx"
        if not path.exists():
            raise SystemExit(f"{path} is missing: run bench/export_minilm.py --cache {cache} first")
        proto = onnx.load(str(path))
        packed = []
        for tensor in proto.graph.initializer:
            if tensor.data_type != onnx.TensorProto.FLOAT:
                continue
            values = onnx.numpy_helper.to_array(tensor)
            if values.size >= 1024 and np.abs(values).max() < np.finfo(np.float16).max:  # keep masks' -inf etc.
                tensor.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float16), tensor.name))
                packed.append(tensor.name)
        proto.metadata_props.add(key=PACKED_KEY, value=json.dumps(packed))
        onnx.save(proto, str(out / f"{name}.onnx"))
        log(f"packed {name}: {len(packed)} float32 initializers as float16")
    feeds = tokenize(minilm_dir(), stdlib_sentences(BATCH, seed=0), sequence=SEQUENCE)
    np.savez(out / "feeds.npz", **feeds)


def unpack(packed: Path, out: Path) -> Path:
    """The float32 model whose weights are the packed float16 values."""
    import onnx

    proto = onnx.load(str(packed))
    props = {p.key: p.value for p in proto.metadata_props}
    names = set(json.loads(props[PACKED_KEY]))
    for tensor in proto.graph.initializer:
        if tensor.name in names:
            values = onnx.numpy_helper.to_array(tensor).astype(np.float32)
            tensor.CopyFrom(onnx.numpy_helper.from_array(values, tensor.name))
    kept = [p for p in proto.metadata_props if p.key != PACKED_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.save(proto, str(out))
    return out


def gpu_name() -> str | None:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def export_one(source: Path, target: str, folder: Path, feeds: dict[str, Any]) -> dict[str, Any]:
    from graphopt.errors import GraphoptError
    from graphopt.export import export_model

    try:
        result = export_model(source, target, folder, feeds=feeds, bench=True, force=True, on_device="auto")
    except GraphoptError as exc:
        return {"target": target, "error": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:  # a crash is a result too: record it, go on with the other rows
        return {"target": target, "error": f"crash: {type(exc).__name__}: {exc}"}
    manifest = result.manifest
    device = manifest["device"]
    placement = device.get("placement") or {}
    elsewhere: dict[str, int] = {}
    for node in placement.get("elsewhere", []):
        key = f"{node['op']} -> {node['provider']}"
        elsewhere[key] = elsewhere.get(key, 0) + 1
    return {
        "target": target,
        "bytes": [manifest["source"]["bytes"], sum(f["bytes"] for f in manifest["model"]["files"])],
        "lowering": [s["step"] for s in manifest["lowering"] if s["applied"]],
        "structural": manifest["compatibility"]["counts"],
        "device": {k: v for k, v in device.items() if k != "placement"},
        "placement": {"nodes": placement.get("nodes"), "counts": placement.get("counts"), "elsewhere": elsewhere},
        "verification": {k: manifest["verification"].get(k) for k in
                         ("ran", "passed", "provider", "optimization", "max_abs", "min_cosine", "reason")},
        "benchmark": manifest["benchmark"],
        "bundle": str(folder),
    }


def run(packed: Path, out: Path) -> dict[str, Any]:
    import onnxruntime

    if hasattr(onnxruntime, "preload_dlls"):
        onnxruntime.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels, where present
    from graphopt.export.on_device import provider_problem

    with np.load(packed / "feeds.npz") as data:
        feeds = {name: data[name] for name in data.files}
    info: dict[str, Any] = {
        "gpu": gpu_name(),
        "onnxruntime": onnxruntime.__version__,
        "providers": onnxruntime.get_available_providers(),
        "problems": {p: provider_problem(p) for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")},
    }
    log(json.dumps(info))
    rows: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="export-gpu-") as scratch:
        for name in ("fp32", "w4"):
            source = unpack(packed / f"{name}.onnx", Path(scratch) / f"minilm-{name}.onnx")
            rows[name] = []
            for target in TARGETS:
                log(f"{name} -> {target}")
                rows[name].append(export_one(source, target, Path(scratch) / f"{name}-{target}", feeds))
                log(json.dumps(rows[name][-1], default=str)[:600])
        example = subprocess.run(
            [sys.executable, str(Path(scratch) / "fp32-ort-cuda" / "run_example.py"), "--inputs",
             str(packed / "feeds.npz")], capture_output=True, text=True, check=False, timeout=300)
        info["run_example"] = {"returncode": example.returncode, "stdout": example.stdout.strip().splitlines()[:3],
                               "stderr": example.stderr.strip()[-500:]}
    machine = _common.machine_info()
    machine["versions"]["onnxruntime"] = onnxruntime.__version__  # the package metadata may name another build
    return {
        "benchmark": "export_gpu",
        "settings": {"batch": BATCH, "sequence": SEQUENCE, "targets": list(TARGETS),
                     "sources": "fp32 and 4-bit MiniLM of bench/export_minilm.py, weights rounded to float16"},
        "machine": machine,
        "device": info,
        "total_seconds": round(_common.elapsed(), 1),
        "sources": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    info = result["device"]
    lines = [
        "# graphopt export: all-MiniLM-L6-v2 bundles run on a GPU",
        "",
        f"GPU: {info['gpu']}; onnxruntime {info['onnxruntime']} ({', '.join(info['providers'])}). Feeds: "
        f"{result['settings']['batch']} standard-library sentences x {result['settings']['sequence']} tokens. "
        "Verification: bundle on the target's provider (onnxruntime defaults) against the source on CPU. "
        "Latency: bundle / source, both on the provider, median (p10-p90) over alternating rounds in one worker. "
        "Placement: nodes of onnxruntime's optimised graph per provider, from its profiler.",
        "",
    ]
    for provider, problem in info["problems"].items():
        lines.append(f"- {provider}: {problem or 'usable'}")
    example = info.get("run_example") or {}
    lines += [f"- fp16 bundle's run_example.py: exit {example.get('returncode')}, "
              f"{'; '.join(example.get('stdout') or [])}", "",
              "| source | target | bytes (source -> bundle) | lowering | placement | verification "
              "| latency bundle / source | source ms |",
              "|---|---|---|---|---|---|---|---|"]
    for name, rows in result["sources"].items():
        for row in rows:
            if "error" in row:
                lines.append(f"| {name} | {row['target']} | - | - | - | {row['error']} | - | - |")
                continue
            placement = row["placement"]
            placed = (", ".join(f"{n} {p.replace('ExecutionProvider', '')}" for p, n in placement["counts"].items())
                      if placement["counts"] else f"not read: {row['device']['reason']}")
            if placement["elsewhere"]:
                placed += " (" + ", ".join(f"{k} x{v}" for k, v in placement["elsewhere"].items()) + ")"
            ver = row["verification"]
            verified = (f"{'ok' if ver['passed'] else 'FAILED'} on {ver['provider'].replace('ExecutionProvider', '')}, "
                        f"max abs {ver['max_abs']:.2g}, min cosine {ver['min_cosine']:.5f}" if ver["ran"]
                        else f"not run: {ver['reason']}")
            bench = row["benchmark"] or {}
            if "latency_ratio" in bench:
                r = bench["latency_ratio"]
                latency = (f"{r['median']:.3f} ({r['p10']:.2f}-{r['p90']:.2f}) on "
                           f"{bench['provider'].replace('ExecutionProvider', '')}")
                source_ms = f"{bench['source_median_ms']:.2f}"
            else:
                latency, source_ms = f"not measured: {bench.get('error')}", "-"
            lines.append(f"| {name} | {row['target']} | {row['bytes'][0]:,} -> {row['bytes'][1]:,} | "
                         f"{', '.join(row['lowering']) or 'none'} | {placed} | {verified} | {latency} | {source_ms} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p_pack = sub.add_parser("pack")
    p_pack.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "graphopt-bench-cache")
    p_pack.add_argument("-o", "--output", type=Path, required=True)
    p_run = sub.add_parser("run")
    p_run.add_argument("packed", type=Path)
    p_run.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.step == "pack":
        pack(args.cache, args.output)
        return 0
    result = run(args.packed, args.out)
    text = markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    _common.write_json(args.out / "export_gpu.json", result)
    _common.write_atomic(args.out / "export_gpu.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
