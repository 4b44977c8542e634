"""Faults injected into the real chain: every stream completes byte-exact or fails visibly.

Chain: test socket -> relay client (process) -> SSH (optionally through a resettable TCP
proxy) -> relay server (process) -> Unix-socket target. "Fails visibly" means: the local
connection ends with fewer bytes than were due or with an error, within the keepalive bound,
and the relay logs the connection's close with a failure reason. No stream may hang, and none
may end with the full byte count but different bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
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
    exchange,
    record,
    sha,
    stopping,
    unix_connect,
    wait_for,
)

pytestmark = pytest.mark.e2e

MiB = 1 << 20
# keepalive 2 s x 3 probes (the defaults) plus scheduling slack
KEEPALIVE_BOUND = 12.0


class Outcome:
    """What a transfer through the chain ended as."""

    def __init__(self) -> None:
        self.received = 0
        self.digest = ""
        self.error: BaseException | None = None
        self.elapsed = 0.0


def transfer(path: Path, payload: bytes, started: threading.Event | None = None,
             timeout: float = 60) -> Outcome:
    """Echo ``payload`` through ``path``; never raises, records how it ended."""
    import hashlib

    out = Outcome()
    t0 = time.monotonic()
    try:
        s = unix_connect(path, timeout)
        digest = hashlib.sha256()

        def writer() -> None:
            with contextlib.suppress(OSError):
                view = memoryview(payload)
                for i in range(0, len(view), 256 * 1024):
                    s.sendall(view[i:i + 256 * 1024])
                s.shutdown(socket.SHUT_WR)

        w = threading.Thread(target=writer, daemon=True)
        w.start()
        with s:
            while data := s.recv(MiB):
                digest.update(data)
                out.received += len(data)
                if started is not None and out.received > 2 * MiB:
                    started.set()
        out.digest = digest.hexdigest()
    except OSError as exc:
        out.error = exc
    out.elapsed = time.monotonic() - t0
    return out


def assert_complete_or_visible(out: Outcome, payload: bytes, bound: float) -> None:
    """Byte-exact completion, or a visibly short/failed stream within ``bound`` seconds."""
    if out.error is None and out.received == len(payload):
        assert out.digest == sha(payload), "full length but corrupted bytes"
        return
    assert out.received < len(payload) or out.error is not None
    assert out.elapsed < bound * FACTOR, f"took {out.elapsed:.1f}s to fail"


def report(what: str, outcomes: list[Outcome], payload: bytes, recovered: str) -> None:
    """Summarize ``outcomes`` into the reliability report."""
    done = sum(1 for o in outcomes if o.error is None and o.received == len(payload))
    slowest = max(o.elapsed for o in outcomes)
    record("fault", what, len(outcomes),
           f"{done} byte-exact, {len(outcomes) - done} failed visibly (slowest {slowest:.1f}s), "
           f"0 hung, 0 corrupted; {recovered}")


class ResetProxy:
    """A TCP proxy that can reset (RST) every connection through it on demand."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:  # upstream down (e.g. during teardown): refuse this one
                down.close()
                continue
            with self.lock:
                self.pairs.append((down, up))
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(1 << 18):
                b.sendall(data)
            b.shutdown(socket.SHUT_WR)

    def reset_all(self) -> None:
        """Abort every proxied connection with a TCP reset in both directions."""
        import struct

        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for s in pair:
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    s.close()

    def close(self) -> None:
        self.listener.close()
        self.reset_all()


@pytest.fixture
def chain(relay_server: RelayServer, keys: Keys, echo: EchoTarget,
          tmp: Path) -> Iterator[tuple[RelayServer, ClientProc]]:
    client = ClientProc(keys, tmp, relay_server.port, str(echo.path))
    with stopping(client):
        yield relay_server, client


def run_during(path: Path, payload: bytes, n: int, fault: callable) -> list[Outcome]:  # type: ignore[valid-type]
    """Start ``n`` transfers, inject ``fault`` once data flows, collect every outcome."""
    started = threading.Event()
    outcomes: list[Outcome] = [Outcome() for _ in range(n)]

    def one(i: int) -> None:
        outcomes[i] = transfer(path, payload, started)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    assert started.wait(30 * FACTOR), "no data flowed before the fault"
    fault()
    for t in threads:
        t.join(90 * FACTOR)
        assert not t.is_alive(), "a stream hung after the fault"
    return outcomes


