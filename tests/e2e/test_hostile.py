"""Hostile input against the real server process: garbage, truncation, fuzzing, auth abuse.

Throughout, an established forwarded stream must keep working, new clients must still get in,
and each hostile connection is logged once (no log flood).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import (
    FACTOR,
    EchoTarget,
    Keys,
    Proc,
    RelayServer,
    exchange,
    record,
    sha,
    ssh_forward,
    stopping,
    wait_for,
)

pytestmark = pytest.mark.e2e


class Bench:
    """A server, an established stream through ssh -L, and helpers to check both survive."""

    def __init__(self, server: RelayServer, forward: Proc, local: Path) -> None:
        self.server = server
        self.forward = forward
        self.local = local
        self.held = socket.socket(socket.AF_UNIX)
        self.held.settimeout(20 * FACTOR)
        self.held.connect(str(local))
        self.round = 0

    def still_serving(self) -> None:
        """The held stream still echoes and a brand-new connection works."""
        self.round += 1
        token = f"alive-{self.round}".encode()
        self.held.sendall(token)
        got = b""
        while len(got) < len(token):
            got += self.held.recv(len(token) - len(got))
        assert got == token
        payload = os.urandom(100_000)
        assert exchange(self.local, payload) == (len(payload), sha(payload))

    def events(self, remote_port: int) -> list[dict[str, object]]:
        """Log events that name the hostile connection's source port."""
        out = []
        for line in self.server.proc.log().splitlines():
            if line.startswith("{") and f':{remote_port}"' in line:
                out.append(json.loads(line))
        return out


@pytest.fixture
def bench(keys: Keys, echo: EchoTarget, tmp: Path) -> Iterator[Bench]:
    server = RelayServer(keys, tmp, "--connect-timeout", "2s")
    forward = ssh_forward(server.port, keys.identity, tmp / "l.sock", str(echo.path), tmp)
    b = Bench(server, forward, tmp / "l.sock")
    with stopping(server, forward):
        yield b
        b.held.close()
        assert server.proc.alive(), server.proc.log()
        assert "Traceback" not in server.proc.log()


LOGIN_TIMEOUT = "Login timeout expired"  # asyncssh's reason when connect_timeout ends a login
# A truncated first packet is told from a slow one only by the sender's EOF, so it is followed
# by a half-close; every other input must be refused for what it is while the sender waits.
TRUNCATED = b"SSH-2.0-trunc\r\n" + b"\x00\x00\x01"


def raw(bench: Bench, data: bytes, *, read: bool = True, half_close: bool = False) -> int:
    """Send ``data`` on a fresh TCP connection; wait until the server closes it.

    A reset is a close; a server that only lets the socket's own timeout run out fails here.
    """
    s = socket.create_connection(("127.0.0.1", bench.server.port), timeout=10 * FACTOR)
    port = s.getsockname()[1]
    with s:
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
            if read:
                while s.recv(65536):
                    pass
        except TimeoutError:
            raise AssertionError(
                f"the server never closed a connection that sent {data[:16]!r}...") from None
        except OSError:  # reset or broken pipe: the server closed first
            pass
    return port


def wait_logged_once(bench: Bench, port: int) -> dict[str, object]:
    """The one ``ssh_login_failed`` event of the connection from ``port``."""
    wait_for(lambda: any(e["event"] == "ssh_login_failed" for e in bench.events(port)), 10,
             "the hostile connection to be logged")
    failed = [e for e in bench.events(port) if e["event"] == "ssh_login_failed"]
    assert len(failed) == 1
    assert len(bench.events(port)) <= 3  # opened (debug), failed, nothing per byte
    return failed[0]


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x00" * 70000,
        TRUNCATED,  # truncated first packet
        b"SSH-2.0-big\r\n" + struct.pack(">I", 0xFFFFFFF0) + b"\x05" * 64,  # oversized length
        b"SSH-2.0-bad\r\n" + struct.pack(">IB", 12, 4) + b"\x14" + b"\xff" * 10,  # bad KEXINIT
        b"SSH-1.5-ancient\r\n",
        b"SSH-2.0-" + b"A" * 300 + b"\r\n",  # version line too long
    ],
    ids=["http", "zeros", "truncated", "oversized", "malformed-kexinit", "ssh1", "long-version"],
)
def test_garbage_is_refused_and_logged_once(bench: Bench, data: bytes) -> None:
    """Non-SSH and broken SSH input closes that connection only, logged once, for what it
    sent: not merely when the login grace (connect_timeout) runs out."""
    port = raw(bench, data, half_close=data == TRUNCATED)
    reason = wait_logged_once(bench, port)["reason"]
    assert reason != LOGIN_TIMEOUT, "the garbage was ignored until the login grace ran out"
    bench.still_serving()
    record("hostile", f"bad handshake bytes ({data[:12]!r}..., {len(data)} B)", 1,
           "connection closed, logged once; held stream and new clients unaffected")


