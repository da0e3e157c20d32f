# issuer_seq: `make test` and `make demo` work on a fresh machine (Python 3.11).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install services test demo lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch is pinned in pyproject.toml (==2.13.0, the CPU build); the stamp re-installs when
# the project's dependencies change.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP)

# Servers the tests talk to for real: redis-server (the scorer's shared state store). The
# tests start their own instance on a free loopback port; this only installs the binary.
services:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (Debian package)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; \
	} || { echo "redis-server is missing and could not be installed (needs root + apt)"; exit 1; }

# Two pytest workers (pytest-xdist), one torch/BLAS thread each: on 2 cores the suite
# takes about two thirds of one process's time, and the workers do not fight over threads.
# TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: $(STAMP) services
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --durations=25

lint: $(STAMP)
	$(BIN)/ruff check issuer_seq tests scripts

demo: $(STAMP)
	$(BIN)/issuer-seq demo

clean:
	rm -rf $(VENV) data runs reports multirun outputs
