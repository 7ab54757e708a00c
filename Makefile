# nuwa-jax: the README's two commands are `make demo` and `make test`.
# Both create .venv at the repository root on first use and reuse it afterwards.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: venv venv-dev demo train-demo table1 test test-fast lint format describe clean

venv: $(VENV)/.runtime
venv-dev: $(VENV)/.dev

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: requirements.txt pyproject.toml | $(VENV)/bin/python
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps -e . --config-settings editable_mode=compat
	touch $@

$(VENV)/.dev: requirements-dev.txt requirements-dev-nodeps.txt $(VENV)/.runtime
	$(PIP) install -r requirements-dev.txt
	$(PIP) install --no-deps -r requirements-dev-nodeps.txt
	touch $@

# Line 1 of the README: the main job on the embedded default (no downloads, CPU is enough).
demo: venv
	$(BIN)/python -m nuwa_jax.demo

# Trains the demo hierarchy and exports its bundle (resumable: rerun to continue).
train-demo: venv
	bash launch/train_demo.sh runs/demo

# Table 1 (DoD vs AR at 16 / 256 / 1024 frames) with the demo bundle -> docs/results.md.
table1: venv
	bash launch/table1.sh runs/table1

# Line 2 of the README: lint, format check and the whole test suite (8 simulated devices).
# Two pytest workers (pytest-xdist); worksteal hands out single tests and lets an idle
# worker take queued tests from a busy one, so a run does not end on one busy worker
# (loadfile did: a slow file's tests all queued on one worker).
# --durations: the 15 slowest tests, so every CI log says where the time goes.
TEST_WORKERS ?= 2
PYTEST = $(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal --durations=15
test: venv-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(PYTEST)

# The suite without the tests marked slow (each marker says why): for the loop of editing
# and testing. `make test` stays what CI runs.
test-fast: venv-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(PYTEST) -m "not slow"

lint: venv-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
