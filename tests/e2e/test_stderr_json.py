"""stderr is JSON lines, always: server and client while starting, relaying and stopping."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from clienthelp import ClientProc, owned
from helpers import EchoTarget, Keys, RelayServer, exchange, free_port, relay_env, run_relay, sha

pytestmark = pytest.mark.e2e


def _json_lines(text: str, who: str) -> list[dict[str, object]]:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"{who} line {number} is not JSON: {line!r}") from None
        assert isinstance(record, dict) and {"level", "event"} <= record.keys(), (who, line)
        records.append(record)
    return records


def test_server_and_client_write_only_json_lines(
    request: pytest.FixtureRequest, keys: Keys, tmp: Path, echo: EchoTarget
) -> None:
    """Start, relay 1 MiB, stop with SIGTERM: every line either role printed parses as JSON.

    The environment is the user's (no -W, no PYTHONWARNINGS): a third-party warning printed
    as plain text (cryptography's DSA deprecation at asyncssh's import, say) fails this.
    """
    env = {k: v for k, v in relay_env().items() if k != "PYTHONWARNINGS"}
    server = owned(request, RelayServer(keys, tmp, env=env))
    client = owned(request, ClientProc(keys, tmp, server.port, str(echo.path), env=env))
    payload = os.urandom(1 << 20)
    assert exchange(client.socket, payload) == (len(payload), sha(payload))
    for proc in (client.proc, server.proc):
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0, proc.log()[-2000:]
    client_records = _json_lines(client.log(), "client")
    server_records = _json_lines(server.proc.log(), "server")
    events = {r["event"] for r in client_records} | {r["event"] for r in server_records}
    assert {"server_listening", "connection_opened", "connection_closed"} <= events, events


def test_a_failed_start_ends_with_one_json_fatal_line(keys: Keys, tmp: Path) -> None:
    """A start that fails after logging (a client that finds no server) ends with the JSON
    ``fatal`` event, no plain-text line among the JSON ones; so does a usage error found
    before logging starts."""
    result = run_relay("client", "--listen", f"unix://{tmp}/c.sock", "--ssh-connection",
                       f"ssh://u@127.0.0.1:{free_port()}/x", "--identity-path",
                       str(keys.identity), "--known-hosts-path", str(tmp / "kh"),
                       "--max-retries", "2", "--log-level", "debug")
    assert result.returncode == 1
    records = _json_lines(result.stderr, "client")
    assert "ssh_connect_retry" in {r["event"] for r in records}
    assert records[-1]["event"] == "fatal" and records[-1]["level"] == "error", records[-1]
    assert records[-1]["exit_status"] == 1
    assert "(gave up after 2 attempts)" in str(records[-1]["message"])
    usage = run_relay("server", "--bogus")
    assert usage.returncode == 2
    (record,) = _json_lines(usage.stderr, "usage error")
    assert record["event"] == "fatal" and record["exit_status"] == 2
    assert record["message"] == ("unrecognized arguments: --bogus (see container-desktop-relay "
                                 "server --help)")
