#!/usr/bin/env bash
# A rehearsal of scripts/gpu_check.sh on this CPU host, under the lent GPU machine's Python and package
# versions: a device session is 15 minutes, and a carried wheel that does not import beside its
# packages, or a test that their versions break, should show here first.
#
#   bash scripts/gpu_wheels.sh && bash scripts/gpu_rehearsal.sh     # ~5 GB venv (once), then ~2 minutes
#
# It makes (once) a Python 3.12 venv with the versions the device image was seen with (KINDS.md of
# the device tool, 2026-11: Python 3.12.3, torch 2.11.0 (its CUDA 13 build, run here on the CPU),
# torchvision 0.26.0, numpy 2.5.2, onnx 1.23.1, onnxruntime 1.30.0, onnxscript 0.7.2) and the packages
# the image holds at versions nobody recorded (PyPI's newest here), then runs gpu_check.sh with
# GPU_CHECK_REHEARSAL=1 and the steps that have a CPU part. The carried wheels (.whl, .whl-nvimgcodec)
# go into a private --target exactly as on the device. Only the imports and the tests' CPU parts mean
# anything: every CUDA test skips here.
#
# With REHEARSAL_ORT=1 it first rehearses docs/gpu.md's five-call carry of onnxruntime-gpu as well:
# after `../shared/tools/split-wheel.sh onnxruntime-gpu==1.31.1 5` (.wp0 .. .wp4), each part goes
# through scripts/gpu_ort_part.sh in a folder of its own, as one device call each, and the wheel they
# make is on PYTHONPATH for the run (its CUDA provider is listed; every CUDA test still skips here).
#
# Settings (environment): REHEARSAL_VENV (default /tmp/gpu-rehearsal-venv), PYTHON312 (the Python 3.12
# to build it from; default python3.12), GPU_CHECK_STEPS (default imports,export-onnx,export-onnx-fp16,
# pytest-gpu,engine-wire), OUT (default results/gpu-rehearsal), REHEARSAL_ORT.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${REHEARSAL_VENV:-/tmp/gpu-rehearsal-venv}
DEVICE_PINS=(torch==2.11.0 torchvision==0.26.0 numpy==2.5.2 onnx==1.23.1 onnxruntime==1.30.0 onnxscript==0.7.2)
# On the device image too (its package list), versions not recorded; what the service, the load
# generator and the tests import from the host rather than from .whl.
DEVICE_UNPINNED=(pillow aiohttp httpx prometheus-client pytest pytest-timeout matplotlib uvloop click h11 anyio pyyaml)

if [ ! -f "$VENV/.rehearsal-installed" ]; then  # written last: an install cut short is made again
    "${PYTHON312:-python3.12}" -c 'import sys; assert sys.version_info[:2] == (3, 12), sys.version' \
        || { echo "error: needs a Python 3.12 (set PYTHON312), as the device has" >&2; exit 2; }
    "${PYTHON312:-python3.12}" -m venv "$VENV"
    "$VENV/bin/pip" install -q "${DEVICE_PINS[@]}" "${DEVICE_UNPINNED[@]}"
    touch "$VENV/.rehearsal-installed"
fi
if [ ! -d .whl ]; then
    echo "error: no .whl: run bash scripts/gpu_wheels.sh first (the wheels a GPU session carries)" >&2
    exit 2
fi
if [ "${REHEARSAL_ORT:-}" = 1 ]; then
    parts=(.wp[0-9]*)
    [ -d "${parts[0]}" ] || { echo "error: no .wp0 ...: run ../shared/tools/split-wheel.sh first" >&2; exit 2; }
    calls=$(mktemp -d)  # one folder per "call": the script and that call's one part, nothing else
    trap 'rm -rf "$calls" /tmp/onnxruntime_gpu-*.whl' EXIT  # the parts, the joined wheel, its install
    for part in "${parts[@]}"; do
        mkdir -p "$calls/$part/scripts"
        cp scripts/gpu_ort_part.sh "$calls/$part/scripts/"
        cp -r "$part" "$calls/$part/"
        (cd "$calls/$part" && PYTHON="$VENV/bin/python" ORT_PARTS="$calls/parts" ORT_SITE="$calls/ort-site" \
            bash scripts/gpu_ort_part.sh "${#parts[@]}")
    done
    export PYTHONPATH="$calls/ort-site${PYTHONPATH:+:$PYTHONPATH}"
fi
OUT=${OUT:-results/gpu-rehearsal} GPU_CHECK_WORK=${GPU_CHECK_WORK:-results/gpu-rehearsal-work} \
    GPU_CHECK_STEPS=${GPU_CHECK_STEPS:-imports,export-onnx,export-onnx-fp16,pytest-gpu,engine-wire} \
    GPU_CHECK_REHEARSAL=1 PYTHON="$VENV/bin/python" bash scripts/gpu_check.sh || rc=$?
exit "${rc:-0}"
