# Two commands matter: `make serve` (set up, build missing artifacts, serve on 0.0.0.0:8000) and
# `make test` (set up, run the gates and the tests). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Installed before the project so pip never picks a multi-GB build by itself: on a CPU host this
# machine's local CPU wheel, on a GPU host PyPI's CUDA build of the same release.
TORCH_SPEC ?= torch==2.13.0
# torchvision for the exact-parity test against its ImageNet preset (tests/unit/test_preprocess.py)
# and, on a GPU host, nvJPEG decoding. Installed with --no-deps: it pins torch==2.13.0 and pip would
# otherwise swap the CPU torch wheel for PyPI's CUDA build. 0.28.0 is the release paired with torch
# 2.13 on PyPI. Beside the CPU torch its compiled ops do not load, but its pure-Python transforms and
# presets do (tests/torchvision_modules.py); beside PyPI's CUDA torch, all of it loads.
TORCHVISION_SPEC ?= torchvision==0.28.0
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
EXTRAS ?= $(if $(HAS_GPU),gpu,cpu),dev
HOST ?= 0.0.0.0
PORT ?= 8000
# Model files: alexnet.pt or torchvision's alexnet-owt-*.pth if you have weights (else untrained),
# and the ONNX model and TensorRT engine built from them on first start.
ARTIFACTS ?= artifacts
PYTEST_ARGS ?=

PY_DIRS := service export model loadtest tests scripts

.PHONY: install serve test lint clean-artifacts
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q --no-deps $(TORCHVISION_SPEC)
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

# The same entrypoint as the Docker image: export ONNX / build the engine where missing, then serve.
serve: install
	ALEXNET_MODEL_DIR=$(ARTIFACTS) $(BIN)/python -m service.entrypoint --host $(HOST) --port $(PORT)

# Chromium for the browser test: installed where this runs as root (CI), else the test skips and says
# why (under CI=true it fails instead: tests/conftest.py require_or_skip).
test: install lint
	@bash .ci/install-chromium.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The gates: ruff (lint + format) on every Python file, mypy on the three packages (pyproject.toml).
lint: install
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)
	$(BIN)/mypy

clean-artifacts:
	rm -rf $(ARTIFACTS)
