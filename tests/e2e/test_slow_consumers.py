"""Slow but steady peers receive everything; peers that stop are cut off, visibly.

Chain: paced test reader -> relay client (process) -> SSH -> relay server (process) -> Unix
target, and the docker CLI against Podman through the same chain. Answers are larger than what
a reader at its rate takes in the close linger (10 s), so a linger or timeout that measured
anything but progress would cut them short.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clienthelp import ClientProc
from helpers import (
    FACTOR,
    Keys,
    Podman,
    RelayServer,
    UnixTarget,
    closed_events,
    record,
    stopping,
    unix_connect,
    wait_for,
)

pytestmark = pytest.mark.e2e

KiB = 1024
MiB = 1 << 20


def answer_for(size: int) -> bytes:
    """The deterministic answer of ``size`` bytes (reader and target agree on it)."""
    return random.Random(size).randbytes(size)


class AnswerTarget(UnixTarget):
    """Unix-socket target: reads a request line ``<size> <wait-eof>``; when asked, also waits
    for the client's EOF (a half-closed request); then sends ``answer_for(size)`` and closes."""

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            line = b""
            while not line.endswith(b"\n"):
                data = conn.recv(1)
                if not data:
                    return  # the client's readiness probe
                line += data
            size, wait_eof = line.split()
            if wait_eof == b"1":
                while conn.recv(4096):
                    pass
            conn.sendall(answer_for(int(size)))
            conn.shutdown(socket.SHUT_WR)


