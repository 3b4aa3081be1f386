#!/usr/bin/env bash
# On the device machine: gather the parts of the onnxruntime-gpu wheel carried one per call, and install
# it into a private --target once every part is there. Here, first:
#   ../shared/tools/split-wheel.sh onnxruntime-gpu==1.31.1 5      # writes .wp0 .. .wp4 (ignored by git)
# then, on one warm machine (docs/gpu.md), call k = 0..3 carrying .wpK:
#   bash scripts/gpu_ort_part.sh 5
# and the last call carrying .wp4 (and .whl):
#   bash scripts/gpu_ort_part.sh 5 && PYTHONPATH=/tmp/ort-site bash scripts/gpu_check.sh
#
# Settings (environment): ORT_WHEEL (the wheel's file name, which pip needs; default the 1.31.1 cp312
# x86_64 one), ORT_PARTS (default /tmp/ort-parts), ORT_SITE (default /tmp/ort-site), PYTHON (python3).
# Exits 0 with "N of M parts" while parts are missing, 0 once installed, non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
total=${1:?usage: gpu_ort_part.sh NUMBER_OF_PARTS}
wheel=${ORT_WHEEL:-onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl}
parts=${ORT_PARTS:-/tmp/ort-parts}
site=${ORT_SITE:-/tmp/ort-site}
py=${PYTHON:-python3}
mkdir -p "$parts"
shopt -s nullglob
carried=(.wp*/part*)
[ ${#carried[@]} -gt 0 ] || { echo "error: no .wp*/part* carried with this call" >&2; exit 1; }
cp "${carried[@]}" "$parts/"
have=("$parts"/part*)
if [ ${#have[@]} -lt "$total" ]; then
    echo "${#have[@]} of $total parts in $parts; carry the next one"
    exit 0
fi
[ ${#have[@]} -eq "$total" ] || { echo "error: ${#have[@]} parts in $parts, expected $total" >&2; exit 1; }
cat "${have[@]}" > "/tmp/$wheel"  # split -d numbers them part00, part01, ...: the glob's order
sha256sum "/tmp/$wheel"
rm -rf "$site"
"$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" "/tmp/$wheel"
PYTHONPATH=$site "$py" -c "import torch, onnxruntime as o; print('onnxruntime', o.__version__, 'from', o.__file__, \
o.get_available_providers())"
echo "installed; run with PYTHONPATH=$site"
