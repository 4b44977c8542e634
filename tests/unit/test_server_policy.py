"""The server core in-process against a plain asyncssh client on loopback: what it refuses,
whom it admits (fast enough for make mutation's unit-test command)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest
import pytest_asyncio

from container_desktop_relay.config import load_config
from container_desktop_relay.observability.metrics import Metrics
from container_desktop_relay.runtime.state import RoleState
from container_desktop_relay.ssh.server import RelayServer
from helpers import EchoTarget, Keys, free_port, log_records

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
async def test_remote_forwarding_requests_refused(server: RelayServer, keys: Keys) -> None:
    """tcpip-forward and streamlocal-forward global requests get an SSH refusal and one
    forward_request_refused log line each; the connection goes on working."""
    with log_records("container_desktop_relay.ssh.server", logging.WARNING) as records:
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
    kinds = [getattr(r, "kind", None) for r in records
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


async def _open_error(conn: asyncssh.SSHClientConnection, path: str) -> asyncssh.ChannelOpenError:
    with pytest.raises(asyncssh.ChannelOpenError) as info:
        await conn.open_unix_connection(path)
    return info.value


@pytest.mark.asyncio
async def test_channels_other_than_streamlocal_refused_with_reasons(
        server: RelayServer, keys: Keys) -> None:
    """Sessions (shell, exec) and direct-tcpip get an SSH refusal that says why; bad socket
    paths are refused for what is wrong with them."""
    async with _connect(server, keys.identity) as conn:
        with pytest.raises(asyncssh.ChannelOpenError) as session:
            await conn.create_session(asyncssh.SSHClientSession, "id")
        assert session.value.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
        assert "session channels (shell, exec, subsystem) are not allowed" in session.value.reason
        with pytest.raises(asyncssh.ChannelOpenError) as tcp:
            await conn.open_connection("127.0.0.1", 9)
        assert "TCP forwarding (direct-tcpip) is not allowed" in tcp.value.reason
        relative = await _open_error(conn, "run/podman.sock")
        assert relative.reason == ("socket path 'run/podman.sock' is not absolute: it must be "
                                   "absolute, like '/run/podman.sock'")
        assert relative.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
        dotted = await _open_error(conn, "/run/../etc/x.sock")
        assert "is not normalized" in dotted.reason
        missing = await _open_error(conn, str(keys.dir / "missing.sock"))
        assert missing.code == asyncssh.OPEN_CONNECT_FAILED
        assert missing.reason == f"target socket {keys.dir / 'missing.sock'} does not exist"


@pytest.mark.asyncio
async def test_allowlist_pool_limit_and_drain(keys: Keys) -> None:
    """--allow-socket refuses other paths; max_connections refuses the one too many with
    'connection pool exhausted'; a draining server refuses new channels."""
    echo = EchoTarget(keys.dir / "e.sock")
    relay = RelayServer(
        load_config({"identity_path": str(keys.identity), "port": str(free_port()),
                     "authorized_keys_path": str(keys.authorized_keys), "log_level": "error",
                     "allow_socket": [str(keys.dir / "e*.sock")], "max_connections": "1"},
                    environ={}),
        Metrics("server"), RoleState("server"),
    )
    await relay.start()
    try:
        async with _connect(relay, keys.identity) as conn:
            other = await _open_error(conn, str(keys.dir / "other.sock"))
            assert other.reason.startswith(f"socket path {keys.dir / 'other.sock'} is not "
                                           "allowed (allowed: ")
            reader, writer = await conn.open_unix_connection(str(echo.path))
            writer.write(b"1")
            assert await asyncio.wait_for(reader.readexactly(1), TIMEOUT) == b"1"
            full = await _open_error(conn, str(echo.path))
            assert full.reason == "connection pool exhausted (max: 1)"
            assert full.code == asyncssh.OPEN_RESOURCE_SHORTAGE
            writer.close()
            relay.state.start_draining()
            draining = await _open_error(conn, str(echo.path))
            assert draining.reason == "server is shutting down"
    finally:
        echo.close()
        relay.stop_accepting()
        relay.close_all()


@pytest.mark.asyncio
async def test_allowed_users_and_key_only_login(keys: Keys) -> None:
    """With --allowed-users only those names get in; passwords are never offered."""
    relay = RelayServer(
        load_config({"identity_path": str(keys.identity), "port": str(free_port()),
                     "authorized_keys_path": str(keys.authorized_keys), "log_level": "error",
                     "allowed_users": ["alice"]}, environ={}),
        Metrics("server"), RoleState("server"),
    )
    await relay.start()
    try:
        async with asyncssh.connect("127.0.0.1", relay.port, username="alice",
                                    client_keys=[keys.identity], known_hosts=None,
                                    agent_path=None, login_timeout=TIMEOUT):
            pass
        with pytest.raises(asyncssh.PermissionDenied):
            async with asyncssh.connect("127.0.0.1", relay.port, username="mallory",
                                        client_keys=[keys.identity], known_hosts=None,
                                        agent_path=None, login_timeout=TIMEOUT):
                pass
        with pytest.raises(asyncssh.PermissionDenied):
            async with asyncssh.connect("127.0.0.1", relay.port, username="alice",
                                        client_keys=None, password="secret",
                                        known_hosts=None, agent_path=None,
                                        login_timeout=TIMEOUT):
                pass
    finally:
        relay.stop_accepting()
        relay.close_all()


def _busy_target(path: Path) -> tuple[socket.socket, list[socket.socket]]:
    """A Unix listener at ``path`` whose listen backlog is full: (the listener, the connections
    that fill it); the caller closes them all."""
    from container_desktop_relay.ssh.server import connect_now

    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(0)
    fillers = []
    while (sock := connect_now(str(path))) is not None:
        fillers.append(sock)
    return listener, fillers


@pytest.mark.asyncio
async def test_link_lost_while_a_queued_target_is_wrapped_leaves_nothing_active(
        server: RelayServer, keys: Keys, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The SSH connection drops in the event-loop pass between a queued target accepting and
    its socket being wrapped (a rare race, forced here by holding that pass open): the target
    is closed and nothing stays counted active or pending, so a drain does not wait for it."""

    from container_desktop_relay.ssh import server as server_module

    path = tmp_path / "busy.sock"
    listener, fillers = _busy_target(path)
    wrapping, release = asyncio.Event(), asyncio.Event()
    real_adopt = server_module._adopt

    async def held_adopt(factory: object, sock: socket.socket) -> object:
        wrapping.set()
        await release.wait()
        return await real_adopt(factory, sock)

    monkeypatch.setattr(server_module, "_adopt", held_adopt)
    conn = await _connect(server, keys.identity)
    opening = asyncio.create_task(conn.open_unix_connection(str(path)))
    loop = asyncio.get_running_loop()
    try:
        deadline = loop.time() + TIMEOUT
        while server.registry.pending != 1:  # the channel waits for the full backlog
            assert loop.time() < deadline, "the channel never queued for the target"
            await asyncio.sleep(0.01)
        accepted, _ = listener.accept()  # room in the backlog: the server's connect succeeds
        await asyncio.wait_for(wrapping.wait(), TIMEOUT)
        conn.close()
        await conn.wait_closed()
        while not all(c.lost for c in server.connections):
            assert loop.time() < deadline, "the server never saw the SSH connection drop"
            await asyncio.sleep(0.01)
        release.set()
        with pytest.raises((asyncssh.Error, OSError)):
            await asyncio.wait_for(opening, TIMEOUT)
        while server.registry.active or server.registry.pending:
            assert loop.time() < deadline, (server.registry.active, server.registry.pending)
            await asyncio.sleep(0.01)
        assert await server.drain(1.0) == 0
    finally:
        release.set()
        opening.cancel()
        listener.close()
        for sock in fillers:
            sock.close()
        with contextlib.suppress(NameError):
            accepted.close()


