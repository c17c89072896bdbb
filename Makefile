# Two commands on a fresh machine with Python 3.10+ and make:
#   make demo   - the churn pipeline on the embedded default stack
#   make test   - install into .venv, then every test, lint, type and architecture (import-linter) check
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hlml-installed
PYTEST_ARGS ?=

.PHONY: help venv install constraints system-deps lint typecheck test test-fast demo demo-stop bench clean

help:
	@echo "make demo       run the churn pipeline on the embedded default (APPROVE=1: non-interactive)"
	@echo "make demo-stop  stop every process 'make demo' started"
	@echo "make test       install into $(VENV) and run every test, lint, type and architecture check"
	@echo "make bench      run the benchmark scripts in benchmarks/"

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "Python 3.10+ is required"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv

venv: $(BIN)/python

# constraints.txt pins the versions the suite is tested with, so a fresh clone installs the same set.
# Bytecode is compiled at install time, as pip does (uv does not by default): every Airflow
# process then starts in a third of the time, also where PYTHONDONTWRITEBYTECODE is set.
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m uv pip install -p $(BIN)/python --compile-bytecode -c constraints.txt -e '.[dev,examples]' \
	  || $(BIN)/python -m pip install -c constraints.txt -e '.[dev,examples]'
	touch $(STAMP)

constraints: install
	{ sed -n 1,2p constraints.txt; $(BIN)/python -m uv pip freeze -p $(BIN)/python --exclude-editable \
	  | grep -v -E '^(pip|uv|setuptools)=='; } > constraints.txt.new && mv constraints.txt.new constraints.txt

install: $(STAMP)

# Headless Chromium for the dashboard browser test (Debian package; installed when root and missing).
system-deps:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: could not install chromium; the browser test will report it"; \
	  else echo "note: chromium not found; the browser test will report it"; fi; \
	fi
	@# `docker-compose config` validates docker-compose.yml without a Docker engine (tests/e2e/test_compose.py).
	@if command -v docker >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1 \
	    && ! command -v docker-compose >/dev/null 2>&1 \
	    && [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null) \
	    || echo "warning: could not install docker-compose; the compose validation test will skip"; \
	fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

test: install system-deps lint typecheck
	$(BIN)/python -m pytest -p no:cacheprovider -ra --durations=15 $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -p no:cacheprovider -ra -m "not e2e and not browser" $(PYTEST_ARGS)

demo: install
	$(BIN)/python scripts/demo.py start $(if $(APPROVE),--approve,)

demo-stop:
	@if [ -x $(BIN)/python ]; then $(BIN)/python scripts/demo.py stop; fi

bench: install
	@for f in benchmarks/[!_]*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) .demo .mypy_cache .ruff_cache build dist *.egg-info
