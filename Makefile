# phiflash: the README's two commands are `make chat` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.phiflash-installed

.PHONY: setup fork openblas chat test lint clean wheel

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (phiflash needs Python >= 3.11; set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP) fork openblas

# MLX's Linux CPU wheel ships a reference BLAS; Debian's OpenBLAS made CPU prefill 14.5x
# faster and phiflash loads it when present. Best effort: skipped without root/apt.
openblas:
	@if [ "$$(uname)" = Linux ] && ! ls /usr/lib/*/openblas-pthread/libopenblas.so.0 >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing libopenblas0-pthread (fast CPU matmuls for MLX)"; \
	    (apt-get update -qq && apt-get install -y -qq libopenblas0-pthread) >/dev/null 2>&1 \
	      || echo "note: could not install libopenblas0-pthread; CPU prefill will be slow"; \
	  else echo "note: apt-get install libopenblas0-pthread for fast CPU prefill"; fi; \
	fi

# Builds the SambaY-aware llama.cpp fork into the venv (cached by patch hash).
fork: $(STAMP)
	$(PY) -m phiflash_gguf.build

chat: setup
	$(VENV)/bin/phiflash chat

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

# The wheel users install (carries the bundled tutor); offline: setuptools comes from .[dev].
wheel: $(STAMP)
	$(PY) -m pip wheel . --no-deps --no-build-isolation -w dist

lint: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
