"""The asyncssh layer against real OpenSSH, both ways, for AEAD and CTR ciphers, in every
patch mode (all, correctness, none: the relay must be correct with any of them)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from container_desktop_relay.commands.bench import chains
from container_desktop_relay.commands.bench.targets import pattern, pattern_digest
from container_desktop_relay.ssh import tune as sshtune
from helpers import skip_or_fail

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("asyncssh_patches")]

CIPHERS = ["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com", "aes128-ctr"]
PAYLOAD = 64 * 1024 * 1024
REKEY_BYTES = 16 * 1024 * 1024
TOTAL_SLOW = 96 * 1024 * 1024
TIMEOUT = 120.0 * float(os.environ.get("CDR_TEST_TIMEOUT_FACTOR", "1"))


def _need(tool: str | None, what: str) -> str:
    if tool:
        return tool
    skip_or_fail(f"{what} is not installed")


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """A short temp dir (AF_UNIX paths must stay under ~100 bytes) with ssh keys."""
    _need(shutil.which("ssh-keygen"), "ssh-keygen")
    path = Path(tempfile.mkdtemp(prefix="cdr-e2e-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def ed_keys(workdir: Path) -> dict[str, Path]:
    """ed25519 host and user keys and an authorized_keys file."""
    return chains.make_keys(workdir)


@contextlib.asynccontextmanager
async def _target(workdir: Path) -> AsyncIterator[str]:
    path = str(workdir / "target.sock")
    proc = await chains.start_target(path)
    try:
        yield path
    finally:
        await chains.stop(proc)


@contextlib.asynccontextmanager
async def _sshd(workdir: Path, keys: dict[str, Path]) -> AsyncIterator[int]:
    sshd = _need(chains.find_sshd(), "OpenSSH sshd")
    port = chains.free_port()
    proc = await chains.start_sshd(sshd, chains.sshd_config(workdir, port, keys), port)
    try:
        yield port
    finally:
        await chains.stop(proc)


def _connect(port: int, keys: dict[str, Path], **options: Any) -> asyncssh.SSHClientConnection:
    """asyncssh.connect to 127.0.0.1:``port`` with the test user key, the host key pinned."""
    host_key = asyncssh.read_public_key(str(keys["host"]) + ".pub")
    known = asyncssh.import_known_hosts(
        f"[127.0.0.1]:{port} {host_key.export_public_key().decode()}")
    return asyncssh.connect(  # type: ignore[return-value]
        "127.0.0.1", port, username=os.environ.get("USER", "root"),
        client_keys=[str(keys["user"])], known_hosts=known, **options)


async def _echo_stream(reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes],
                       nbytes: int) -> str:
    """Send ``nbytes`` of pattern while reading the echo; returns the echo's sha256."""
    block = pattern()

    async def send() -> None:
        sent = 0
        while sent < nbytes:
            chunk = block[: min(len(block), nbytes - sent)]
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
        writer.write_eof()

    sender = asyncio.create_task(send())
    digest = hashlib.sha256()
    got = 0
    while chunk := await reader.read(1024 * 1024):
        digest.update(chunk)
        got += len(chunk)
    await sender
    assert got == nbytes
    return digest.hexdigest()