@pytest.mark.asyncio
async def test_host_key_probe_is_no_failed_login(server: RelayServer, keys: Keys) -> None:
    """A client that only fetches the host key (doctor's check, ssh-keyscan) and leaves is
    logged at debug and not counted; garbage and a refused key still are failed logins."""
    with log_records("container_desktop_relay.ssh.server", logging.DEBUG) as records:
        loop = asyncio.get_running_loop()

        async def all_gone() -> None:
            deadline = loop.time() + TIMEOUT
            while server.connections:
                assert loop.time() < deadline, "the server never saw the connection end"
                await asyncio.sleep(0.01)

        def events(name: str) -> list[logging.LogRecord]:
            return [r for r in records if r.getMessage() == name]

        key = await asyncssh.get_server_host_key("127.0.0.1", server.port)
        assert key is not None
        await all_gone()
        assert not events("ssh_login_failed")
        closed = events("ssh_connection_closed")
        assert len(closed) == 1 and closed[0].levelno == logging.DEBUG
        assert getattr(closed[0], "reason", "").startswith("closed before any login attempt")
        assert server.metrics.connection_errors == 0

        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with contextlib.suppress(OSError):
            await asyncio.wait_for(reader.read(), TIMEOUT)
        writer.close()
        await all_gone()
        assert len(events("ssh_login_failed")) == 1
        assert server.metrics.connection_errors == 1

        with pytest.raises(asyncssh.PermissionDenied):
            async with _connect(server, asyncssh.generate_private_key("ssh-ed25519")):
                pass
        await all_gone()
        failed = events("ssh_login_failed")
        assert len(failed) == 2 and failed[1].levelno == logging.WARNING
        assert server.metrics.connection_errors == 2


