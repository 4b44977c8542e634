"""README promises of the server process: SIGINT drains like SIGTERM and refuses new channels
meanwhile; --shutdown-timeout expiry closes the rest; one connection_opened and one
connection_closed per connection. Real server process, real OpenSSH ssh -L."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
from collections import Counter
from pathlib import Path

import pytest

from helpers import (
    EchoTarget,
    Keys,
    RelayServer,
    sha,
    ssh_forward,
    stopping,
    unix_connect,
    wait_for,
)

pytestmark = pytest.mark.e2e


def _events(server: RelayServer, name: str) -> list[dict[str, object]]:
    out = []
    for line in server.proc.log().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == name:
                out.append(record)
    return out


def _closed_unanswered(sock: socket.socket) -> bool:
    """Whether the relay side ends ``sock`` without a byte (EOF or reset)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_sigint_refuses_new_channels_while_the_held_stream_finishes(
        keys: Keys, echo: EchoTarget, tmp: Path) -> None:
    """SIGINT: a channel opened during the drain is refused ('server is shutting down'), the
    stream already open carries 2 MB more byte-exact, then the server exits 0."""
    server = RelayServer(keys, tmp, "--shutdown-timeout", "60s")
    fwd = ssh_forward(server.port, keys.identity, tmp / "l.sock", str(echo.path), tmp)
    with stopping(server, fwd), unix_connect(tmp / "l.sock", 30) as held:
        held.sendall(b"a")
        assert held.recv(1) == b"a"
        server.proc.signal(signal.SIGINT)
        wait_for(lambda: _events(server, "shutdown_requested"), 10, "the drain to start")
        assert _events(server, "shutdown_requested")[0]["reason"] == "SIGINT"
        with unix_connect(tmp / "l.sock", 30) as late:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                late.sendall(b"too late")  # ssh -L may close it first: refused at once
            assert _closed_unanswered(late)
        refused = wait_for(lambda: _events(server, "channel_refused"), 10, "the refusal")
        assert refused[0]["reason"] == "server is shutting down"
        assert server.proc.alive()  # still draining: the held stream is open
        payload = os.urandom(2 << 20)
        held.sendall(payload)
        held.shutdown(socket.SHUT_WR)
        got = bytearray()
        while data := held.recv(1 << 20):
            got += data
        held.close()
        assert (len(got), sha(bytes(got))) == (len(payload), sha(payload))
        assert server.proc.wait(30) == 0
    assert len(_events(server, "connection_opened")) == 1  # the late one never opened
    assert _events(server, "shutdown_complete") and "Traceback" not in server.proc.log()


def test_shutdown_timeout_expiry_closes_the_rest(keys: Keys, echo: EchoTarget,
                                                 tmp: Path) -> None:
    """SIGTERM with a stream that never ends: when --shutdown-timeout runs out the server
    closes it (the client sees the end), logs how many it closed, and exits 0."""
    server = RelayServer(keys, tmp, "--shutdown-timeout", "1s")
    fwd = ssh_forward(server.port, keys.identity, tmp / "l.sock", str(echo.path), tmp)
    with stopping(server, fwd), unix_connect(tmp / "l.sock", 30) as held:
        held.sendall(b"a")
        assert held.recv(1) == b"a"
        server.proc.signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
        assert _closed_unanswered(held)
        held.close()
    assert [e["remaining"] for e in _events(server, "shutdown_closing_connections")] == [1]
    assert not _events(server, "shutdown_forced")


def test_one_opened_and_one_closed_event_per_connection(keys: Keys, echo: EchoTarget,
                                                        tmp: Path) -> None:
    """Each forwarded connection logs exactly one connection_opened and one connection_closed
    with the same id, the close carrying the bytes each way."""
    server = RelayServer(keys, tmp)
    fwd = ssh_forward(server.port, keys.identity, tmp / "l.sock", str(echo.path), tmp)
    sizes = [0, 1, 1000, 300_000, 5]
    with stopping(server, fwd):
        for size in sizes:
            with unix_connect(tmp / "l.sock", 30) as s:
                payload = os.urandom(size)
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                got = bytearray()
                while data := s.recv(1 << 20):
                    got += data
                assert bytes(got) == payload
        wait_for(lambda: len(_events(server, "connection_closed")) >= len(sizes), 20,
                 "every connection_closed")
        opened = _events(server, "connection_opened")
        closed = _events(server, "connection_closed")
    assert Counter(e["conn_id"] for e in opened) == Counter(e["conn_id"] for e in closed)
    assert len(opened) == len(set(e["conn_id"] for e in opened)) == len(sizes)
    assert sorted(e["bytes_up"] for e in closed) == sorted(sizes)
    assert sorted(e["bytes_down"] for e in closed) == sorted(sizes)
