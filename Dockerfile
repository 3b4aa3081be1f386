# syntax=docker/dockerfile:1
# GPU image: TensorRT + ONNX Runtime (CUDA) + PyTorch (CUDA); the entrypoint builds the TensorRT
# engine for the GPU it finds on first start (docs/deploy.md).
#
#   docker build -t alexnet-serve:gpu .
#   docker run --gpus all -p 8000:8000 -v "$PWD/models:/models" alexnet-serve:gpu [service flags...]
#
# One CUDA major for everything (13): change one pin, check the others (docs/deploy.md, "Versions").
#   base nvcr.io/nvidia/tensorrt:25.10-py3: Ubuntu 24.04, Python 3.12, CUDA 13.0, TensorRT 10.13;
#     its tensorrt Python bindings match its libraries, so TensorRT is not installed from PyPI
#   torch 2.13.0 from PyPI: the CUDA 13.0 build (cuda-toolkit==13.0.3, nvidia-cudnn-cu13 9.20), the
#     release the Makefile installs and the tests run
#   onnxruntime-gpu 1.31.1: built for CUDA 13 + cuDNN 9 (1.26 and older on PyPI are CUDA 12 builds);
#     the [cuda,cudnn] extras bring those libraries as wheels
#   nvidia-nvimgcodec-cu13 0.9.0.20 with its [nvjpeg] extra: the engine's GPU JPEG decoder
# CUDA 13 needs an R580 or newer driver on the host.
ARG BASE_IMAGE=nvcr.io/nvidia/tensorrt:25.10-py3

# -- build: a virtual environment with the project and its pinned GPU dependencies --------------
FROM ${BASE_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG ORT_GPU_VERSION=1.31.1
ARG NVIMGCODEC_VERSION=0.9.0.20
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# --system-site-packages: the venv sees the base image's tensorrt bindings, which match its libraries.
# python3-venv comes from the pinned base's Ubuntu release when the image lacks it.
# hadolint ignore=DL3008
RUN python3 -m venv --system-site-packages /opt/venv \
    || { apt-get update && apt-get install -y --no-install-recommends python3-venv \
         && rm -rf /var/lib/apt/lists/* && python3 -m venv --system-site-packages /opt/venv; }
ENV PATH=/opt/venv/bin:$PATH
RUN pip install "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md* ./
COPY model ./model
COPY export ./export
COPY service ./service
COPY loadtest ./loadtest
# The `gpu` extra is not used: it would pull tensorrt from PyPI over the image's own build.
RUN pip install "onnxruntime-gpu[cuda,cudnn]==${ORT_GPU_VERSION}" \
        "nvidia-nvimgcodec-cu13[nvjpeg]==${NVIMGCODEC_VERSION}" . \
    && python -c "import tensorrt, onnxruntime, torch, nvidia.nvimgcodec; print('tensorrt', tensorrt.__version__, '| onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers(), '| torch', torch.__version__, 'cuda', torch.version.cuda)"

# -- runtime -------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app \
    && mkdir -p /models /app \
    && chown app:app /models /app
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ALEXNET_MODEL_DIR=/models \
    ALEXNET_HOST=0.0.0.0 \
    ALEXNET_PORT=8000
USER 10001:10001
VOLUME ["/models"]
EXPOSE 8000
# Ready, not just live: 503 until the model is loaded and warm. The first start may build a
# TensorRT engine (about a minute), hence the start period.
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('ALEXNET_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["python", "-m", "service.entrypoint"]
CMD []