class Paced:
    """Reads a socket or pipe at ``rate`` bytes per second to its end; records what came."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.received = 0
        self.digest = hashlib.sha256()
        self.error: BaseException | None = None

    def read(self, recv: object) -> None:
        read = recv  # a callable(n) -> bytes
        started = time.monotonic()
        try:
            while data := read(4096):  # type: ignore[operator]
                self.digest.update(data)
                self.received += len(data)
                # steady pace: never ahead of rate x elapsed (sleeping paces, it waits for nothing)
                ahead = started + self.received / self.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        except OSError as exc:
            self.error = exc


def ask(path: Path, size: int, rate: int, half_close: bool) -> Paced:
    """Request ``size`` bytes through ``path`` and read the answer at ``rate``."""
    reader = Paced(rate)
    s = unix_connect(path, 120)
    with s:
        s.sendall(f"{size} {int(half_close)}\n".encode())
        if half_close:
            s.shutdown(socket.SHUT_WR)
        reader.read(s.recv)
    return reader



@pytest.fixture
def answers(tmp: Path) -> Iterator[AnswerTarget]:
    target = AnswerTarget(tmp / "answers.sock")
    with stopping(target):
        yield target


# (rate in bytes/s, answer size, half-closed request): each takes 16-41 s to read, well past
# the 10 s close linger, and far more than the reader takes in 10 s is buffered in the relays.
# The last answer is just larger than the 4 MiB SSH window: the server reads its tail and the
# target's EOF while the window is exhausted, so the server's channel end, already closing,
# waits for window credit from the client relay, which a slow reader returns as it reads.
CASES = [
    (40 * KiB, 800_000, False),
    (64 * KiB, MiB, True),
    (64 * KiB, MiB, False),
    (160 * KiB, 3 * MiB, True),
    (100 * KiB, 4 * MiB + 30_000, True),
]


def test_slow_steady_readers_receive_everything(answers: AnswerTarget, relay_server: RelayServer,
                                                keys: Keys, tmp: Path) -> None:
    """Readers at 40-160 KiB/s, with and without a half-closed request, receive their whole
    answer (up to 4 MiB + 30 KB, past the SSH window) sha256-exact through both roles; both relays
    close them as ``done``, counting exactly the bytes delivered."""
    client = ClientProc(keys, tmp, relay_server.port, str(answers.path))
    results: list[Paced | None] = [None] * len(CASES)

    def run(i: int) -> None:
        rate, size, half = CASES[i]
        results[i] = ask(client.socket, size, rate, half)

    with stopping(client):
        threads = [threading.Thread(target=run, args=(i,), daemon=True)
                   for i in range(len(CASES))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120 * FACTOR)
            assert not t.is_alive(), "a slow reader hung"
        wait_for(lambda: len(closed_events(client.log())) >= len(CASES), 20,
                 "the client to log every close")
        wait_for(lambda: len(closed_events(relay_server.proc.log())) > len(CASES), 20,
                 "the server to log every close (and the readiness probe's)")
        client_log, server_log = client.log(), relay_server.proc.log()
    lost = sum(size - got.received for (_, size, _), got in zip(CASES, results, strict=True)
               if got is not None and got.error is None and got.received < size)
    record("slow", "steady readers at 40-160 KiB/s of 0.8-4 MiB answers, both roles "
           f"({len(CASES)} concurrent, half-closed and not)", len(CASES),
           ", ".join(f"{got.received if got else 0}/{size} B at {rate // KiB} KiB/s"
                     for (rate, size, _), got in zip(CASES, results, strict=True)),
           silently_lost=lost)
    for (rate, size, half), got in zip(CASES, results, strict=True):
        assert got is not None and got.error is None, (rate, half, got and got.error)
        assert got.received == size, f"{rate} B/s, half-close {half}: {got.received}/{size}"
        assert got.digest.hexdigest() == hashlib.sha256(answer_for(size)).hexdigest()
    for role, log in (("client", client_log), ("server", server_log)):
        streams = [c for c in closed_events(log) if c["bytes_up"]]  # not the probe
        assert len(streams) == len(CASES), (role, streams)
        assert all(c["reason"] == "done" and not c["failed"] for c in streams), (role, streams)
        assert sorted(c["bytes_down"] for c in streams) == sorted(s for _, s, _ in CASES), role


def test_docker_run_into_a_slow_consumer(podman: Podman, relay_server: RelayServer, keys: Keys,
                                         tmp: Path) -> None:
    """`docker run -i ... head -c 1500000 /dev/zero < /dev/null | (40 KB/s consumer)` through
    the relay delivers every byte and docker exits 0, as straight against Podman."""
    client = ClientProc(keys, tmp, relay_server.port, str(podman.socket))
    with stopping(client):
        env = {"DOCKER_HOST": f"unix://{client.socket}", "PATH": "/usr/bin:/bin:/usr/local/bin"}
        proc = subprocess.Popen(
            [podman.docker, "run", "--rm", "-i", "--network", "none", podman.IMAGE,
             "head", "-c", "1500000", "/dev/zero"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            consumer = Paced(40_000)
            consumer.read(proc.stdout.read1)  # type: ignore[union-attr]
            code = proc.wait(60 * FACTOR)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            stderr = proc.stderr.read() if proc.stderr else b""
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        client_log = client.log()
    clean = code == 0 and consumer.error is None
    record("slow", "docker run -i ... head -c 1500000 /dev/zero into a 40 KB/s consumer", 1,
           f"{consumer.received} of 1500000 bytes, docker exit {code}",
           silently_lost=1_500_000 - consumer.received if clean else 0)
    assert consumer.error is None
    assert (code, consumer.received) == (0, 1_500_000), stderr
    assert consumer.digest.hexdigest() == hashlib.sha256(bytes(1_500_000)).hexdigest()
    assert not [c for c in closed_events(client_log) if c["failed"]], closed_events(client_log)


class UploadTarget(UnixTarget):
    """Unix-socket target for uploads: reads a line ``steady`` or ``stop``; a steady reader
    takes the rest at ``rate`` to EOF and records it, a stopping one reads ``stop_after``
    bytes and then nothing (until the test ends), noting how its connection ended."""

    def __init__(self, path: Path, rate: int, stop_after: int) -> None:
        self.rate = rate
        self.stop_after = stop_after
        self.steady: list[Paced] = []
        self.stopped = threading.Event()
        self.release = threading.Event()
        super().__init__(path, backlog=16)

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KiB)
            line = b""
            while not line.endswith(b"\n"):
                data = conn.recv(1)
                if not data:
                    return  # the readiness probe
                line += data
            if line == b"steady\n":
                reader = Paced(self.rate)
                reader.read(conn.recv)
                self.steady.append(reader)
                return
            got = 0
            while got < self.stop_after and (data := conn.recv(4096)):
                got += len(data)
            self.stopped.set()
            self.release.wait(120)

    def close(self) -> None:
        self.release.set()
        super().close()


def upload(path: Path, kind: str, payload: bytes) -> BaseException | None:
    """Send ``kind`` and ``payload`` through ``path``, half-close, wait for EOF; the error."""
    try:
        with unix_connect(path, 120) as s:
            s.sendall(kind.encode() + b"\n")
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            s.recv(1)
    except OSError as exc:
        return exc
    return None


def test_write_timeout_spares_a_steady_reader_and_cuts_a_stopped_one(keys: Keys,
                                                                     tmp: Path) -> None:
    """--write-timeout 3s: a target reading 20 KiB/s receives a 400,000-byte upload whole;
    a target that stops reading is cut off with reason write_timeout, and its uploader sees
    an error (not a clean end)."""
    target = UploadTarget(tmp / "up.sock", 20 * KiB, 64 * KiB)
    server = RelayServer(keys, tmp, "--write-timeout", "3s")
    client = ClientProc(keys, tmp, server.port, str(target.path))
    payload = random.Random(7).randbytes(400_000)
    errors: dict[str, BaseException | None] = {}

    def run(kind: str, data: bytes) -> None:
        errors[kind] = upload(client.socket, kind, data)

    with stopping(client, server, target):
        threads = [threading.Thread(target=run, args=("steady", payload), daemon=True),
                   threading.Thread(target=run, args=("stop", bytes(16 * MiB)), daemon=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120 * FACTOR)
            assert not t.is_alive(), "an upload hung"
        wait_for(lambda: len(closed_events(server.proc.log())) >= 3, 20,
                 "the server to log both uploads' (and the probe's) close")
        server_log = server.proc.log()
    assert errors["steady"] is None, errors
    assert [(r.received, r.digest.hexdigest(), r.error) for r in target.steady] == [
        (len(payload), hashlib.sha256(payload).hexdigest(), None)]
    assert target.stopped.is_set()
    assert isinstance(errors["stop"], ConnectionResetError | BrokenPipeError), errors
    closed = closed_events(server_log)
    cut = [c for c in closed if "write_timeout" in str(c["reason"])]
    assert len(cut) == 1 and cut[0]["failed"], closed
    assert [c["bytes_up"] for c in closed if c["reason"] == "done"] == [len(payload) + 7]
    record("slow", "--write-timeout 3s: steady 20 KiB/s target reading a 400,000-byte upload, "
           "and one that stops reading", 2,
           "steady one byte-exact; stopped one cut with reason write_timeout, uploader saw "
           f"{type(errors['stop']).__name__}")
