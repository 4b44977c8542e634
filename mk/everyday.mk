# Release, docs and service targets (issue 9).
.PHONY: dist docs

dist: venv
	$(BIN)/python -m build --outdir dist .

docs: venv
	$(BIN)/python -m container_desktop_relay config-docs > docs/configuration.md
