"""docs/configuration.md is generated from the config definition and must be current."""

from __future__ import annotations

from container_desktop_relay.commands.configdocs import render
from container_desktop_relay.config import config_fields
from helpers import REPO


def test_committed_reference_is_current() -> None:
    """The committed file equals a fresh render (run `make docs` when this fails)."""
    committed = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == render(), "docs/configuration.md is stale: run `make docs`"


def test_every_key_has_flag_env_and_json_key() -> None:
    """Each configuration key appears with its JSON key, flag and environment variable."""
    text = render()
    for f, opt in config_fields():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{f.name}` |"))
        assert f"`--{f.name.replace('_', '-')}`" in row
        assert f"`CDR_{f.name.upper()}`" in row
        if opt.env:
            assert f"`{opt.env}`" in row


def test_defaults_and_types_are_rendered() -> None:
    """Defaults come from the dataclass (durations formatted), types from the option kind."""
    rows = {line.split("|")[1].strip(" `"): line for line in render().splitlines()
            if line.startswith("| `")}
    assert "| integer | `20022` | both |" in rows["port"]
    assert "| duration | `10s` |" in rows["shutdown_timeout"]
    assert "| boolean | `false` |" in rows["generate_key_pair"]
    assert "list of strings; repeatable flag | (none) | server |" in rows["allow_socket"]
    assert "`LOG_LEVEL`" in rows["log_level"]
