"""Load through the full chain (client -> server -> target), sha256-verified, then leak checks.

`make test` runs bounded counts; `make soak` (CDR_SOAK=1) runs the issue's full counts:
10,000 sequential and 1,000 concurrent connections of 1 MiB each.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from clienthelp import ClientProc
from helpers import (
    FACTOR,
    EchoTarget,
    Keys,
    RelayServer,
    free_port,
    record,
    stopping,
    wait_for,
)

pytestmark = pytest.mark.e2e

SOAK = os.environ.get("CDR_SOAK", "") not in ("", "0")
SEQUENTIAL = 10_000 if SOAK else 1_000
CONCURRENT = 1_000 if SOAK else 300
CONCURRENT_BYTES = (1 << 20) if SOAK else 64 * 1024


class Chain:
    """Server + client processes with metrics on free ports, and their resource readings."""

    def __init__(self, keys: Keys, tmp: Path, target: Path, *server_extra: str) -> None:
        self.metrics_port = free_port()
        self.server = RelayServer(keys, tmp, "--max-connections", "5000",
                                  "--metrics-enabled=true", "--metrics-port",
                                  str(self.metrics_port), "--log-level", "info", *server_extra)
        self.client = ClientProc(keys, tmp, self.server.port, str(target),
                                 "--max-connections", "5000", "--log-level", "info")
        self.procs = [psutil.Process(self.server.proc.pid), psutil.Process(self.client.proc.pid)]

    def metrics(self) -> dict[str, object]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    def tasks(self) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics?format=prometheus"
        with urllib.request.urlopen(url, timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith("cdr_asyncio_tasks"):
                    return float(line.rsplit(" ", 1)[1])
        raise AssertionError("cdr_asyncio_tasks missing")

    def reading(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, p in zip(("server", "client"), self.procs, strict=True):
            out[f"{name}_fds"] = p.num_fds()
            out[f"{name}_threads"] = p.num_threads()
            out[f"{name}_rss_mb"] = p.memory_info().rss / (1 << 20)
        out["server_tasks"] = self.tasks()
        return out

    def wait_settled(self, base: dict[str, float] | None = None,
                     slack_mb: float = 16) -> dict[str, float]:
        """A reading once connections ended and both RSS are within ``slack_mb`` of ``base``
        (freed memory is handed back when a relay goes idle); without ``base``, once both
        relays have trimmed after going idle."""
        self.settle()
        if base is None:
            wait_for(lambda: all(log().count('"memory_trimmed"')
                                 for log in (self.server.proc.log, self.client.proc.log)),
                     20, "both relays to trim memory after going idle", interval=0.2)
            return self.reading()
        last: dict[str, float] = {}

        def within() -> bool:
            # The server's count reaching 0 does not mean the client has released every
            # local socket yet (it may still be flushing the last echo to a slow reader).
            last.update(self.reading())
            return (all(last[k] <= base[k] + slack_mb for k in ("server_rss_mb", "client_rss_mb"))
                    and all(last[k] <= base[k] + 2 for k in ("server_fds", "client_fds")))

        with contextlib.suppress(AssertionError):
            wait_for(within, 30, "RSS and descriptors back near the baseline", interval=0.5)
        return last

    def settle(self) -> None:
        wait_for(lambda: self.metrics()["active_connections"] == 0, 60, "connections to end",
                 interval=0.1)

    def stop(self) -> None:
        self.client.stop()
        self.server.stop()


@pytest.fixture
def chain(keys: Keys, echo: EchoTarget, tmp: Path) -> Iterator[Chain]:
    c = Chain(keys, tmp, echo.path)
    with stopping(c):
        yield c


async def one(path: Path, payload: bytes) -> bool:
    """One connection: send, half-close, read back, verify."""
    reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 20)
    try:
        async def send() -> None:
            writer.write(payload)
            await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        got = hashlib.sha256()
        n = 0
        while data := await reader.read(1 << 20):
            got.update(data)
            n += len(data)
        await sender
        return n == len(payload) and got.hexdigest() == hashlib.sha256(payload).hexdigest()
    finally:
        writer.close()


def test_sequential_then_concurrent_without_leaks(chain: Chain) -> None:
    """N sequential and M concurrent verified round trips; then fds, threads, tasks and RSS
    are back at their baseline."""
    payload = os.urandom(1024)
    big = os.urandom(CONCURRENT_BYTES)
    # Warm-up at full size: the first burst sizes the allocator's pools; a leak shows as
    # growth on top of that, round after round.
    asyncio.run(_run_sequential(chain.client.socket, payload, 50))
    assert all(r is True for r in asyncio.run(
        _run_concurrent(chain.client.socket, big, CONCURRENT)))
    base = chain.wait_settled()

    ok = asyncio.run(_run_sequential(chain.client.socket, payload, SEQUENTIAL))
    assert ok == SEQUENTIAL
    record("load", f"{SEQUENTIAL} sequential connections, 1 KiB echo each", SEQUENTIAL,
           f"{ok} byte-exact")

    results = asyncio.run(_run_concurrent(chain.client.socket, big, CONCURRENT))
    good = sum(1 for r in results if r is True)
    assert good == CONCURRENT, [r for r in results if r is not True][:5]
    record("load", f"{CONCURRENT} concurrent connections, {CONCURRENT_BYTES} B echo each",
           CONCURRENT, f"{good} byte-exact, 0 errors")

    after = chain.wait_settled(base)
    snapshot = chain.metrics()
    assert snapshot["total_connections"] >= SEQUENTIAL + CONCURRENT
    for key in ("server_fds", "client_fds"):
        assert after[key] <= base[key] + 2, (key, base, after)
    for key in ("server_threads", "client_threads"):
        assert after[key] <= base[key] + 2, (key, base, after)
    assert after["server_tasks"] <= base["server_tasks"] + 1, (base, after)
    for key in ("server_rss_mb", "client_rss_mb"):
        assert after[key] <= base[key] + 16, (key, base, after)
    record("leaks", "fds/threads/tasks/RSS after the load", 1,
           "growth " + json.dumps({k: round(after[k] - base[k], 1) for k in base}))


async def _run_sequential(path: Path, payload: bytes, count: int) -> int:
    ok = 0
    for _ in range(count):
        ok += await one(path, payload)
    return ok


async def _run_concurrent(path: Path, payload: bytes, count: int) -> list[object]:
    async def guarded() -> object:
        try:
            async with asyncio.timeout(300 * FACTOR):
                return await one(path, payload)
        except Exception as exc:
            return exc

    return await asyncio.gather(*(guarded() for _ in range(count)))


def test_max_connections_refuses_extra_while_others_continue(keys: Keys, echo: EchoTarget,
                                                             tmp: Path) -> None:
    """With max_connections=20 on the server, 30 simultaneous connections: 20 work byte-exact,
    10 are closed at once with the documented reason, and the 20 keep working afterwards."""
    server = RelayServer(keys, tmp, "--max-connections", "20", "--log-level", "info")
    client = ClientProc(keys, tmp, server.port, str(echo.path), "--log-level", "info")
    with stopping(client, server):
        async def scenario() -> tuple[int, int]:
            held = []
            for _ in range(30):
                held.append(await asyncio.open_unix_connection(str(client.socket)))
            alive = refused = 0
            for reader, writer in held:
                writer.write(b"hello")
                try:
                    async with asyncio.timeout(20 * FACTOR):
                        data = await reader.readexactly(5)
                    alive += data == b"hello"
                except (asyncio.IncompleteReadError, ConnectionError):
                    refused += 1
            for reader, writer in held:  # the survivors keep streaming
                if not writer.is_closing() and not reader.at_eof():
                    writer.write(b"again")
                    async with asyncio.timeout(20 * FACTOR):
                        assert await reader.readexactly(5) == b"again"
                writer.close()
            return alive, refused

        alive, refused = asyncio.run(scenario())
        assert (alive, refused) == (20, 10)
        wait_for(lambda: server.proc.log().count("connection pool exhausted (max: 20)") >= 10,
                 10, "refusals logged")
    record("load", "max_connections=20 with 30 simultaneous connections", 1,
           "20 byte-exact, 10 refused 'connection pool exhausted (max: 20)'")