def test_silent_client_dropped_after_login_grace(bench: Bench) -> None:
    """A client that connects and never speaks is dropped after connect_timeout."""
    s = socket.create_connection(("127.0.0.1", bench.server.port), timeout=15 * FACTOR)
    port = s.getsockname()[1]
    with s:
        banner = s.recv(256)
        assert banner.startswith(b"SSH-2.0-")
        while s.recv(65536):  # server must close on its own within the grace time
            pass
    assert wait_logged_once(bench, port)["reason"] == LOGIN_TIMEOUT
    bench.still_serving()
    record("hostile", "client that never speaks", 1, "dropped after connect_timeout, logged once")


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=True)
@given(st.binary(min_size=1, max_size=4096))
def test_fuzzed_handshake_bytes(bench_session: Bench, blob: bytes) -> None:
    """Random bytes after a valid banner never crash the server or disturb other streams."""
    raw(bench_session, b"SSH-2.0-fuzz\r\n" + blob)
    bench_session.still_serving()
    record("hostile", "fuzzed handshake bytes after a valid banner (hypothesis)", 1,
           "server kept serving; no crash")


@pytest.fixture(scope="module")
def bench_session(session_keys: Keys) -> Iterator[Bench]:
    """A module-wide bench for the hypothesis test (fixtures are not reset per example)."""
    from helpers import short_tmpdir

    tmp = short_tmpdir()
    keys = session_keys.copy_to(tmp / "keys")
    echo = EchoTarget(tmp / "echo.sock")
    server = RelayServer(keys, tmp, "--connect-timeout", "2s")
    forward = ssh_forward(server.port, keys.identity, tmp / "l.sock", str(echo.path), tmp)
    b = Bench(server, forward, tmp / "l.sock")
    with stopping(echo, server, forward):
        yield b
        b.held.close()
        assert server.proc.alive() and "Traceback" not in server.proc.log()


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=True)
@given(st.lists(st.binary(min_size=0, max_size=200_000), min_size=1, max_size=4))
def test_fuzzed_channel_data_is_byte_exact(bench_session: Bench, chunks: list[bytes]) -> None:
    """Arbitrary channel data (any bytes, any chunking) arrives exactly."""
    payload = b"".join(chunks)
    assert exchange(bench_session.local, payload) == (len(payload), sha(payload))
    record("hostile", "fuzzed channel data, any bytes and chunking (hypothesis)", 1,
           "byte-exact")


# ------------------------------------------------------------ authentication


