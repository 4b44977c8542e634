"""The client core in-process against the server core: state, metrics and close reasons."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from container_desktop_relay.config import load_config
from container_desktop_relay.errors import ListenError
from container_desktop_relay.observability.metrics import Metrics
from container_desktop_relay.runtime.state import RoleState
from container_desktop_relay.ssh.client import RelayClient
from container_desktop_relay.ssh.server import RelayServer
from helpers import EchoTarget, Keys, free_port

TIMEOUT = 10.0


@dataclass
class Pair:
    """A server role and a client role in this event loop."""

    server: RelayServer
    client: RelayClient
    socket: Path


async def _start_pair(keys: Keys, tmp: Path, remote: str, *extra: tuple[str, str],
                      server_extra: dict[str, str] | None = None) -> Pair:
    port = free_port()
    common = {"identity_path": str(keys.identity), "port": str(port), "log_level": "error"}
    server = RelayServer(
        load_config({**common, "authorized_keys_path": str(keys.authorized_keys),
                     **(server_extra or {})}, environ={}),
        Metrics("server"), RoleState("server"),
    )
    await server.start()
    sock = tmp / "c.sock"
    client_config = load_config(
        {**common, "listen": f"unix://{sock}", "known_hosts_path": str(tmp / "kh"),
         "ssh_connection": f"ssh://t@127.0.0.1:{port}{remote}", **dict(extra)},
        environ={},
    )
    client = RelayClient(client_config, Metrics("client"), RoleState("client"))
    try:
        await client.start()
    except BaseException:
        server.stop_accepting()
        server.close_all()
        raise
    return Pair(server, client, sock)


@pytest_asyncio.fixture
async def pair(keys: Keys, tmp: Path, echo: EchoTarget) -> AsyncIterator[Pair]:
    """Server + client forwarding to the echo target."""
    p = await _start_pair(keys, tmp, str(echo.path))
    yield p
    await p.client.aclose()
    p.server.stop_accepting()
    p.server.close_all()


async def _wait(predicate: Callable[[], object], what: str) -> None:
    try:
        async with asyncio.timeout(TIMEOUT):
            while not predicate():  # noqa: ASYNC110 - polls arbitrary conditions
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out after {TIMEOUT:g}s waiting for {what}") from None


async def _roundtrip(sock: Path, data: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(sock))
    try:
        writer.write(data)
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _closed_without_answer(sock: Path, data: bytes) -> bool:
    """Whether a connection sending ``data`` is closed without any reply (EOF or reset: a
    socket closed with unread input resets its peer)."""
    try:
        return await _roundtrip(sock, data) == b""
    except ConnectionResetError:
        return True


@pytest.mark.asyncio
async def test_ready_after_probe_and_metrics_count(pair: Pair) -> None:
    """The client turns ready with the link up; each connection records an open latency."""
    await _wait(lambda: pair.client.state.ready, "ready")
    assert pair.client.state.link_up is True
    for i in range(5):
        assert await _roundtrip(pair.socket, b"x%d" % i) == b"x%d" % i
    await _wait(lambda: not pair.client.registry.active, "connections to finish")
    snap = pair.client.metrics.snapshot()
    assert snap.total_connections == 5 and snap.total_errors == 0
    assert snap.total_bytes_read == snap.total_bytes_written == 10
    assert pair.client.metrics.open_latency_hist.count == 5


@pytest.mark.asyncio
async def test_link_loss_closes_connections_and_clears_ready(pair: Pair) -> None:
    """When the server drops the link, open connections end and the client is not ready."""
    await _wait(lambda: pair.client.state.ready, "ready")
    reader, writer = await asyncio.open_unix_connection(str(pair.socket))
    writer.write(b"hello")
    assert await asyncio.wait_for(reader.readexactly(5), TIMEOUT) == b"hello"
    pair.server.stop_accepting()
    pair.server.close_all()
    assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
    writer.close()
    await writer.wait_closed()
    await _wait(lambda: pair.client.state.link_up is False, "link down")
    assert pair.client.state.ready is False
    assert pair.client.state.reason.startswith("SSH link down")
    assert pair.client.metrics.connection_errors >= 1


@pytest.mark.asyncio
async def test_channel_open_failure_closes_local_and_is_counted(keys: Keys, tmp: Path) -> None:
    """A missing remote socket: never ready, and a local connection is closed with the reason."""
    p = await _start_pair(keys, tmp, str(tmp / "missing.sock"))
    try:
        await _wait(lambda: "remote socket unreachable" in p.client.state.reason, "probe")
        assert p.client.state.ready is False and p.client.state.link_up is True
        assert await _closed_without_answer(p.socket, b"data")
        await _wait(lambda: p.client.metrics.connection_errors >= 1, "error count")
        assert "does not exist" in p.client.metrics.last_error
        await _wait(lambda: not p.client.registry.active, "pump finished")
    finally:
        await p.client.aclose()
        p.server.stop_accepting()
        p.server.close_all()


@pytest.mark.asyncio
async def test_second_client_on_same_socket_refused(pair: Pair, keys: Keys, tmp: Path) -> None:
    """The endpoint layer refuses a live socket path; the first client is unaffected."""
    config = load_config(
        {"identity_path": str(keys.identity), "listen": f"unix://{pair.socket}",
         "ssh_connection": f"ssh://t@127.0.0.1:{pair.server.port}/x", "log_level": "error"},
        environ={},
    )
    other = RelayClient(config, Metrics("client"), RoleState("client"))
    with pytest.raises(ListenError, match="already listening"):
        await other.start()
    assert pair.socket.exists()
    assert await _roundtrip(pair.socket, b"still") == b"still"


@pytest.mark.asyncio
async def test_max_connections_refuses_extra_local_connections(
    keys: Keys, tmp: Path, echo: EchoTarget
) -> None:
    """Beyond --max-connections a local connection is closed with the pool reason; others go on."""
    p = await _start_pair(keys, tmp, str(echo.path), ("max_connections", "2"))
    try:
        held = []
        for _ in range(2):
            reader, writer = await asyncio.open_unix_connection(str(p.socket))
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), TIMEOUT) == b"ping"
            held.append((reader, writer))
        assert await _closed_without_answer(p.socket, b"extra")
        assert "connection pool exhausted (max: 2)" in p.client.metrics.last_error
        for reader, writer in held:
            writer.write(b"more")
            assert await asyncio.wait_for(reader.readexactly(4), TIMEOUT) == b"more"
            writer.close()
            await writer.wait_closed()
    finally:
        await p.client.aclose()
        p.server.stop_accepting()
        p.server.close_all()


def _listener_with_full_backlog(path: Path) -> tuple[socket.socket, list[socket.socket]]:
    """A Unix listener that accepts nothing, its queue filled until connects would block."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(0)
    queued = []
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(str(path))
        except BlockingIOError:
            sock.close()
            return listener, queued
        queued.append(sock)