async def _echo_socket(path: str, nbytes: int) -> str:
    """Echo ``nbytes`` through a local Unix socket; returns the echo's sha256."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX)
    sock.setblocking(False)
    await loop.sock_connect(sock, path)
    block = pattern()

    async def send() -> None:
        await loop.sock_sendall(sock, b"ECHO\n")
        sent = 0
        while sent < nbytes:
            chunk = block[: min(len(block), nbytes - sent)]
            await loop.sock_sendall(sock, chunk)
            sent += len(chunk)
        sock.shutdown(socket.SHUT_WR)

    sender = asyncio.create_task(send())
    digest = hashlib.sha256()
    got = 0
    try:
        while chunk := await loop.sock_recv(sock, 1024 * 1024):
            digest.update(chunk)
            got += len(chunk)
        await sender
    finally:
        sender.cancel()
        sock.close()
    assert got == nbytes
    return digest.hexdigest()


async def _test_patched_client_to_openssh_sshd(workdir: Path, keys: dict[str, Path],
                                              cipher: str) -> None:
    """Patched asyncssh client -> sshd -> target: 64 MiB echoed both ways, rekeyed midway."""
    async with asyncio.timeout(TIMEOUT), _target(workdir) as target, \
            _sshd(workdir, keys) as port, \
            _connect(port, keys, encryption_algs=[cipher], compression_algs=["none"],
                     rekey_bytes=REKEY_BYTES) as conn:
        assert conn.get_extra_info("send_cipher") == cipher
        send_enc = conn._send_encryption  # type: ignore[attr-defined]
        recv_enc = conn._recv_encryption  # type: ignore[attr-defined]
        reader, writer = await conn.open_unix_connection(
            target, window=sshtune.channel_window(), max_pktsize=sshtune.max_packet_size())
        writer.write(b"ECHO\n")
        assert await _echo_stream(reader, writer, PAYLOAD) == pattern_digest(PAYLOAD)
        # rekey_bytes made asyncssh start at least one key exchange mid-transfer
        assert conn._send_encryption is not send_enc  # type: ignore[attr-defined]
        assert conn._recv_encryption is not recv_enc  # type: ignore[attr-defined]


async def _test_openssh_client_to_patched_server(workdir: Path, keys: dict[str, Path],
                                                cipher: str) -> None:
    """ssh -L -> our server -> target: 64 MiB echoed both ways, ssh rekeying midway."""
    _need(shutil.which("ssh"), "OpenSSH ssh")
    local = str(workdir / "fwd.sock")
    log = workdir / "ssh.log"
    log.unlink(missing_ok=True)
    port = chains.free_port()
    async with asyncio.timeout(TIMEOUT), _target(workdir) as target:
        server = await chains.start_relay_server(keys, port, 100)
        ssh = None
        try:
            ssh = await chains.start_ssh_forward(
                workdir, keys, port, local, target, cipher,
                extra=["-o", "RekeyLimit=16M", "-o", "LogLevel=DEBUG1"])
            assert await _echo_socket(local, PAYLOAD) == pattern_digest(PAYLOAD)
            text = log.read_text(errors="replace")
            assert f"cipher: {cipher}" in text
            assert text.count("SSH2_MSG_NEWKEYS received") >= 2, "no rekey happened"
            assert server.returncode is None
        finally:
            await chains.stop(ssh)
            await chains.stop(server)


async def _test_keepalive_with_patched_timer(workdir: Path, keys: dict[str, Path]) -> None:
    port = chains.free_port()
    server = await chains.start_relay_server(keys, port, 100)
    stopped = False
    try:
        async with _connect(port, keys, keepalive_interval=0.2, keepalive_count_max=2) as conn:
            # Idle for many intervals: keepalives are answered, the link stays up.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(asyncio.shield(conn.wait_closed()), 1.5)
            os.kill(server.pid, signal.SIGSTOP)
            stopped = True
            # Frozen server: detected after about interval * (count_max + 1).
            await asyncio.wait_for(conn.wait_closed(), 10 * float(
                os.environ.get("CDR_TEST_TIMEOUT_FACTOR", "1")))
    finally:
        if stopped:
            os.kill(server.pid, signal.SIGCONT)
        await chains.stop(server)


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _send_until_stalled(sock: socket.socket, stall: float, limit: int) -> int:
    """Send the pattern stream until no byte is accepted for ``stall`` s; returns bytes sent."""
    loop = asyncio.get_running_loop()
    block = pattern()
    sent = 0
    while sent < limit:
        off = sent % len(block)
        try:
            sent += sock.send(block[off:off + 65536])
            continue
        except BlockingIOError:
            pass
        writable: asyncio.Future[None] = loop.create_future()
        loop.add_writer(sock.fileno(), _set_once, writable)
        try:
            await asyncio.wait_for(writable, stall)
        except TimeoutError:
            return sent
        finally:
            loop.remove_writer(sock.fileno())
    return sent


async def _send_rest(sock: socket.socket, start: int, total: int) -> None:
    """Continue the pattern stream from byte ``start`` to ``total``, then half-close."""
    loop = asyncio.get_running_loop()
    block = pattern()
    sent = start
    while sent < total:
        off = sent % len(block)
        chunk = block[off:off + min(len(block) - off, total - sent)]
        await loop.sock_sendall(sock, chunk)
        sent += len(chunk)
    sock.shutdown(socket.SHUT_WR)


async def _test_backpressure_bounded_with_stalled_reader(workdir: Path, keys: dict[str, Path],
                                                         mode: str) -> None:
    """A target that stops reading bounds what the chain accepts and the server's RSS.

    Without the correctness fixes (``none``) memory is not bounded (that is what they fix):
    then only the byte-exact transfer is checked.
    """
    bounded = mode != "none"
    _need(shutil.which("ssh"), "OpenSSH ssh")
    target = str(workdir / "stall.sock")
    local = str(workdir / "stall-fwd.sock")
    port = chains.free_port()
    loop = asyncio.get_running_loop()
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(target)
    except OSError:
        listener.close()
        raise
    listener.listen(8)
    listener.setblocking(False)
    client = socket.socket(socket.AF_UNIX)
    client.setblocking(False)
    server = ssh = None
    peer: socket.socket | None = None
    try:
        async with asyncio.timeout(TIMEOUT):
            server = await chains.start_relay_server(keys, port, 100)
            ssh = await chains.start_ssh_forward(workdir, keys, port, local, target)
            base_rss = chains.rss_kb(server.pid)
            await loop.sock_connect(client, local)
            # The target reads nothing: push until the stall has propagated back to us.
            sent = await _send_until_stalled(client, 2.0, 1024 * 1024 * 1024)
            grown = chains.rss_kb(server.pid) - base_rss
            assert sent < 64 * 1024 * 1024, f"the chain absorbed {sent} bytes, reader stalled"
            assert grown < 48 * 1024 or not bounded, f"server RSS grew {grown} KiB, stalled"
            # Then a slow reader (rate-limited reads, many pause/resume cycles in the relay)
            # while the client pushes the rest: memory stays bounded, every byte arrives.
            sender = asyncio.create_task(_send_rest(client, sent, TOTAL_SLOW))
            got = 0
            peak = 0
            while not got:  # skip the empty connection of the ssh -L readiness probe
                if peer is not None:
                    peer.close()
                peer, _ = await loop.sock_accept(listener)
                peer.setblocking(False)
                digest = hashlib.sha256()
                while chunk := await loop.sock_recv(peer, 64 * 1024):
                    digest.update(chunk)
                    got += len(chunk)
                    if got % (1024 * 1024) < len(chunk):
                        peak = max(peak, chains.rss_kb(server.pid) - base_rss)
                    await asyncio.sleep(0.001)  # the slow reader's pace, not a wait for state
            await sender
            assert got == TOTAL_SLOW
            assert digest.hexdigest() == pattern_digest(TOTAL_SLOW)
            assert peak < 48 * 1024 or not bounded, f"server RSS grew {peak} KiB, slow reader"
    finally:
        client.close()
        listener.close()
        if peer is not None:
            peer.close()
        await chains.stop(ssh)
        await chains.stop(server)


@pytest.mark.parametrize("cipher", CIPHERS)
def test_patched_client_to_openssh_sshd(workdir: Path, ed_keys: dict[str, Path],
                                        cipher: str) -> None:
    """Patched asyncssh client -> sshd -> target: 64 MiB echoed both ways, rekeyed midway."""
    asyncio.run(_test_patched_client_to_openssh_sshd(workdir, ed_keys, cipher))


@pytest.mark.parametrize("cipher", CIPHERS)
def test_openssh_client_to_patched_server(workdir: Path, ed_keys: dict[str, Path],
                                          cipher: str) -> None:
    """ssh -L -> our server -> target: 64 MiB echoed both ways, ssh rekeying midway."""
    asyncio.run(_test_openssh_client_to_patched_server(workdir, ed_keys, cipher))


def test_backpressure_bounded_with_stalled_reader(workdir: Path, ed_keys: dict[str, Path],
                                                  asyncssh_patches: str) -> None:
    """A target that stops reading bounds what the chain accepts and the server's RSS."""
    for stale in ("stall.sock", "stall-fwd.sock"):  # left by another mode (module-wide dir)
        (workdir / stale).unlink(missing_ok=True)
    asyncio.run(_test_backpressure_bounded_with_stalled_reader(workdir, ed_keys,
                                                               asyncssh_patches))


