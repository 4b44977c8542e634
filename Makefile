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

# $(call locked_venv,DIR,LOCK): a fresh venv in DIR holding exactly LOCK (hash-checked, then
# checked by lockcheck), this package on top without resolving anything; stamps DIR/.installed.
define locked_venv
	rm -rf $(1)
	$(PYTHON) -m venv $(1)
	$(1)/bin/pip install -q $(PIP_LOCKED) -r $(2)
	$(1)/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(1)/bin/python scripts/lockcheck.py $(2)
	touch $(1)/.installed
endef

all: test

system:
	bash scripts/setup-system.sh

# Exactly the lock (hash-checked), then this package on top without resolving anything.
$(STAMP): lock/dev.txt pyproject.toml
	$(call locked_venv,$(VENV),lock/dev.txt)

venv: $(STAMP)

# ruff, then mypy ([tool.mypy] in pyproject.toml) as the code runs on Linux and on Windows.
lint: venv
	$(BIN)/ruff check src tests
	$(BIN)/mypy src
	$(BIN)/mypy --platform win32 --cache-dir .cache/mypy/win32 src

# Everything: unit, end-to-end (OpenSSH, Podman, docker), the Windows client under Wine
# (tests/windows, set up by wine-setup) and the shipped artifacts (make dist; tests/dist).
test: system venv lint wine-setup dist
	$(BIN)/python -m pytest -q --durations=20
	$(MAKE) --no-print-directory test-floors

# The OpenSSH interop suite with every direct dependency at its declared floor.
$(FLOORS)/.installed: lock/floors.txt pyproject.toml
	$(call locked_venv,$(FLOORS),lock/floors.txt)

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
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache .cache/mypy

-include mk/*.mk
