#!/usr/bin/env bash
# Downloads, into .whl/ (ignored by git), every wheel that a GPU host's Python 3.12 lacks to run
# scripts/gpu_check.sh when it already has torch, torchvision, numpy, pillow, onnx, onnxscript,
# onnxruntime, matplotlib, aiohttp, prometheus-client, pytest and pytest-timeout (as the lent
# H100/H200 image does) but no network. Run it here, then carry .whl to the GPU host:
#
#   bash scripts/gpu_wheels.sh            # here, with network: about 10 MiB of wheels
#   bash scripts/gpu_check.sh             # there: installs .whl/*.whl into a private --target first
#
# A host with network needs none of this: `make install` there, then `bash scripts/gpu_check.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${DEST:-.whl}
PY=${PYTHON:-python3}
# The service's and the load generator's pure-Python stack, with what each one imports at run time.
# opentelemetry-api: current FastAPI imports it; without it the service does not start there.
WHEELS=(
    fastapi starlette uvicorn httptools python-multipart pydantic pydantic-core pydantic-settings
    python-dotenv annotated-types typing-inspection hdrhistogram pbr opentelemetry-api importlib-metadata
)
rm -rf "$DEST"
mkdir -p "$DEST"
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$DEST" "${WHEELS[@]}"
size_mib=$(du -sm "$DEST" | cut -f1)
ls "$DEST"
echo "$DEST: $(ls "$DEST" | wc -l) wheels, ${size_mib} MiB"
if [ "$size_mib" -gt 60 ]; then
    echo "error: $DEST is over 60 MiB; the device machine's carry limit is 64 MiB with the tree" >&2
    exit 1
fi
