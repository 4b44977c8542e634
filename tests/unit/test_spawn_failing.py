"""A wsl.exe that fails at once: backed-off respawns, rate-limited logs, bounded history, a
server_unavailable report, and its UTF-16LE messages logged as text."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from container_desktop_relay.commands.registry import parse_config
from container_desktop_relay.core.backoff import Backoff
from container_desktop_relay.runtime.spawn import EXIT_HISTORY, ServerProcess, decode_output

MESSAGE = "There is no distribution with the supplied name."


def test_decode_output_utf8_and_utf16le() -> None:
    """UTF-8 lines pass; UTF-16LE lines (also the ones after a split newline) become text."""
    assert decode_output("héllo\r\n".encode()) == "héllo"
    raw = ("\ufeff" + MESSAGE + "\r\nError code: X\r\n").encode("utf-16-le")
    first, second = raw.split(b"\n", 1)
    assert decode_output(first + b"\n") == MESSAGE
    assert decode_output(second) == "Error code: X"


def test_failing_wsl_is_backed_off_rate_limited_and_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A wsl.exe that writes UTF-16LE and exits 1 at once: respawns follow the backoff (never
    faster), 40 exits log server_exited only for exits 1-3 and 30, the history keeps the last
    EXIT_HISTORY statuses, server_unavailable is reported once, WSL_UTF8=1 is set."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    seen_env = tmp_path / "env"
    script = bindir / "wsl.exe"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$WSL_UTF8" >> {seen_env}\n'
        f"printf '{MESSAGE}\\r\\n' | iconv -f utf-8 -t utf-16le >&2\n"
        "exit 1\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    config = parse_config("client", [
        "--listen", f"unix://{tmp_path}/c.sock", "--distribution", "Nope",
        "--relay-program-path", "/opt/relay", "--identity-path", str(tmp_path / "id"),
    ], environ={})
    caplog.set_level(logging.INFO, logger="container_desktop_relay")
    reasons: list[str] = []
    delays: list[float] = []

    forty = asyncio.Event()

    class Recorded(Backoff):
        def next(self) -> float:  # called once per exit
            delays.append(super().next())
            if len(delays) >= 40:
                forty.set()
            return 0.001  # the policy is recorded; the test does not wait for it

    server = ServerProcess(config, backoff=Recorded(), on_unavailable=reasons.append)

    async def run() -> None:
        await server.start()
        async with asyncio.timeout(60):
            await forty.wait()
        await server.stop()

    asyncio.run(run())
    assert delays[:5] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6], rel=0.21)
    assert all(d <= 2.0 for d in delays) and max(delays) > 1.5
    exited = [r for r in caplog.records if r.getMessage() == "server_exited"]
    assert [r.failures_in_a_row for r in exited] == [1, 2, 3, 30]
    assert len(server.exit_codes) == EXIT_HISTORY and set(server.exit_codes) == {1}
    assert [r.getMessage() for r in caplog.records].count("server_unavailable") == 1
    assert reasons and "exited 3 times in a row" in reasons[0]
    outputs = [getattr(r, "line", "") for r in caplog.records
               if r.getMessage() == "server_output"]
    assert outputs and set(outputs) == {MESSAGE}
    assert set(seen_env.read_text().split()) == {"1"}