def test_server_sigkill_mid_stream_then_recovers(keys: Keys, echo: EchoTarget,
                                                 tmp: Path) -> None:
    """SIGKILL of the server: streams fail visibly and fast; a restarted server is used."""
    server = RelayServer(keys, tmp)
    client = ClientProc(keys, tmp, server.port, str(echo.path))
    payload = os.urandom(48 * MiB)
    with stopping(client, server):
        outcomes = run_during(client.socket, payload, 4,
                              lambda: server.proc.signal(signal.SIGKILL))
        for out in outcomes:
            assert_complete_or_visible(out, payload, KEEPALIVE_BOUND + 30)
        assert any(o.received < len(payload) or o.error for o in outcomes)
        wait_for(lambda: '"ssh_link_down"' in client.log(), 15, "client to notice")
        restarted = RelayServer(keys, tmp, port=server.port)
        with stopping(restarted):
            small = os.urandom(MiB)
            wait_for(lambda: exchange(client.socket, small) == (len(small), sha(small)), 30,
                     "a request through the restarted server", interval=0.2)
        report("server SIGKILLed mid-stream (4 x 48 MiB echo)", outcomes, payload,
               "restarted server used without restarting the client")


def test_server_frozen_fails_within_keepalive_bound(chain: tuple[RelayServer, ClientProc],
                                                    ) -> None:
    """SIGSTOP (TCP stays open): streams fail within the keepalive bound, recover on SIGCONT."""
    server, client = chain
    payload = os.urandom(64 * MiB)
    try:
        outcomes = run_during(client.socket, payload, 2,
                              lambda: server.proc.signal(signal.SIGSTOP))
        for out in outcomes:
            assert_complete_or_visible(out, payload, KEEPALIVE_BOUND + 20)
    finally:
        server.proc.signal(signal.SIGCONT)
    small = os.urandom(MiB)
    wait_for(lambda: exchange(client.socket, small) == (len(small), sha(small)), 40,
             "recovery after SIGCONT", interval=0.2)
    report("server SIGSTOPped, TCP open (2 x 64 MiB echo)", outcomes, payload,
           "re-linked after SIGCONT")


def test_ssh_connection_reset(keys: Keys, echo: EchoTarget, tmp: Path) -> None:
    """A TCP reset of the SSH connection: visible failures, then an automatic re-link."""
    server = RelayServer(keys, tmp)
    proxy = ResetProxy(server.port)
    client = ClientProc(keys, tmp, proxy.port, str(echo.path))
    payload = os.urandom(32 * MiB)
    with stopping(client, proxy, server):
        outcomes = run_during(client.socket, payload, 3, proxy.reset_all)
        for out in outcomes:
            assert_complete_or_visible(out, payload, KEEPALIVE_BOUND + 20)
        small = os.urandom(MiB)
        wait_for(lambda: exchange(client.socket, small) == (len(small), sha(small)), 30,
                 "a request after the reset", interval=0.2)
        assert '"ssh_link_down"' in client.log()
        report("SSH connection reset by TCP RST (3 x 32 MiB echo)", outcomes, payload,
               "re-linked on its own")


def test_target_removed_and_recreated(chain: tuple[RelayServer, ClientProc],
                                      echo: EchoTarget, tmp: Path) -> None:
    """Engine restart: in-flight streams fail visibly, requests while it is gone close at
    once, and the re-created socket is used without restarting anything."""
    server, client = chain
    payload = os.urandom(32 * MiB)

    outcomes = run_during(client.socket, payload, 2, echo.crash)
    for out in outcomes:
        assert_complete_or_visible(out, payload, 20)
    t0 = time.monotonic()
    try:
        received = exchange(client.socket, b"anyone?", strict=False)[0]
    except ConnectionResetError:
        # The relay closed before reading the request (the channel open failed first):
        # the kernel answers the unread bytes with a reset. Closed either way, nothing echoed.
        received = 0
    assert received == 0 and time.monotonic() - t0 < 5 * FACTOR  # closed promptly, not hung
    wait_for(lambda: "does not exist" in server.proc.log(), 10, "server to log the reason")
    again = EchoTarget(echo.path)
    try:
        small = os.urandom(MiB)
        assert exchange(client.socket, small) == (len(small), sha(small))
    finally:
        again.close()
    assert all(o.received < len(payload) or o.error for o in outcomes)
    report("engine crashed (socket removed, connections reset), then re-created "
           "(2 x 32 MiB echo)", outcomes, payload,
           "request while gone closed at once; re-created socket used")


