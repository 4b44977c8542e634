# container-desktop-relay: one-command set-up on a fresh Debian machine (as root).
#   make demo   real engine (Podman) + relay server + client, docker CLI through it
#   make test   every test, end-to-end ones included
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_LOCKED := --disable-pip-version-check --require-hashes --no-deps
# Where the floors env lives (lock/floors.txt: every direct dependency at its declared minimum).
FLOORS := .cache/floors-venv

.PHONY: all system venv test unit e2e lint demo soak clean lock test-floors test-latest

all: test

system:
	bash scripts/setup-system.sh

# Exactly the lock (hash-checked), then this package on top without resolving anything.
$(STAMP): lock/dev.txt pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(PIP_LOCKED) -r lock/dev.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/python scripts/lockcheck.py lock/dev.txt
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check src tests

# Everything: unit, end-to-end (OpenSSH, Podman, docker), the Windows client under Wine
# (tests/windows, set up by wine-setup) and the shipped artifacts (make dist; tests/dist).
test: system venv lint wine-setup dist
	$(BIN)/python -m pytest -q --durations=20
	$(MAKE) --no-print-directory test-floors

# The OpenSSH interop suite with every direct dependency at its declared floor.
$(FLOORS)/.installed: lock/floors.txt pyproject.toml
	rm -rf $(FLOORS)
	$(PYTHON) -m venv $(FLOORS)
	$(FLOORS)/bin/pip install -q $(PIP_LOCKED) -r lock/floors.txt
	$(FLOORS)/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(FLOORS)/bin/python scripts/lockcheck.py lock/floors.txt
	touch $@

test-floors: system $(FLOORS)/.installed
	$(FLOORS)/bin/python -m pytest -q -p no:cacheprovider tests/e2e/test_sshtune_interop.py \
	    tests/e2e/test_stderr_json.py

# Drift: the newest releases the ranges allow (no lock), unit + interop + stderr suites.
test-latest: system
	PYTHON=$(PYTHON) bash scripts/test-latest.sh

# Refresh every lock (make lock), or move one package: make lock P=asyncssh
lock:
	PYTHON=$(PYTHON) bash scripts/lock.sh $(if $(P),-P $(P))

unit: venv
	$(BIN)/python -m pytest -q tests/unit

e2e: system venv
	$(BIN)/python -m pytest -q -m e2e

demo: system venv
	$(BIN)/python scripts/demo.py

soak: system venv
	bash scripts/soak.sh

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache

-include mk/*.mk
