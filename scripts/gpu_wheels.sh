#!/usr/bin/env bash
# Downloads, into .whl/ (ignored by git), every wheel that a GPU host's Python 3.12 lacks to run
# scripts/gpu_check.sh when it already has torch, torchvision, numpy, pillow, onnx, onnxscript,
# onnxruntime, matplotlib, aiohttp, prometheus-client, pytest and pytest-timeout, and uvicorn's and
# Starlette's click, h11 and anyio (as the lent H100/H200 image does) but no network.
# scripts/gpu_rehearsal.sh tries them beside that image's package versions, here. Run it here, then carry .whl to the GPU host:
#
#   bash scripts/gpu_wheels.sh            # here, with network: about 4 MiB of wheels, at the versions of .venv
#   bash scripts/gpu_check.sh             # there: installs .whl/*.whl into a private --target first
#
# It also writes .whl-nvimgcodec/ (29 MiB): nvImageCodec and its nvJPEG, the engine's preferred GPU JPEG
# decoder (service/gpu_decode.py). A folder of its own, so that a call that must carry something large
# (a part of onnxruntime-gpu, docs/gpu.md) can leave it behind: the GPU decoder is then torchvision's
# nvJPEG, which --decode auto passes over for the CPU (its chroma), and gpu_check's bench-service forces.
#
# A host with network needs none of this: `make install` there, then `bash scripts/gpu_check.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${DEST:-.whl}
PY=${PYTHON:-python3}
# The service's and the load generator's pure-Python stack, with what each one imports at run time.
# opentelemetry-api: current FastAPI imports it; without it the service does not start there.
# typing-extensions and annotated-doc are on that host, but maybe older than pydantic and FastAPI ask for
# (pydantic 2.14 wants typing-extensions >= 4.16); the carried ones come first on PYTHONPATH there.
WHEELS=(
    fastapi starlette uvicorn httptools python-multipart pydantic pydantic-core pydantic-settings
    python-dotenv annotated-types typing-inspection hdrhistogram pbr opentelemetry-api
    typing-extensions annotated-doc
)
# The versions this checkout's venv (make install) has, the ones its tests passed with, where it has
# them: a newer release on PyPI could need a dependency that is not carried (the GPU host has no network).
VENV_PY=${VENV_PY:-.venv/bin/python}
if [ -x "$VENV_PY" ]; then
    if ! frozen=$("$VENV_PY" -m pip freeze 2>/dev/null); then
        echo "error: '$VENV_PY -m pip freeze' failed; set VENV_PY to a venv with pip" >&2
        exit 1
    fi
    frozen=$(tr '[:upper:]_' '[:lower:]-' <<< "$frozen")
    for i in "${!WHEELS[@]}"; do
        pin=$(grep -m1 "^${WHEELS[$i]}==" <<< "$frozen" || true)
        if [ -n "$pin" ]; then
            WHEELS[$i]=$pin
        else
            echo "note: ${WHEELS[$i]} is not in $VENV_PY's venv: PyPI's newest release" >&2
        fi
    done
else
    echo "note: no $VENV_PY (make install): downloading PyPI's newest releases, not the tested ones" >&2
fi
# The versions pyproject's gpu extra and the Dockerfile install (CUDA 13, as the lent host's torch).
NVIMGCODEC_WHEELS=(nvidia-nvimgcodec-cu13==0.9.0.20 nvidia-nvjpeg==13.3.2.43)
download() {  # download FOLDER SPEC...: the cp312 Linux wheels, and the folder under the carry limit
    local dest=$1; shift
    rm -rf "$dest"
    mkdir -p "$dest"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d "$dest" "$@"
    echo "$*"
    local size_mib
    size_mib=$(du -sm "$dest" | cut -f1)
    ls "$dest"
    echo "$dest: $(ls "$dest" | wc -l) wheels, ${size_mib} MiB"
    if [ "$size_mib" -gt 60 ]; then
        echo "error: $dest is over 60 MiB; the device machine's carry limit is 64 MiB with the tree" >&2
        exit 1
    fi
}
download "$DEST" "${WHEELS[@]}"
download "$DEST-nvimgcodec" "${NVIMGCODEC_WHEELS[@]}"
