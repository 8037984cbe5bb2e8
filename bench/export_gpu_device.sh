#!/usr/bin/env bash
# On the GPU machine (repo root): install the carried onnxruntime-gpu wheel (split in parts to travel)
# and onnx-ir, then run `bench/export_gpu.py run` on the packed sources; results go to $OUT (or bench/results).
# Expects .dev/c*/ort.part.* (the wheel's parts in order), .dev/c*/onnx_ir-*.whl, .dev/p*/ (packed models, feeds).
set -euo pipefail
wheel=/tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
cat .dev/c*/ort.part.* > "$wheel"  # the glob sorts c1..c5 in order
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$wheel" .dev/c*/onnx_ir-*.whl
mkdir -p /tmp/packed && cp .dev/c5/fp32.onnx .dev/p2/* /tmp/packed/
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
libs=$(python3 -c "import glob, os, site; print(':'.join(sorted({os.path.dirname(p) for s in site.getsitepackages() for p in glob.glob(s + '/nvidia/**/lib*.so*', recursive=True)})))")
export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
nvidia-smi -L
python3 -c "import onnxruntime as o, onnx_ir; print(o.__version__, o.get_available_providers(), onnx_ir.__version__)"
python3 bench/export_gpu.py run /tmp/packed --out "${OUT:-bench/results}"
