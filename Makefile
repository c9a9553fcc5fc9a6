# Quick start: `make demo` and `make test`. Both build .venv first (idempotent), from the lock.
#
# requirements-cpu.lock pins every package (torch 2.13.0's CPU wheel included, and pip and
# setuptools themselves) so that a fresh clone installs what CI tested, this month and next.
# pyproject.toml keeps ranges for people installing the library into their own environment;
# `make lock` re-resolves those ranges to the newest releases, rewrites the lock, and runs the
# tests against what it resolved.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements-cpu.lock

.PHONY: venv demo test lock clean

venv: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r $(LOCK)
	# the package itself: no dependency resolution (the lock is the environment), the locked setuptools
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

demo: venv
	$(BIN)/vincie-demo

test: venv
	# the slowest tests in every log: CI has 90 minutes, make test aims at 25 on 2 cores (docs/testing.md)
	$(BIN)/python -m pytest -q --durations=25 tests

# Newest releases within pyproject's ranges -> $(LOCK), then a fresh .venv from it and the tests.
lock:
	rm -rf .lock-venv
	$(PY) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip setuptools wheel
	# torch first, pinned: the CPU wheel; an unpinned resolve would fetch a CUDA build
	.lock-venv/bin/python -m pip install -q torch==2.13.0
	.lock-venv/bin/python -m pip install -q -e '.[test]'
	{ echo "# Exact CPU environment for make venv/test/demo; written by 'make lock' ($$(date -u +%Y-%m-%d), Python $$(.lock-venv/bin/python -c 'import platform; print(platform.python_version())'))."; \
	  .lock-venv/bin/python -m pip freeze --all --exclude-editable | sed -E "s/^(torch==[^+]*)\\+cpu$$/\\1/" | LC_ALL=C sort -f; } > $(LOCK)
	rm -rf .lock-venv $(VENV)
	$(MAKE) test

clean:
	rm -rf $(VENV) .lock-venv runs