class _EchoAll:
    """A stream handler echoing each connection's input at its end; closes them all on exit."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        writer.write(await reader.read())
        writer.close()

    async def close(self) -> None:
        for writer in self.writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@pytest.mark.asyncio
async def test_target_with_full_backlog_is_waited_for(keys: Keys, tmp: Path) -> None:
    """A target whose listen queue is full: the open waits, counted as pending, and goes
    through once the target accepts."""
    listener, queued = _listener_with_full_backlog(tmp / "busy.sock")
    p = await _start_pair(keys, tmp, str(tmp / "busy.sock"))
    target = None
    echo = _EchoAll()
    try:
        await _wait(lambda: p.server.registry.pending >= 1,
                    "the probe's open waiting for the target")
        assert p.client.state.ready is False
        target = await asyncio.start_unix_server(echo, sock=listener)
        await _wait(lambda: p.client.state.ready, "client ready once the target accepts")
        assert await _roundtrip(p.socket, b"waited") == b"waited"
        assert p.server.registry.pending == 0
    finally:
        await p.client.aclose()
        p.server.stop_accepting()
        p.server.close_all()
        if target is not None:
            target.close()
        await echo.close()
        listener.close()
        for sock in queued:
            sock.close()


@pytest.mark.asyncio
async def test_target_with_full_backlog_times_out(keys: Keys, tmp: Path) -> None:
    """A target that never accepts: the open is refused after max_request_wait_time."""
    listener, queued = _listener_with_full_backlog(tmp / "busy.sock")
    p = await _start_pair(keys, tmp, str(tmp / "busy.sock"),
                          server_extra={"max_request_wait_time": "0.2"})
    try:
        await _wait(lambda: "accepted nothing within 0.2s" in p.client.state.reason,
                    "probe refused")
        assert "listen backlog stayed full" in p.server.metrics.last_error
    finally:
        await p.client.aclose()
        p.server.stop_accepting()
        p.server.close_all()
        listener.close()
        for sock in queued:
            sock.close()


@pytest.mark.asyncio
async def test_channel_open_in_flight_when_the_link_drops_is_retried(keys: Keys,
                                                                     tmp: Path) -> None:
    """A local connection whose channel is still opening (the server waits for a target with
    a full backlog) when the SSH connection drops never reached the target: it waits for the
    next link and is served there, not refused."""
    listener, queued = _listener_with_full_backlog(tmp / "busy.sock")
    p = await _start_pair(keys, tmp, str(tmp / "busy.sock"),
                          server_extra={"max_request_wait_time": "30"})
    second: RelayServer | None = None
    target = None
    echo = _EchoAll()
    try:
        await _wait(lambda: p.server.registry.pending >= 1,
                    "the probe's open waiting for the target")
        answer = asyncio.ensure_future(_roundtrip(p.socket, b"in flight"))
        await _wait(lambda: p.server.registry.pending >= 2, "the connection's open waiting too")
        p.server.stop_accepting()
        p.server.close_all()  # the SSH connection drops under both opens
        await _wait(lambda: p.client.state.link_up is False, "link down")
        for sock in queued:
            sock.close()
        target = await asyncio.start_unix_server(echo, sock=listener)
        second = RelayServer(p.server.config, Metrics("server"), RoleState("server"))
        await second.start()
        got = await asyncio.wait_for(answer, TIMEOUT)
        assert got == b"in flight", list(p.client.metrics.recent_errors)
        assert p.client.metrics.snapshot().total_connections == 1
        assert not [e for e in p.client.metrics.recent_errors if "channel open" in e]
    finally:
        await p.client.aclose()
        for server in (p.server, second):
            if server is not None:
                server.stop_accepting()
                server.close_all()
        if target is not None:
            target.close()
        await echo.close()
        listener.close()
        for sock in queued:
            sock.close()