def _relay(keys: Keys, **settings: object) -> RelayServer:
    return RelayServer(
        load_config({"identity_path": str(keys.identity), "port": str(free_port()),
                     "authorized_keys_path": str(keys.authorized_keys), "log_level": "error",
                     **settings}, environ={}),
        Metrics("server"), RoleState("server"),
    )


@pytest.mark.asyncio
async def test_passwords_and_keyboard_interactive_never_offered(server: RelayServer) -> None:
    """The server offers public-key authentication only: a client able to answer a password
    or keyboard-interactive prompt is never asked, and is refused."""
    asked: list[str] = []

    class Client(asyncssh.SSHClient):
        def password_auth_requested(self) -> None:
            asked.append("password")

        def kbdint_auth_requested(self) -> None:
            asked.append("keyboard-interactive")

    with pytest.raises(asyncssh.PermissionDenied):
        async with asyncssh.connect("127.0.0.1", server.port, username="t", client_keys=None,
                                    known_hosts=None, agent_path=None, client_factory=Client,
                                    login_timeout=TIMEOUT):
            pass
    assert asked == []


@pytest.mark.asyncio
async def test_sixth_rejected_key_ends_the_login(server: RelayServer, keys: Keys) -> None:
    """Five rejected keys still leave the authorized one its turn; the sixth rejected key
    ends the connection (OpenSSH's MaxAuthTries 6), so the seventh is never tried."""
    identity = asyncssh.read_private_key(str(keys.identity))
    strangers = [asyncssh.generate_private_key("ssh-ed25519") for _ in range(6)]
    async with _connect_keys(server, [*strangers[:5], identity]):
        pass
    with pytest.raises(asyncssh.PermissionDenied,
                       match=r"too many authentication failures \(6\)"):
        async with _connect_keys(server, [*strangers, identity]):
            pass


def _connect_keys(relay: RelayServer, client_keys: list[asyncssh.SSHKey]
                  ) -> asyncssh.SSHClientConnection:
    return asyncssh.connect("127.0.0.1", relay.port, username="t", client_keys=client_keys,
                            known_hosts=None, agent_path=None, login_timeout=TIMEOUT)


