# Standalone executables (included by the Makefile; see docs/windows.md).
#   make dist   dist/container-desktop-relay-linux: the Linux relay for --relay-program-path,
#               a one-file PyInstaller build that runs where no Python is installed
# The Windows .exe is built by .github/workflows/windows.yml on a Windows runner.

.PHONY: dist
dist:
	PYTHON=$(PYTHON) bash scripts/build-dist.sh
