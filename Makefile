# container-desktop-relay: one-command set-up on a fresh Debian machine (as root).
#   make demo   real engine (Podman) + relay server + client, docker CLI through it
#   make test   every test, end-to-end ones included
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all system venv test unit e2e lint demo soak clean

all: test

system:
	bash scripts/setup-system.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check src tests

# Everything: unit, end-to-end (OpenSSH, Podman, docker), the Windows client under Wine
# (tests/windows, set up by wine-setup) and the standalone executable (tests/dist).
test: system venv lint wine-setup
	$(BIN)/python -m pytest -q --durations=20

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