@pytest.mark.asyncio
async def test_authorized_keys_others_can_write_is_refused(keys: Keys) -> None:
    """An authorized_keys others could write stops the start, naming it; made so later, its
    keys stop logging in (the server goes on, and its own identity still gets in)."""
    from container_desktop_relay.errors import KeyFileError
    from container_desktop_relay.ssh.keys import authorized_key_line

    keys.authorized_keys.chmod(0o666)
    with pytest.raises(KeyFileError, match=rf"authorized keys {keys.authorized_keys} is "
                                           r"writable by group/others \(mode 0666\)"):
        await _relay(keys).start()
    other = asyncssh.generate_private_key("ssh-ed25519")
    keys.authorized_keys.chmod(0o600)
    keys.authorized_keys.write_bytes(authorized_key_line(other))
    relay = _relay(keys)
    await relay.start()
    try:
        async with _connect(relay, other):
            pass
        keys.authorized_keys.chmod(0o666)
        with pytest.raises(asyncssh.PermissionDenied):
            async with _connect(relay, other):
                pass
        async with _connect(relay, keys.identity):
            pass
    finally:
        relay.stop_accepting()
        relay.close_all()


@pytest.mark.asyncio
async def test_line_without_port_forwarding_opens_no_channel(server: RelayServer,
                                                             keys: Keys) -> None:
    """A login through an authorized_keys line with no-port-forwarding gets in but may open
    no socket, and is told which line says so."""
    from container_desktop_relay.ssh.keys import authorized_key_line

    key = asyncssh.generate_private_key("ssh-ed25519")
    keys.authorized_keys.write_bytes(b"# first\nno-port-forwarding " + authorized_key_line(key))
    echo = EchoTarget(keys.dir / "e.sock")
    try:
        async with _connect(server, key) as conn:
            refused = await _open_error(conn, str(echo.path))
        assert refused.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
        assert refused.reason == ("port forwarding is disabled by no-port-forwarding "
                                  f"({keys.authorized_keys} line 2)")
        async with _connect(server, keys.identity) as conn:  # the identity's own line rules
            assert await _echo_through(conn, echo.path) == b"ping"
    finally:
        echo.close()
    assert server.metrics.connection_errors == 1


@pytest.mark.asyncio
async def test_refusals_say_why_with_their_codes(server: RelayServer, keys: Keys) -> None:
    """Each refused channel carries the SSH code a client acts on and the whole reason; each
    counts as a connection error."""
    async with _connect(server, keys.identity) as conn:
        with pytest.raises(asyncssh.ChannelOpenError) as session:
            await conn.create_session(asyncssh.SSHClientSession, "id")
        assert session.value.reason == (
            "session channels (shell, exec, subsystem) are not allowed: this server only "
            "forwards direct-streamlocal@openssh.com channels")
        with pytest.raises(asyncssh.ChannelOpenError) as tcp:
            await conn.open_connection("127.0.0.1", 9)
        assert (tcp.value.code, tcp.value.reason) == (
            asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
            "TCP forwarding (direct-tcpip) is not allowed: this server only forwards to Unix "
            "sockets")
        before = server.metrics.connection_errors
        await _open_error(conn, "relative.sock")
        assert server.metrics.connection_errors == before + 1
        assert server.metrics.last_error == ("socket path 'relative.sock' is not absolute: it "
                                              "must be absolute, like '/relative.sock'")
        server.state.start_draining()
        draining = await _open_error(conn, "relative.sock")  # the drain is said first
        assert (draining.code, draining.reason) == (asyncssh.OPEN_CONNECT_FAILED,
                                                    "server is shutting down")


@pytest.mark.asyncio
async def test_pool_limit_counts_open_connections_and_frees_closed_ones(keys: Keys) -> None:
    """With max_connections 2, two connections are open and the third is refused; once one
    closes, its slot takes a new connection."""
    echo = EchoTarget(keys.dir / "e.sock")
    relay = _relay(keys, max_connections="2")
    await relay.start()
    loop = asyncio.get_running_loop()
    try:
        async with _connect(relay, keys.identity) as conn:
            opened = []
            for n in (b"1", b"2"):
                reader, writer = await conn.open_unix_connection(str(echo.path))
                writer.write(n)
                assert await asyncio.wait_for(reader.readexactly(1), TIMEOUT) == n
                opened.append(writer)
            full = await _open_error(conn, str(echo.path))
            assert (full.code, full.reason) == (asyncssh.OPEN_RESOURCE_SHORTAGE,
                                                "connection pool exhausted (max: 2)")
            opened[0].close()
            deadline = loop.time() + TIMEOUT
            while True:  # the slot frees once the server has seen the close
                try:
                    assert await _echo_through(conn, echo.path) == b"ping"
                    break
                except asyncssh.ChannelOpenError as exc:
                    assert exc.code == asyncssh.OPEN_RESOURCE_SHORTAGE
                    assert loop.time() < deadline, "the closed connection's slot never freed"
                    await asyncio.sleep(0.01)
    finally:
        echo.close()
        relay.stop_accepting()
        relay.close_all()


