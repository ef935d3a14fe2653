# esperc: `make demo` and `make test` do their own set-up (a .venv with pinned dependencies).
# The CPU build of PyTorch is pinned (torch==2.13.0): an unpinned torch pulls GBs of CUDA packages.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup test lint unit lit demo clean format

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(BIN)/ruff check esperc tests bench

unit: setup
	$(PY) -m pytest -n 2 tests/unit

lit: setup
	$(BIN)/lit -q tests/lit

test: setup
	@status=0; \
	$(MAKE) --no-print-directory lint || status=1; \
	$(MAKE) --no-print-directory unit || status=1; \
	$(MAKE) --no-print-directory lit || status=1; \
	exit $$status

demo: setup
	@bash samples/demo.sh

format: setup
	$(BIN)/ruff format esperc tests bench
	$(BIN)/ruff check --fix esperc tests bench

clean:
	rm -rf $(VENV) build *.egg-info out tests/lit/**/Output
