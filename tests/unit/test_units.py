"""The systemd units: contrib/ holds exactly what install-service renders."""

from __future__ import annotations

from pathlib import Path

import pytest

from container_desktop_relay.commands.registry import find
from container_desktop_relay.commands.service import _quote, render_unit, run
from container_desktop_relay.errors import ConfigError
from helpers import REPO


@pytest.mark.parametrize(("user", "path"), [
    (False, "contrib/systemd/container-desktop-relay.service"),
    (True, "contrib/systemd/user/container-desktop-relay.service"),
])
def test_contrib_units_are_current(user: bool, path: str) -> None:
    """The committed units equal a fresh render (run `make docs` when this fails)."""
    assert (REPO / path).read_text(encoding="utf-8") == render_unit(user=user), path


def test_exec_start_quoting() -> None:
    """Paths with spaces are quoted and % is escaped, as systemd's ExecStart= needs."""
    assert _quote("/opt/relay/bin/x") == "/opt/relay/bin/x"
    assert _quote("/home/a b/x") == '"/home/a b/x"'
    assert _quote("/srv/100%/x") == "/srv/100%%/x"
    text = render_unit(user=False, command=["/home/a b/python", "-m", "container_desktop_relay"])
    assert 'ExecStart="/home/a b/python" -m container_desktop_relay server\n' in text


def test_user_unit_keeps_home_reachable() -> None:
    """The user unit reads ~/.ssh and /run/user sockets: home read-only, never hidden."""
    user = render_unit(user=True)
    assert "ProtectHome=read-only\n" in user and "ProtectHome=yes" not in user
    assert "WantedBy=default.target" in user
    system = render_unit(user=False)
    assert "ProtectHome=yes\n" in system and "StateDirectory=container-desktop-relay\n" in system
    assert "CapabilityBoundingSet=\n" in system


def test_missing_unit_dir_is_refused_not_created(tmp_path: Path) -> None:
    """--unit-dir naming no directory: exit 2 naming it; nothing is created."""
    missing = tmp_path / "nonexistent"
    with pytest.raises(ConfigError, match=rf"^invalid --unit-dir {missing}: no such "
                                          "directory; create it first") as err:
        run(find("install-service").parser().parse_args(["--unit-dir", str(missing)]))
    assert err.value.exit_code == 2 and not missing.exists()
