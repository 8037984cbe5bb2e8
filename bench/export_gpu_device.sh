#!/usr/bin/env bash
# On the GPU machine (repo root): install onnxruntime-gpu and onnx-ir from wheels in PARTS (default
# /tmp/parts: the onnxruntime-gpu wheel split with `split -b 58M -d -a 1 WHEEL ort.part.`, because one
# transfer to that machine holds 64 MiB; each part was carried in its own call and copied there), then run
# `bench/export_gpu.py run` on the packed sources in PACKED (default /tmp/packed: fp32.onnx, w4.onnx,
# feeds.npz from `bench/export_gpu.py pack`). Results go to $OUT (or bench/results).
set -euo pipefail
parts=${1:-/tmp/parts}
packed=${2:-/tmp/packed}
wheel=/tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
cat "$parts"/ort.part.* > "$wheel"  # the glob sorts the parts in order
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$wheel" "$parts"/onnx_ir-*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# onnxruntime's CUDA provider loads cuBLAS/cuDNN/cuFFT from the nvidia-* wheels next to PyTorch; its benchmark
# worker is a separate process, so the folders go on LD_LIBRARY_PATH rather than through preload_dlls alone.
libs=$(python3 -c "import glob, os, site; print(':'.join(sorted({os.path.dirname(p) for s in site.getsitepackages() for p in glob.glob(s + '/nvidia/**/lib*.so*', recursive=True)})))")
export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
nvidia-smi -L
python3 bench/export_gpu.py run "$packed" --out "${OUT:-bench/results}"
