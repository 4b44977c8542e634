"""The flags every named-pipe instance is created with, read from the real CreateNamedPipe
calls of the listener under Wine (docs/windows.md: local only, first instance exclusive).
The same script runs with --check on real Windows in .github/workflows/windows.yml."""

from __future__ import annotations

from winharness import HERE, Wine, winpath

SCRIPT = winpath(HERE / "win_pipe_flags.py")


def test_every_instance_rejects_remote_clients(wine: Wine) -> None:
    """Each instance, the first, the waiting ones and the replacement of a taken one, is a
    byte-read message pipe that rejects remote clients; only the first asks to be the first."""
    result = wine.run_json([SCRIPT, "4"])
    assert len(result["calls"]) >= 5, result
    assert result["problems"] == []
