"""The server core in-process against a plain asyncssh client: what it refuses, whom it admits."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest
import pytest_asyncio

from container_desktop_relay.config import load_config
from container_desktop_relay.metrics import Metrics
from container_desktop_relay.server import RelayServer
from container_desktop_relay.state import RoleState
from helpers import EchoTarget, Keys, free_port

TIMEOUT = 10.0


@pytest_asyncio.fixture
async def server(keys: Keys) -> AsyncIterator[RelayServer]:
    """The server role on a free loopback port, authorized_keys as the test leaves it."""
    relay = RelayServer(
        load_config({"identity_path": str(keys.identity), "port": str(free_port()),
                     "authorized_keys_path": str(keys.authorized_keys),
                     "log_level": "error"}, environ={}),
        Metrics("server"), RoleState("server"),
    )
    await relay.start()
    yield relay
    relay.stop_accepting()
    relay.close_all()


def _connect(relay: RelayServer, key: asyncssh.SSHKey | Path) -> asyncssh.SSHClientConnection:
    return asyncssh.connect("127.0.0.1", relay.port, username="t", client_keys=[key],
                            known_hosts=None, agent_path=None, passphrase=None,
                            login_timeout=TIMEOUT)


async def _echo_through(conn: asyncssh.SSHClientConnection, target: Path) -> bytes:
    reader, writer = await conn.open_unix_connection(str(target))
    writer.write(b"ping")
    writer.write_eof()
    try:
        return await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()


@pytest.mark.asyncio
async def test_remote_forwarding_requests_refused(server: RelayServer, keys: Keys,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """tcpip-forward and streamlocal-forward global requests get an SSH refusal and one
    forward_request_refused log line each; the connection goes on working."""
    caplog.set_level(logging.WARNING)
    tmp = keys.dir
    async with _connect(server, keys.identity) as conn:
        with pytest.raises(asyncssh.ChannelListenError):
            await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", 9)
        with pytest.raises(asyncssh.ChannelListenError):
            await conn.forward_remote_path(str(tmp / "remote.sock"), str(tmp / "local.sock"))
        assert not (tmp / "remote.sock").exists()
        echo = EchoTarget(tmp / "e.sock")
        try:
            assert await _echo_through(conn, echo.path) == b"ping"
        finally:
            echo.close()
    kinds = [getattr(r, "kind", None) for r in caplog.records
             if r.getMessage() == "forward_request_refused"]
    assert kinds == ["tcpip-forward", "streamlocal-forward"]


@pytest.mark.asyncio
async def test_identity_public_half_admitted_without_authorized_keys_entry(
        server: RelayServer, keys: Keys) -> None:
    """With authorized_keys empty, the server's own identity still logs in (the client and the
    server share it) and another key does not."""
    keys.authorized_keys.write_bytes(b"")
    async with _connect(server, keys.identity) as conn:
        echo = EchoTarget(keys.dir / "e.sock")
        try:
            assert await _echo_through(conn, echo.path) == b"ping"
        finally:
            echo.close()
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(asyncssh.PermissionDenied):
        async with _connect(server, stranger):
            pass
