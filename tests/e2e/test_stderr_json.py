"""stderr is JSON lines, always: server and client while starting, relaying and stopping."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from clienthelp import ClientProc, owned
from helpers import EchoTarget, Keys, RelayServer, exchange, relay_env, sha

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
