#!/usr/bin/env bash
# Every GPU check and benchmark of the project in one run, for a CUDA host (the lent H100/H200 or yours).
# Writes everything under $OUT (default results/gpu) and prints a short table at the end.
#
#   bash scripts/gpu_check.sh                 # on a host with the project installed (make install)
#
# On the lent device machine (torch, torchvision, onnx, onnxruntime present; no fastapi/uvicorn),
# prepare the missing wheels here first, in the repository root:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl fastapi starlette uvicorn pydantic pydantic-core pydantic-settings python-dotenv \
#     annotated-types typing-inspection python-multipart hdrhistogram
#
# then run it there with carry [".whl"] and the command `bash scripts/gpu_check.sh` (about 6 minutes).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
status=()
run() {  # run NAME TIMEOUT_S COMMAND...: log to $OUT/NAME.log, remember pass/fail
    local name=$1 limit=$2; shift 2
    echo "== $name: $*"
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log"
    status+=("$(printf '%-22s %-6s %4ss' "$name" "$([ $rc = 0 ] && echo ok || echo FAIL:$rc)" $((SECONDS - start)))")
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
run export-onnx 240 $PY export/to_onnx.py --out artifacts/alexnet.onnx
run pytest-gpu 300 $PY -m pytest -q -rs tests/gpu tests/unit/test_preprocess.py -k "cuda or tensorrt or torchvision or gpu"
run bench-train 300 $PY -m model.bench_train --device cuda
run bench-service 420 $PY -m loadtest.bench --gpu --onnx artifacts/alexnet.onnx --out "$OUT/bench"

echo
echo "== summary ($(cat "$OUT/gpu.txt"))"
printf '%s\n' "${status[@]}"
grep -h -A40 -E "^\| " "$OUT/bench-train.log" | head -20
grep -h -E "img/s|ratio|p50|p99" "$OUT/bench-service.log" | tail -20