def test_keepalive_with_patched_timer(workdir: Path, ed_keys: dict[str, Path]) -> None:
    """The self-re-arming keepalive timer keeps an idle link up and detects a frozen peer."""
    asyncio.run(_test_keepalive_with_patched_timer(workdir, ed_keys))


class _Collect(asyncssh.SSHUNIXSession[bytes]):
    """A channel session that keeps what it receives and notes the end of stream."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.ended = asyncio.get_running_loop().create_future()
        self.chan: asyncssh.SSHUNIXChannel[bytes] | None = None
        self.lost = False

    def connection_made(self, chan: asyncssh.SSHUNIXChannel[bytes]) -> None:  # type: ignore[override]
        self.chan = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.data += data

    def eof_received(self) -> bool:
        _set_once(self.ended)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


async def _open(conn: asyncssh.SSHClientConnection, path: str,
                session: _Collect) -> tuple[Any, BaseException | None]:
    """open_unix_channel, waiting for its callback; returns (channel, error)."""
    done: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
    chan = sshtune.open_unix_channel(conn, path, lambda: session, done.set_result)
    return chan, await done


async def _test_open_unix_channel_with_sshd(workdir: Path, keys: dict[str, Path]) -> None:
    """open_unix_channel against sshd: echo through it, and sshd's refusal reaches on_open."""
    async with asyncio.timeout(TIMEOUT), _target(workdir) as target, \
            _sshd(workdir, keys) as port, _connect(port, keys, compression_algs=["none"]) as conn:
        session = _Collect()
        _, error = await _open(conn, target, session)
        assert error is None
        payload = pattern()[:300_000]
        chan = session.chan
        assert chan is not None
        chan.write(b"ECHO\n" + payload)
        chan.write_eof()
        await session.ended
        assert bytes(session.data) == payload
        chan.close()

        _, error = await _open(conn, str(workdir / "missing.sock"), _Collect())
        assert isinstance(error, asyncssh.ChannelOpenError)
        assert error.code == asyncssh.OPEN_CONNECT_FAILED