async def attempt(port: int, **kwargs: object) -> str:
    """Try to log in with asyncssh; return the failure text ('' when it got in)."""
    options: dict[str, object] = {"known_hosts": None, "agent_path": None,
                                  "username": "tester", "connect_timeout": 15 * FACTOR}
    options.update(kwargs)
    try:
        async with asyncssh.connect("127.0.0.1", port, **options):  # type: ignore[arg-type]
            return ""
    except (asyncssh.Error, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"


def test_password_and_kbdint_refused(bench: Bench) -> None:
    """Password and keyboard-interactive logins are refused (not even offered)."""
    text = asyncio.run(attempt(bench.server.port, client_keys=None, password="hunter2",
                               preferred_auth="password"))
    assert "PermissionDenied" in text
    text = asyncio.run(attempt(bench.server.port, client_keys=None,
                               preferred_auth="keyboard-interactive", kbdint_auth=True))
    assert "PermissionDenied" in text
    bench.still_serving()


def test_no_key_refused(bench: Bench) -> None:
    """A client with no key at all is refused."""
    assert "PermissionDenied" in asyncio.run(attempt(bench.server.port, client_keys=[]))


def test_too_many_keys_disconnects(bench: Bench) -> None:
    """Offering more than 6 wrong keys gets the connection dropped, as OpenSSH's MaxAuthTries."""
    wrong = [asyncssh.generate_private_key("ssh-ed25519") for _ in range(8)]
    text = asyncio.run(attempt(bench.server.port, client_keys=wrong))
    # The client sees the DISCONNECT's reason, or a broken pipe or reset when the server's
    # close overtakes the client's next write (the kernel then discards the DISCONNECT); the
    # server's log says why either way.
    assert any(s in text for s in ("too many authentication failures", "BrokenPipe",
                                   "ConnectionReset")), text
    log = bench.server.proc.log()
    assert log.count('"ssh_key_rejected"') == 6
    assert '"ssh_auth_tries_exceeded"' in log
    bench.still_serving()
    record("hostile", "8 wrong keys offered", 1, "disconnected after 6 rejections, logged")


def test_unknown_user_with_allow_list(keys: Keys, tmp: Path) -> None:
    """With --allowed-users, an unknown user is refused with the right key, logged by address."""
    server = RelayServer(keys, tmp, "--allowed-users", "alice")
    key = asyncssh.read_private_key(str(keys.identity))
    with stopping(server):
        assert "PermissionDenied" in asyncio.run(
            attempt(server.port, client_keys=[key], username="mallory"))
        assert asyncio.run(attempt(server.port, client_keys=[key], username="alice")) == ""
        wait_for(lambda: '"ssh_login_failed"' in server.proc.log(), 10, "log")
    failure = next(json.loads(line) for line in server.proc.log().splitlines()
                   if '"ssh_login_failed"' in line)
    assert failure["user"] == "mallory" and str(failure["remote"]).startswith("127.0.0.1:")


def test_channel_requests_refused(bench: Bench, keys: Keys) -> None:
    """session/exec/shell, direct-tcpip, relative and dotted paths: refused with reasons."""
    key = asyncssh.read_private_key(str(keys.identity))

    async def run() -> list[str]:
        reasons = []
        async with asyncssh.connect("127.0.0.1", bench.server.port, known_hosts=None,
                                    agent_path=None, username="t", client_keys=[key]) as conn:
            for opener in (
                lambda: conn.run("true"),
                lambda: conn.create_session(asyncssh.SSHClientSession),
                lambda: conn.open_connection("127.0.0.1", 22),
                lambda: conn.open_unix_connection("relative/docker.sock"),
                lambda: conn.open_unix_connection("/tmp/../etc/shadow"),
                lambda: conn.open_unix_connection("/tmp/./x.sock"),
            ):
                try:
                    await opener()
                    reasons.append("OPENED")
                except asyncssh.ChannelOpenError as exc:
                    reasons.append(f"{exc.code}:{exc.reason}")
        return reasons

    reasons = asyncio.run(run())
    assert "OPENED" not in reasons
    prohibited = f"{asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED}:"
    assert all(r.startswith(prohibited) for r in reasons), reasons
    assert "not absolute" in reasons[3] and "not normalized" in reasons[4]
    bench.still_serving()
    record("hostile", "exec, session, direct-tcpip, relative and dotted socket paths", 6,
           "all refused: administratively prohibited, with the reason")


@pytest.mark.parametrize("pkttype,body", [
    (96, b"\x00"),              # CHANNEL_EOF with trailing junk
    (97, b"junk"),              # CHANNEL_CLOSE with trailing junk
    (93, b"\x00\x01"),          # WINDOW_ADJUST cut short
], ids=["eof-junk", "close-junk", "window-adjust-short"])
def test_malformed_channel_control_packets(bench: Bench, keys: Keys, echo: EchoTarget,
                                           pkttype: int, body: bytes) -> None:
    """Malformed EOF/CLOSE/WINDOW_ADJUST on an open channel (these take the server's fast
    receive path): that SSH connection is dropped with a protocol error, nothing else is hurt."""
    key = asyncssh.read_private_key(str(keys.identity))

    async def run() -> str:
        async with asyncssh.connect("127.0.0.1", bench.server.port, known_hosts=None,
                                    agent_path=None, username="t", client_keys=[key]) as conn:
            chan, _ = await conn.create_unix_connection(asyncssh.SSHUNIXSession, str(echo.path))
            chan.send_packet(pkttype, body)  # asyncssh prefixes the recipient channel
            try:
                await asyncio.wait_for(conn.wait_closed(), 10 * FACTOR)
            except TimeoutError:
                return "still open"
            return "closed"

    assert asyncio.run(run()) == "closed"
    wait_for(lambda: "Unexpected data at end of packet" in bench.server.proc.log()
             or "Incomplete packet" in bench.server.proc.log(), 10, "the protocol error logged")
    bench.still_serving()
