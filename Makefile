# Tessera: `make demo` runs the embedded default end to end; `make test` runs the checks and the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Where torch comes from: this machine's pip finds the CPU build on disk. Elsewhere, point pip at PyTorch's
# CPU wheel index, e.g. make install TORCH_PIP_ARGS="--index-url <PyTorch CPU wheel index>".
TORCH_PIP_ARGS ?=

.PHONY: install demo test lint serve clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first, so that nothing later resolves to a CUDA build.
	$(BIN)/pip install -q torch==2.13.0 $(TORCH_PIP_ARGS)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	# unstructured's PDF fast path imports unstructured_inference; its declared dependencies
	# (timm, torchvision) would pull a CUDA torch, and the fast path needs none of them.
	$(BIN)/pip install -q --no-deps unstructured-inference==1.6.14
	$(BIN)/python -c "import core.assets as a; a.load_encoding(); a.embedding_model_dir(); a.spacy_model_dir()"
	# The fp32 ONNX export the default backend runs on CPU (offline, ~5 s), into TESSERA_MODEL_CACHE_DIR or ~/.cache.
	$(BIN)/python -c "from core.embedding import Embedder; Embedder(backend='onnx').warm_up()"
	touch $(STAMP)

demo: install
	$(BIN)/tessera demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

serve: install
	$(BIN)/tessera serve

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