def test_open_unix_channel_with_sshd(workdir: Path, ed_keys: dict[str, Path]) -> None:
    """The callback channel open works against real sshd, confirmed and refused (in mode
    ``all`` through the task-free path, otherwise through asyncssh's public coroutine)."""
    asyncio.run(_test_open_unix_channel_with_sshd(workdir, ed_keys))


async def _until(condition: Any) -> None:
    """Poll ``condition()`` until true (the caller's timeout bounds the wait)."""
    while not condition():  # noqa: ASYNC110 - polls arbitrary conditions
        await asyncio.sleep(0.005)


class _Failing(_Collect):
    """A session whose ``connection_made`` raises."""

    def connection_made(self, chan: asyncssh.SSHUNIXChannel[bytes]) -> None:  # type: ignore[override]
        raise RuntimeError("connection_made broke")


async def _test_open_callback_failure(workdir: Path, keys: dict[str, Path], where: str) -> None:
    """A failure in the owner's open callbacks closes that channel, reports once, and leaves
    the SSH connection and its other channels working."""
    calls: list[BaseException | None] = []
    async with asyncio.timeout(TIMEOUT), _target(workdir) as target, \
            _sshd(workdir, keys) as port, _connect(port, keys, compression_algs=["none"]) as conn:
        channels = conn._channels  # type: ignore[attr-defined]
        before = len(channels)

        made: list[_Collect] = []

        def factory() -> _Collect:
            if where == "factory":
                raise RuntimeError("factory broke")
            made.append(_Failing() if where == "connection_made" else _Collect())
            return made[-1]

        def on_open(error: BaseException | None) -> None:
            calls.append(error)
            if where == "on_open":
                raise RuntimeError("on_open broke")

        sshtune.open_unix_channel(conn, target, factory, on_open)
        await _until(lambda: calls and len(channels) == before)  # reported, channel gone
        if where == "on_open":
            assert calls == [None]
            assert made[0].lost  # the attached session heard of the close
        else:
            assert len(calls) == 1 and isinstance(calls[0], RuntimeError), calls
        # the connection survived: another channel on it echoes
        session = _Collect()
        _, error = await _open(conn, target, session)
        assert error is None and session.chan is not None
        session.chan.write(b"ECHO\nstill here")
        session.chan.write_eof()
        await session.ended
        assert bytes(session.data) == b"still here"
    assert len(calls) == 1, calls  # closing the connection did not report it again


@pytest.mark.parametrize("where", ["factory", "connection_made", "on_open"])
def test_open_callback_failure_fails_only_that_channel(workdir: Path, ed_keys: dict[str, Path],
                                                       where: str) -> None:
    """An exception in the session factory, connection_made or on_open: that channel only,
    reported once."""
    asyncio.run(_test_open_callback_failure(workdir, ed_keys, where))


RELAY_PAYLOAD = 16 * 1024 * 1024


async def _test_relay_chain_16mib(workdir: Path, keys: dict[str, Path]) -> None:
    expected = sshtune.report()["not_applied"]  # this process has the relays' asyncssh
    logs = [workdir / "relay-server.log", workdir / "relay-client.log"]
    for log in logs:
        log.unlink(missing_ok=True)
    async with asyncio.timeout(TIMEOUT), _target(workdir) as target, \
            chains.relay_chain(workdir, keys, target) as chain:
        digest = await _echo_socket(chain.path, RELAY_PAYLOAD)
    assert digest == pattern_digest(RELAY_PAYLOAD)
    for log in logs:
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        warned = [line for line in lines if line["event"] == "asyncssh_patches_not_applied"]
        assert len(warned) == (1 if expected else 0), (log.name, warned)
        if expected:
            assert warned[0]["level"] == "warn"
            assert warned[0]["asyncssh"] == asyncssh.__version__
            assert warned[0]["not_applied"] == expected


def test_relay_chain_16mib_and_one_warning(workdir: Path, ed_keys: dict[str, Path]) -> None:
    """client -> server relay: 16 MiB echoed byte-exact in every mode; each relay warns once,
    naming asyncssh and the patches not applied, or not at all when every patch applied."""
    asyncio.run(_test_relay_chain_16mib(workdir, ed_keys))
