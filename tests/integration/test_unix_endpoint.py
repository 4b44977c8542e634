"""The Unix-socket endpoint: 0600, never steals a live socket, replaces a stale one, cleans up."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path

import pytest

from container_desktop_relay.endpoints.unix import probe_socket, start_unix_listener
from container_desktop_relay.errors import ListenError


class _Hello(asyncio.Protocol):
    """Answers every connection with b"hi" and closes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(b"hi")
        transport.close()


def _stale(path: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()


@pytest.mark.asyncio
async def test_listens_private_and_removes_on_close(tmp: Path) -> None:
    """The socket is 0600 even under a permissive umask, answers, and is removed on close."""
    path = tmp / "r.sock"
    old = os.umask(0)
    try:
        listener = await start_unix_listener(str(path), _Hello, buffer_size=8192)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    reader, writer = await asyncio.open_unix_connection(str(path))
    assert await reader.read() == b"hi"
    writer.close()
    await writer.wait_closed()
    listener.close()
    assert not path.exists()


@pytest.mark.asyncio
async def test_live_listener_is_never_stolen(tmp: Path) -> None:
    """A path owned by a live listener is refused and keeps working for its owner."""
    path = tmp / "r.sock"
    owner = socket.socket(socket.AF_UNIX)
    owner.bind(str(path))
    owner.listen(16)
    try:
        assert probe_socket(str(path)) == "live"
        with pytest.raises(ListenError, match="already listening"):
            await start_unix_listener(str(path), _Hello, buffer_size=8192)
        assert path.exists()
        with socket.socket(socket.AF_UNIX) as probe:
            probe.settimeout(5)
            probe.connect(str(path))
    finally:
        owner.close()


@pytest.mark.asyncio
async def test_stale_socket_is_replaced(tmp: Path) -> None:
    """A socket file nobody listens on is replaced."""
    path = tmp / "r.sock"
    _stale(path)
    assert probe_socket(str(path)) == "stale"
    listener = await start_unix_listener(str(path), _Hello, buffer_size=8192)
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
        assert await reader.read() == b"hi"
        writer.close()
        await writer.wait_closed()
    finally:
        listener.close()


@pytest.mark.asyncio
async def test_regular_file_and_missing_directory_refused(tmp: Path) -> None:
    """A non-socket file in the way is left alone; a missing directory is named."""
    path = tmp / "file"
    path.write_text("keep")
    with pytest.raises(ListenError, match="not a socket"):
        await start_unix_listener(str(path), _Hello, buffer_size=8192)
    assert path.read_text() == "keep"
    with pytest.raises(ListenError, match="does not exist") as err:
        await start_unix_listener(str(tmp / "no" / "r.sock"), _Hello, buffer_size=8192)
    assert f"directory {tmp / 'no'} does not exist; create it" in str(err.value)
    assert err.value.exit_code == 2 and not (tmp / "no").exists()  # bad input, nothing made


@pytest.mark.asyncio
async def test_close_leaves_a_replacement_alone(tmp: Path) -> None:
    """If another process replaced the socket file meanwhile, closing does not delete theirs."""
    path = tmp / "r.sock"
    listener = await start_unix_listener(str(path), _Hello, buffer_size=8192)
    path.unlink()
    _stale(path)  # someone else's socket file now
    listener.close()
    assert path.exists()
