# Release, docs and service targets (issue 9).
.PHONY: dist docs

dist: venv
	$(BIN)/python -m build --outdir dist .

docs: venv
	$(BIN)/python -m container_desktop_relay config-docs > docs/configuration.md
	$(BIN)/python -c 'from container_desktop_relay.service import render_unit as r; \
	open("contrib/systemd/container-desktop-relay.service", "w").write(r(user=False)); \
	open("contrib/systemd/user/container-desktop-relay.service", "w").write(r(user=True))'