def test_local_client_vanishes_mid_transfer(chain: tuple[RelayServer, ClientProc],
                                            tmp: Path) -> None:
    """A local client killed mid-upload: both relays close the connection, none leaks."""
    server, client = chain
    import subprocess
    import sys

    script = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
        "b=b'x'*65536\n"
        "while True: s.sendall(b)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", script, str(client.socket)])
    try:
        wait_for(lambda: server.proc.log().count('"connection_opened"') >= 2, 15,
                 "stream to start")
        writer.kill()
        writer.wait()
        # The server's first connection is the client's readiness probe; the stream is the
        # second. The client aborts its channel (CLOSE without EOF); the server passes that
        # on to the target as a failure instead of a clean end of the upload.
        wait_for(lambda: server.proc.log().count('"connection_closed"') >= 2
                 and client.log().count('"connection_closed"') >= 1, 30,
                 "both relays to close the connection")
    finally:
        writer.kill()
        writer.wait()
    closed = [json.loads(line) for line in server.proc.log().splitlines()
              if '"connection_closed"' in line]
    assert any(c["reason"] == "client closed without end of stream" for c in closed), closed
    small = os.urandom(MiB)
    assert exchange(client.socket, small) == (len(small), sha(small))
    record("fault", "local client killed mid-upload", 1,
           "both relays closed it at once, the target saw a reset (not a clean end of the "
           "upload); next request byte-exact")


def test_slow_reader_bounds_memory(keys: Keys, tmp: Path) -> None:
    """A target reading 1 KB/s while the writer pushes 200 MB: both relays stay small."""
    target_path = tmp / "slow.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(target_path))
    listener.listen(1)
    stop = threading.Event()

    def slow_reader() -> None:
        conn, _ = listener.accept()
        with conn:
            while not stop.is_set():
                if not conn.recv(1024):
                    return
                stop.wait(1.0)

    threading.Thread(target=slow_reader, daemon=True).start()
    server = RelayServer(keys, tmp)
    client = ClientProc(keys, tmp, server.port, str(target_path))
    sent = [0]
    with stopping(client, server, listener):
        procs = [psutil.Process(server.proc.pid), psutil.Process(client.proc.pid)]
        base = [p.memory_info().rss for p in procs]
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(client.socket))
        s.setblocking(False)
        chunk = b"p" * 65536
        deadline = time.monotonic() + 8 * FACTOR
        while time.monotonic() < deadline and sent[0] < 200 * MiB:
            try:
                sent[0] += s.send(chunk)
            except BlockingIOError:
                time.sleep(0.05)
        peak = [p.memory_info().rss for p in procs]
        stop.set()
        s.close()
    growth_mb = [(b - a) / MiB for a, b in zip(base, peak, strict=True)]
    # Everything in flight is bounded by the SSH window (a few MiB) and the socket buffers.
    assert sent[0] < 40 * MiB, f"writer pushed {sent[0] / MiB:.1f} MiB into a 1 KB/s reader"
    assert max(growth_mb) < 32, f"relay RSS grew {growth_mb} MiB"
    record("fault", "target reading 1 KB/s, writer pushing up to 200 MB", 1,
           f"writer held to {sent[0] / MiB:.1f} MiB; RSS growth server "
           f"{growth_mb[0]:.1f} MiB, client {growth_mb[1]:.1f} MiB")


def test_rekeying_keeps_a_first_use_link(keys: Keys, echo: EchoTarget, tmp: Path) -> None:
    """Key re-exchange every 1 MiB on a link whose host key was just recorded (TOFU): the
    re-validated key is the same, so streams stay byte-exact and the link stays up.

    Regression: the re-exchange re-checked the key against the entry the first handshake had
    just written and took it for a changed key, dropping the link every 1 GiB of traffic.
    """
    server = RelayServer(keys, tmp, "--rekey-limit", "1048576")
    client = ClientProc(keys, tmp, server.port, str(echo.path), "--rekey-limit", "1048576")
    with stopping(client, server):
        payload = os.urandom(24 * MiB)
        assert exchange(client.socket, payload) == (len(payload), sha(payload))
        assert '"ssh_link_down"' not in client.log()
        assert '"host_key_recorded"' in client.log()
    record("fault", "SSH key re-exchange every 1 MiB on a first-use link (24 MiB echo)", 1,
           "byte-exact, link stayed up")
