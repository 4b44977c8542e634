# Shipped artifacts (included by the Makefile; see docs/windows.md and scripts/build-dist.sh).
#   make dist           everything, from the lock, into dist/: the Linux relay
#                       (dist/container-desktop-relay-linux/, one folder: --relay-program-path
#                       names the executable inside), the Windows client
#                       (dist/container-desktop-relay/container-desktop-relay.exe, PyInstaller
#                       under Wine), the wheel and sdist, and dist/SHA256SUMS over all of them
#   make dist-linux     the Linux relay only
#   make dist-windows   the Windows client only
# Each artifact is rebuilt only when a hash of its inputs (lock, spec, src/) changed.

.PHONY: dist dist-linux dist-windows
dist: venv
	PYTHON=$(abspath $(BIN))/python bash scripts/build-dist.sh all

dist-linux: venv
	PYTHON=$(abspath $(BIN))/python bash scripts/build-dist.sh linux

dist-windows: venv
	PYTHON=$(abspath $(BIN))/python bash scripts/build-dist.sh windows
