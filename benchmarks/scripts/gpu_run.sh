#!/usr/bin/env bash
# On the GPU machine (see ../shared/gpu/README.md): install the carried
# onnxruntime-gpu wheel, expose this checkout's packages, run the GPU tests
# and the H100 benchmark. Usage: benchmarks/scripts/gpu_run.sh OUTDIR [bench-unet args...]
# Expects /tmp/ortparts/part* (carried earlier), .gpumodels/ (weight-stripped
# models from bench-unet --save-models; MODELS=DIR for another folder) and
# .gpuwheels/ (pytest wheels). TESTS=0 skips the GPU tests; TEST_TIMEOUT=S bounds them (default 240).
set -euo pipefail
out=${1:?usage: gpu_run.sh OUTDIR [bench args]}; shift
mkdir -p "$out"
PY=${PY:-python3}
whl=/tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
if [ ! -d /tmp/site/onnxruntime ]; then
  cat /tmp/ortparts/part* > "$whl"
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$whl"
  [ -d .gpuwheels ] && $PY -m pip install -q --no-index --no-deps --target /tmp/site .gpuwheels/*.whl
fi
# The project's folders under their import names (package-dir without pip).
mkdir -p /tmp/src
ln -sfn "$PWD/runtime" /tmp/src/unet_runtime
ln -sfn "$PWD/export" /tmp/src/unet_export
ln -sfn "$PWD/benchmarks" /tmp/src/unet_bench
# CUDA/cuDNN come from pip nvidia-* packages here: ORT must preload them.
echo 'import onnxruntime; onnxruntime.preload_dlls()' > /tmp/site/sitecustomize.py
export PYTHONPATH=/tmp/site:/tmp/src:$PWD
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
$PY -c 'import onnxruntime as o; print(o.__version__, o.get_available_providers())' | tee -a "$out/gpu.txt"
models=${MODELS:-.gpumodels}
# The whole test log is kept (every test prints its figures for the note); the console gets its tail.
[ "${TESTS:-1}" = 1 ] && UNET_GPU_MODELS=.gpumodels timeout "${TEST_TIMEOUT:-240}" $PY -m pytest -p no:cacheprovider tests/test_gpu.py -q -rs -s 2>&1 | tee "$out/gpu_tests.txt" | tail -25 || true
# Results are named after the card (the device tool may lend an H200 where an H100 was asked for).
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/-$//')
# bench-unet rewrites $out/$card.json/.md after every row: a call cut short by its time limit keeps them.
$PY -m unet_bench.cli --models-from "$models" --out "$out/${card:-gpu}" --plot -q "$@" 2>&1 | tail -5
cat "$out/${card:-gpu}.md"
