# Two commands do all the set-up on a fresh clone:
#   make serve   create .venv, install, build demo weights, serve on 127.0.0.1:8000
#   make test    the same set-up, then the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup weights serve test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel is local; any other spec pulls CUDA wheels.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

weights: $(STAMP)
	$(BIN)/medserve build-weights
	$(BIN)/medserve models check

serve: weights
	$(BIN)/medserve serve --host $(HOST) --port $(PORT)

test: weights
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check serving tests benchmarks
	$(BIN)/mypy

bench: weights
	$(BIN)/python benchmarks/imaging.py

clean:
	rm -rf $(VENV) model_repo/*/*/*.safetensors
