"""The measured traffic, run against a Unix-socket path; every byte is sha256- or equality-checked.

Nothing here sleeps: each step waits on the socket itself. A workload that receives wrong or
missing bytes raises :class:`VerificationError` (bulk, latency, connect) or counts an error
(concurrency); a benchmark figure is never reported for unverified traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field

from container_desktop_relay.commands.bench.targets import PATTERN_SIZE, pattern, pattern_digest

__all__ = [
    "Bulk",
    "Concurrency",
    "Latency",
    "VerificationError",
    "bulk_download",
    "bulk_upload",
    "connect_cost",
    "open_idle",
    "percentile",
    "ping_pong",
    "raise_nofile",
    "run_concurrent",
]

_RECV = 1024 * 1024


class VerificationError(Exception):
    """Bytes came back wrong, short or not at all."""


@dataclass(slots=True)
class Bulk:
    """One bulk transfer: bytes moved, seconds, verified digest."""

    nbytes: int
    seconds: float
    digest: str

    @property
    def mb_s(self) -> float:
        """Throughput in MB/s (10^6 bytes)."""
        return self.nbytes / self.seconds / 1e6


@dataclass(slots=True)
class Latency:
    """Round-trip samples in microseconds."""

    samples_us: list[float]

    @property
    def p50(self) -> float:
        """Median."""
        return percentile(self.samples_us, 50)

    @property
    def p99(self) -> float:
        """99th percentile."""
        return percentile(self.samples_us, 99)


@dataclass(slots=True)
class Concurrency:
    """Many connections echoing at once."""

    conns: int
    per_conn: int
    seconds: float
    errors: int
    error_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def mb_s(self) -> float:
        """Aggregate one-direction payload of the connections that succeeded, MB/s."""
        ok = self.conns - self.errors
        return ok * self.per_conn / self.seconds / 1e6 if self.seconds > 0 else 0.0


def percentile(samples: list[float], pct: float) -> float:
    """The ``pct`` percentile (nearest rank on sorted samples)."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    if pct == 50:
        return statistics.median(ordered)
    rank = max(0, min(len(ordered) - 1, math.ceil(pct / 100 * len(ordered)) - 1))
    return ordered[rank]


async def _connect(path: str) -> socket.socket:
    if sys.platform == "win32":
        raise NotImplementedError("bench runs on Linux")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, path)
    except BaseException:
        sock.close()
        raise
    return sock