@pytest.mark.asyncio
async def test_one_opened_and_one_closed_line_per_connection(server: RelayServer,
                                                             keys: Keys) -> None:
    """Each forwarded connection logs exactly one connection_opened and one
    connection_closed, with the same id and its socket path (and the SSH user on the first);
    a refused one logs neither."""
    with log_records("container_desktop_relay.ssh.server", logging.INFO) as records:
        echo = EchoTarget(keys.dir / "e.sock")
        loop = asyncio.get_running_loop()
        try:
            async with _connect(server, keys.identity) as conn:
                for _ in range(2):
                    assert await _echo_through(conn, echo.path) == b"ping"
                await _open_error(conn, "relative.sock")
                deadline = loop.time() + TIMEOUT
                while server.registry.active:  # the last close reaches the server
                    assert loop.time() < deadline, "the connections never closed"
                    await asyncio.sleep(0.01)
        finally:
            echo.close()
    events = [(r.getMessage(), getattr(r, "conn_id", None), getattr(r, "socket_path", None))
              for r in records if r.getMessage() in ("connection_opened", "connection_closed")]
    assert {getattr(r, "user", None) for r in records
            if r.getMessage() == "connection_opened"} == {"t"}  # who opened it
    ids = sorted({conn_id for _, conn_id, _ in events})
    assert len(ids) == 2 and all(str(i).startswith("c-") for i in ids), events
    for conn_id in ids:
        assert [(m, p) for m, i, p in events if i == conn_id] == [
            ("connection_opened", str(echo.path)), ("connection_closed", str(echo.path))]


@pytest.mark.asyncio
async def test_channels_queued_for_a_busy_target_count_against_the_pool(
        keys: Keys, tmp_path: Path) -> None:
    """Channels waiting for a target whose listen backlog is full hold their slots (with
    max_connections 2, two queued channels leave none for a third), and each is served once
    the target accepts."""


    path = tmp_path / "busy.sock"
    listener, fillers = _busy_target(path)
    echo = EchoTarget(keys.dir / "e.sock")
    relay = _relay(keys, max_connections="2")
    await relay.start()
    accepted: list[socket.socket] = []
    loop = asyncio.get_running_loop()
    try:
        async with _connect(relay, keys.identity) as conn:
            # one connection's channel requests are handled in order: both are queued first
            queued = [asyncio.create_task(conn.open_unix_connection(str(path))) for _ in "ab"]
            await asyncio.sleep(0)  # one pass: each task sends its request before the third
            full = await _open_error(conn, str(echo.path))
            assert (full.code, full.reason) == (asyncssh.OPEN_RESOURCE_SHORTAGE,
                                                "connection pool exhausted (max: 2)")
            listener.settimeout(TIMEOUT)
            while len(accepted) < len(fillers) + 2:  # make room: the queued connects land
                accepted.append((await loop.run_in_executor(None, listener.accept))[0])
            streams = await asyncio.wait_for(asyncio.gather(*queued), TIMEOUT)
            for n, (_, writer) in enumerate(streams):
                writer.write(b"%d" % n)
            got = set()
            for sock in accepted[len(fillers):]:
                sock.settimeout(TIMEOUT)
                got.add(await loop.run_in_executor(None, sock.recv, 1))
            assert got == {b"0", b"1"}
    finally:
        echo.close()
        relay.stop_accepting()
        relay.close_all()
        listener.close()
        for sock in fillers + accepted:
            sock.close()
