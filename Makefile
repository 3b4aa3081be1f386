# Two commands matter: `make serve` (set up, build missing artifacts, serve on 0.0.0.0:8000) and
# `make test` (set up, run the tests). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Installed before the project so pip never picks a multi-GB build by itself: on a CPU host this
# machine's local CPU wheel, on a GPU host PyPI's CUDA build of the same release.
TORCH_SPEC ?= torch==2.13.0
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
EXTRAS ?= $(if $(HAS_GPU),gpu,cpu),dev
HOST ?= 0.0.0.0
PORT ?= 8000
ARTIFACTS ?= artifacts
ONNX ?= $(ARTIFACTS)/alexnet.onnx
# Trained weights, when you have them (our checkpoint or torchvision's .pth); empty = untrained.
CHECKPOINT ?= $(wildcard $(ARTIFACTS)/alexnet.pt)
PYTEST_ARGS ?=

.PHONY: install serve test onnx clean-artifacts
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

onnx: $(ONNX)
$(ONNX): | $(VENV)/.installed
	$(BIN)/python export/to_onnx.py $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) --out $@

serve: install $(ONNX)
	$(BIN)/python -m service --host $(HOST) --port $(PORT) --onnx $(ONNX)

# Chromium for the browser test: installed where this runs as root (CI), else the test skips and says why.
test: install
	@bash .ci/install-chromium.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean-artifacts:
	rm -rf $(ARTIFACTS)
