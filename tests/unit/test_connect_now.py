"""The server's target connect: wait-free connect_now, full backlog, failed adoption."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from container_desktop_relay.config import load_config
from container_desktop_relay.core.pump import CLIENT, Pump
from container_desktop_relay.observability.metrics import Metrics
from container_desktop_relay.runtime.state import RoleState
from container_desktop_relay.ssh.server import RelayServer, _ServerConnection, connect_now
from helpers import FakeEnd


def test_connects_to_a_listener(tmp_path: Path) -> None:
    path = str(tmp_path / "t.sock")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen(4)
        sock = connect_now(path)
        assert sock is not None
        with sock:
            peer, _ = listener.accept()
            with peer:
                sock.sendall(b"hi")
                assert peer.recv(2) == b"hi"


def test_full_backlog_means_wait(tmp_path: Path) -> None:
    """None (not an error) once the listener's backlog is full: the caller waits for it."""
    path = str(tmp_path / "t.sock")
    pending: list[socket.socket] = []
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen(1)
        try:
            for _ in range(64):
                sock = connect_now(path)
                if sock is None:
                    break
                pending.append(sock)
            else:
                pytest.fail("the backlog never filled")
            assert pending  # some connected before the backlog filled
        finally:
            for sock in pending:
                sock.close()


def test_failures_raise_at_once(tmp_path: Path) -> None:
    path = tmp_path / "t.sock"
    with pytest.raises(FileNotFoundError):
        connect_now(str(path))
    with socket.socket(socket.AF_UNIX) as bound:  # bound, not listening
        bound.bind(str(path))
        with pytest.raises(ConnectionRefusedError):
            connect_now(str(path))
    path.unlink()
    path.write_text("not a socket")
    with pytest.raises(ConnectionRefusedError):
        connect_now(str(path))


@pytest.mark.asyncio
async def test_failed_adoption_ends_the_confirmed_connection() -> None:
    """A connected socket that cannot become a transport aborts the pump (the channel was
    already confirmed: it must end, not wait forever)."""
    config = load_config({"identity_path": "/nonexistent", "log_level": "error"}, environ={})
    relay = RelayServer(config, Metrics("server"), RoleState("server"))
    conn = _ServerConnection(relay)
    done: list[Pump] = []
    pump = Pump("c-1", "/t.sock", done.append)
    client = FakeEnd()
    pump.attach(CLIENT, client)
    sock = socket.socket(socket.AF_UNIX)
    sock.close()  # no descriptor: the loop cannot wrap it
    await conn._adopt_target(pump, sock)
    assert client.aborted and "target error" in pump.reason
