"""The benchmark target: a Unix-socket server that sinks, sources or echoes, run as a process.

Each connection starts with one command line, then:

* ``SINK\\n``: read to EOF, reply ``<byte count> <sha256 hex>\\n``, close.
* ``SOURCE <n>\\n``: send ``n`` bytes of :func:`pattern` (repeated), then close.
* ``ECHO\\n``: send back everything read; close (after flushing) at the client's EOF.

Run it with ``python -m container_desktop_relay.commands.bench.targets PATH``; it prints
``ready`` on stdout once listening and exits on SIGTERM or when stdin closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import signal
import sys

__all__ = ["PATTERN_SIZE", "Target", "pattern", "pattern_digest", "serve"]

PATTERN_SIZE = 1024 * 1024
_MAX_COMMAND = 64
_pattern: bytes | None = None


def pattern() -> bytes:
    """The 1 MiB pseudo-random block that sources and drivers repeat (same on both ends)."""
    global _pattern
    if _pattern is None:
        _pattern = random.Random(0xCD2).randbytes(PATTERN_SIZE)
    return _pattern


def pattern_digest(n: int) -> str:
    """sha256 hex of the first ``n`` bytes of the repeated pattern."""
    block = pattern()
    digest = hashlib.sha256()
    full, rest = divmod(n, len(block))
    for _ in range(full):
        digest.update(block)
    digest.update(block[:rest])
    return digest.hexdigest()


class Target(asyncio.Protocol):
    """One target connection: parses the command line, then sinks, sources or echoes."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.mode = ""
        self.head = b""
        self.count = 0
        self.digest = hashlib.sha256()
        self.remaining = 0
        self.offset = 0
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.mode == "ECHO":
            assert self.transport is not None
            self.transport.write(data)
        elif self.mode == "SINK":
            self.count += len(data)
            self.digest.update(data)
        elif not self.mode:
            self._command(data)

    def _command(self, data: bytes) -> None:
        assert self.transport is not None
        self.head += data
        line, sep, rest = self.head.partition(b"\n")
        if not sep:
            if len(self.head) > _MAX_COMMAND:
                self.transport.abort()
            return
        words = line.decode("ascii", "replace").split()
        self.mode = words[0] if words else "?"
        self.head = b""
        if self.mode == "SOURCE" and len(words) == 2 and words[1].isdigit():
            self.remaining = int(words[1])
            self._source()
        elif self.mode in ("SINK", "ECHO"):
            if rest:
                self.data_received(rest)
        else:
            self.transport.abort()

    def _source(self) -> None:
        assert self.transport is not None
        block = pattern()
        while self.remaining and not self.paused:
            chunk = block[self.offset:self.offset + self.remaining]
            self.offset = (self.offset + len(chunk)) % len(block)
            self.remaining -= len(chunk)
            self.transport.write(chunk)
        if not self.remaining:
            self.transport.close()

    def eof_received(self) -> bool:
        assert self.transport is not None
        if self.mode == "SINK":
            self.transport.write(f"{self.count} {self.digest.hexdigest()}\n".encode())
            self.transport.close()
            return True
        if self.mode == "ECHO":
            # close() flushes the echo first. Not write_eof(): uvloop 0.23 can crash when a
            # transport with a pending shutdown request is freed (see docs/performance.md).
            self.transport.close()
            return True
        return False

    def pause_writing(self) -> None:
        self.paused = True
        if self.mode == "ECHO" and self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.mode == "ECHO" and self.transport is not None:
            self.transport.resume_reading()
        elif self.mode == "SOURCE" and self.remaining:
            self._source()


async def serve(path: str) -> None:
    """Serve targets on ``path`` until SIGTERM/SIGINT or stdin EOF."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = await loop.create_unix_server(Target, path, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not os.read(0, 4096) else None)
    print("ready", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def main() -> None:
    """Entry point of the target process."""
    pattern()
    from container_desktop_relay.runtime.app import run_loop

    async def run() -> int:
        await serve(sys.argv[1])
        return 0

    raise SystemExit(run_loop(run))


if __name__ == "__main__":
    main()
