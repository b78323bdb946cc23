# Two commands do all set-up: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The stamp's name carries a hash of pyproject.toml and constraints.txt: re-install only when the pins change.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
# DeepSpeed's JIT op, built into the venv (adaptive_lm_ds/ds_runtime.py), never ~/.cache.
BUILD_OPS := $(PY) -m adaptive_lm_ds build-ops
export DS_ACCELERATOR ?= cpu
export PYTHONPATH := $(CURDIR)

.PHONY: venv ds-ops demo test lint format clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo ">> installing pinned dependencies into $(VENV) (torch first, so nothing pulls a second one)"
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	@echo ">> building DeepSpeed's shared-memory op into $(VENV)/torch_extensions (once; not ~/.cache)"
	$(BUILD_OPS)
	@rm -f $(VENV)/.installed-*
	@touch $@

# Rebuild DeepSpeed's JIT op in the venv (a no-op when it is up to date).
ds-ops: $(STAMP)
	$(BUILD_OPS)

demo: $(STAMP)
	$(PY) tools/demo.py

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf demo_out .pytest_cache .ruff_cache
