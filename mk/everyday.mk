# Release and generated-docs targets (issue 9).
#   make package   wheel + sdist in dist/ (python -m build)
#   make docs      regenerate docs/configuration.md and contrib/systemd/
.PHONY: package docs

package: venv
	$(BIN)/python -m build --outdir dist .

docs: venv
	$(BIN)/python -m container_desktop_relay config-docs > docs/configuration.md.tmp && mv docs/configuration.md.tmp docs/configuration.md
	$(BIN)/python -c 'from container_desktop_relay.commands.service import render_unit as r; \
	open("contrib/systemd/container-desktop-relay.service", "w").write(r(user=False)); \
	open("contrib/systemd/user/container-desktop-relay.service", "w").write(r(user=True))'