async def _recv_exact(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = await loop.sock_recv_into(sock, view[got:])
        if not k:
            raise VerificationError(f"connection closed after {got} of {n} bytes")
        got += k
    return bytes(buf)


async def _recv_line(sock: socket.socket, limit: int = 256) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while not data.endswith(b"\n"):
        chunk = await loop.sock_recv(sock, limit)
        if not chunk:
            raise VerificationError(f"connection closed before a reply line (got {data!r})")
        data += chunk
        if len(data) > limit:
            raise VerificationError("reply line too long")
    return data


async def _send_pattern(sock: socket.socket, nbytes: int) -> None:
    loop = asyncio.get_running_loop()
    block = pattern()
    sent = 0
    while sent < nbytes:
        chunk = block[: min(len(block), nbytes - sent)]
        await loop.sock_sendall(sock, chunk)
        sent += len(chunk)


async def bulk_upload(path: str, nbytes: int) -> Bulk:
    """Push ``nbytes`` to a sink, half-close, and check its count and sha256."""
    expected = pattern_digest(nbytes)
    sock = await _connect(path)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(sock, b"SINK\n")
        start = time.perf_counter()
        await _send_pattern(sock, nbytes)
        sock.shutdown(socket.SHUT_WR)
        reply = await _recv_line(sock)
        seconds = time.perf_counter() - start
    finally:
        sock.close()
    count, _, digest = reply.decode().strip().partition(" ")
    if int(count) != nbytes or digest != expected:
        raise VerificationError(f"upload: sink got {count} bytes / {digest[:12]}, sent {nbytes}")
    return Bulk(nbytes, seconds, digest)


async def bulk_download(path: str, nbytes: int) -> Bulk:
    """Pull ``nbytes`` from a source to EOF and check count and sha256."""
    expected = pattern_digest(nbytes)
    sock = await _connect(path)
    loop = asyncio.get_running_loop()
    digest = hashlib.sha256()
    buf = bytearray(_RECV)
    view = memoryview(buf)
    got = 0
    try:
        await loop.sock_sendall(sock, f"SOURCE {nbytes}\n".encode())
        start = time.perf_counter()
        while True:
            k = await loop.sock_recv_into(sock, view)
            if not k:
                break
            digest.update(view[:k])
            got += k
        seconds = time.perf_counter() - start
    finally:
        sock.close()
    if got != nbytes or digest.hexdigest() != expected:
        raise VerificationError(f"download: got {got} bytes / {digest.hexdigest()[:12]}, "
                                f"expected {nbytes}")
    return Bulk(nbytes, seconds, expected)


async def ping_pong(path: str, rounds: int, size: int = 1024) -> Latency:
    """``rounds`` echoes of ``size`` bytes over one connection; every reply is compared."""
    sock = await _connect(path)
    loop = asyncio.get_running_loop()
    block = pattern()
    samples: list[float] = []
    try:
        await loop.sock_sendall(sock, b"ECHO\n")
        for i in range(rounds):
            off = (i * size) % (PATTERN_SIZE - size)
            msg = block[off:off + size]
            start = time.perf_counter_ns()
            await loop.sock_sendall(sock, msg)
            reply = await _recv_exact(sock, size)
            samples.append((time.perf_counter_ns() - start) / 1000)
            if reply != msg:
                raise VerificationError(f"ping-pong round {i}: echo differs")
    finally:
        sock.close()
    return Latency(samples)


async def connect_cost(path: str, rounds: int, size: int = 64) -> Latency:
    """``rounds`` times: connect, one ``size``-byte echo round trip, close."""
    loop = asyncio.get_running_loop()
    block = pattern()
    samples: list[float] = []
    for i in range(rounds):
        msg = block[i * size:(i + 1) * size]
        start = time.perf_counter_ns()
        sock = await _connect(path)
        try:
            await loop.sock_sendall(sock, b"ECHO\n" + msg)
            reply = await _recv_exact(sock, size)
        finally:
            sock.close()
        samples.append((time.perf_counter_ns() - start) / 1000)
        if reply != msg:
            raise VerificationError(f"connect round {i}: echo differs")
    return Latency(samples)


async def open_idle(path: str, conns: int, parallel: int = 64) -> list[socket.socket]:
    """Open ``conns`` echo connections, each proven end to end by a 1-byte round trip.

    At most ``parallel`` connects are in flight (listen backlogs are finite); all stay open.
    """
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(parallel)
    socks: list[socket.socket] = []

    async def one(i: int) -> None:
        async with gate:
            sock = await _connect(path)
            socks.append(sock)
            byte = bytes([i % 251])
            await loop.sock_sendall(sock, b"ECHO\n" + byte)
            if await _recv_exact(sock, 1) != byte:
                raise VerificationError("idle connection: echo differs")

    try:
        async with asyncio.TaskGroup() as group:
            for i in range(conns):
                group.create_task(one(i))
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


async def _echo_one(sock: socket.socket, nbytes: int) -> None:
    loop = asyncio.get_running_loop()
    expected = pattern_digest(nbytes)

    async def send() -> None:
        await _send_pattern(sock, nbytes)
        sock.shutdown(socket.SHUT_WR)

    sender = asyncio.create_task(send())
    digest = hashlib.sha256()
    buf = bytearray(256 * 1024)
    view = memoryview(buf)
    got = 0
    try:
        while True:
            k = await loop.sock_recv_into(sock, view)
            if not k:
                break
            digest.update(view[:k])
            got += k
        await sender
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await sender
    if got != nbytes or digest.hexdigest() != expected:
        raise VerificationError(f"echo: got {got} of {nbytes} bytes, digest "
                                f"{'ok' if digest.hexdigest() == expected else 'differs'}")


async def run_concurrent(socks: list[socket.socket], nbytes: int,
                         timeout: float) -> Concurrency:
    """Echo ``nbytes`` on every open connection at once; failures are counted, not raised."""
    kinds: dict[str, int] = {}

    async def guarded(sock: socket.socket) -> bool:
        try:
            await _echo_one(sock, nbytes)
            return True
        except (OSError, VerificationError) as exc:
            name = type(exc).__name__
            kinds[name] = kinds.get(name, 0) + 1
            return False
        finally:
            sock.close()

    start = time.perf_counter()
    tasks = [asyncio.ensure_future(guarded(s)) for s in socks]
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    seconds = time.perf_counter() - start
    for task in pending:
        task.cancel()
    if pending:
        kinds["Timeout"] = len(pending)
        await asyncio.gather(*pending, return_exceptions=True)
    errors = len(pending) + sum(1 for t in done if not t.result())
    return Concurrency(len(socks), nbytes, seconds, errors, kinds)


def raise_nofile() -> None:
    """Raise the soft open-file limit to the hard one (1000 connections need ~3000 fds)."""
    import resource

    if sys.platform == "win32":
        raise NotImplementedError("bench runs on Linux")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

