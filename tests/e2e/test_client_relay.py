"""The client role against the relay's server role, as real processes: link, faults, endpoint."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from clienthelp import ClientProc, child_pids, owned, pid_alive
from helpers import (
    FACTOR,
    EchoTarget,
    Keys,
    PeakRss,
    Proc,
    RelayServer,
    exchange,
    fatal,
    free_port,
    make_ed25519,
    relay_cmd,
    relay_env,
    run_relay,
    sha,
    stopping,
    unix_connect,
    wait_for,
)
from obs_helpers import get_json

pytestmark = pytest.mark.e2e

MiB = 1 << 20


def _roundtrip(path: Path, data: bytes = b"ping") -> bytes:
    with unix_connect(path) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    return got


def test_forwards_over_one_ssh_connection(
    request: pytest.FixtureRequest,
    relay_server: RelayServer,
    keys: Keys,
    echo: EchoTarget,
    tmp: Path,
) -> None:
    """Ready file holds pid:tid, socket is 0600, many local connections share one SSH link."""
    client = owned(request, ClientProc(keys, tmp, relay_server.port, str(echo.path)))
    with stopping(client):
        text = client.tid.read_text()
        pid, tid = text.split(":")
        assert not text.endswith("\n") and int(pid) == client.proc.pid and int(tid) > 0
        assert stat.S_IMODE(client.socket.stat().st_mode) == 0o600
        payload = os.urandom(8 * MiB)
        assert exchange(client.socket, payload) == (len(payload), sha(payload))
        for i in range(20):
            assert _roundtrip(client.socket, b"n%d" % i) == b"n%d" % i
        assert relay_server.proc.log().count('"ssh_authenticated"') == 1
        assert client.known_hosts.read_text().startswith(f"[127.0.0.1]:{relay_server.port} ")
        assert client.stop() == 0
    assert not client.socket.exists() and not client.tid.exists()
    assert '"shutdown_complete"' in client.log() and "Traceback" not in client.log()


def test_server_sigkill_closes_local_connection_fast(
    request: pytest.FixtureRequest, keys: Keys, echo: EchoTarget, tmp: Path
) -> None:
    """SIGKILL of the server mid-transfer closes the local connection within 2 s."""
    server = owned(request, RelayServer(keys, tmp))
    client = owned(request, ClientProc(keys, tmp, server.port, str(echo.path)))
    with stopping(server, client):
        s = unix_connect(client.socket, 30)
        stop = threading.Event()

        def pump() -> None:
            chunk = b"x" * 65536
            try:
                while not stop.is_set():
                    s.sendall(chunk)
            except OSError:
                pass

        writer = threading.Thread(target=pump, daemon=True)
        writer.start()
        assert s.recv(65536)  # data is flowing through the whole chain
        server.proc.signal(signal.SIGKILL)
        killed = time.monotonic()
        try:
            while s.recv(1 << 20):
                pass
        except OSError:
            pass
        elapsed = time.monotonic() - killed
        stop.set()
        s.close()
        writer.join(10)
        assert elapsed < 2.0, f"local connection closed {elapsed:.2f}s after the kill"
        wait_for(lambda: '"ssh_link_down"' in client.log(), 5, "link-down log")


def test_server_restart_is_picked_up(
    request: pytest.FixtureRequest, keys: Keys, echo: EchoTarget, tmp: Path
) -> None:
    """After the server dies and comes back on the same port, new requests work again."""
    port = free_port()
    server = owned(request, RelayServer(keys, tmp, port=port))
    client = owned(request, ClientProc(keys, tmp, port, str(echo.path)))
    with stopping(client):
        assert _roundtrip(client.socket) == b"ping"
        server.proc.signal(signal.SIGKILL)
        server.stop()
        wait_for(lambda: '"ssh_link_down"' in client.log(), 5, "link-down log")
        restarted = owned(request, RelayServer(keys, tmp, port=port))
        with stopping(restarted):
            wait_for(lambda: client.log().count('"client_ready"') >= 2, 15, "reconnection")
            assert _roundtrip(client.socket, b"again") == b"again"
            assert client.proc.alive()


def test_connection_while_link_down_waits_then_closes(
    request: pytest.FixtureRequest, keys: Keys, echo: EchoTarget, tmp: Path
) -> None:
    """With the server gone, a new local connection is closed after --ssh-timeout, with a
    logged reason."""
    server = owned(request, RelayServer(keys, tmp))
    client = owned(
        request, ClientProc(keys, tmp, server.port, str(echo.path), "--ssh-timeout", "1s")
    )
    with stopping(client):
        server.proc.signal(signal.SIGKILL)
        server.stop()
        wait_for(lambda: '"ssh_link_down"' in client.log(), 5, "link-down log")
        s = unix_connect(client.socket)
        started = time.monotonic()
        assert s.recv(1) == b""
        waited = time.monotonic() - started
        s.close()
        assert 0.9 <= waited < 3 * FACTOR, waited
        wait_for(lambda: "not available within 1s" in client.log(), 5, "refusal reason")


def test_connection_waiting_for_link_is_served_when_it_returns(
    request: pytest.FixtureRequest, keys: Keys, echo: EchoTarget, tmp: Path
) -> None:
    """A local connection accepted while the link is down is served once the server is back."""
    port = free_port()
    server = owned(request, RelayServer(keys, tmp, port=port))
    client = owned(request, ClientProc(keys, tmp, port, str(echo.path), "--ssh-timeout", "30s"))
    with stopping(client):
        server.proc.signal(signal.SIGKILL)
        server.stop()
        wait_for(lambda: '"ssh_link_down"' in client.log(), 5, "link-down log")
        waiting = unix_connect(client.socket, 60)
        waiting.sendall(b"late")
        waiting.shutdown(socket.SHUT_WR)
        wait_for(lambda: '"connection_waiting_for_link"' in client.log(), 5, "waiting log")
        restarted = owned(request, RelayServer(keys, tmp, port=port))
        with stopping(restarted):
            got = b""
            while chunk := waiting.recv(100):
                got += chunk
            waiting.close()
            assert got == b"late"


def test_changed_host_key_is_refused(
    request: pytest.FixtureRequest, keys: Keys, echo: EchoTarget, tmp: Path
) -> None:
    """A host key that differs from known_hosts stops the client with file and line named."""
    server = owned(request, RelayServer(keys, tmp))
    with stopping(server):
        other = asyncssh.read_private_key(str(make_ed25519(tmp / "impostor")))
        known = tmp / "known_hosts"
        line = other.export_public_key("openssh").decode().split()[:2]
        known.write_text(f"# pinned earlier\n[127.0.0.1]:{server.port} {' '.join(line)}\n")
        before = known.read_bytes()
        result = run_relay(
            "client",
            "--listen",
            f"unix://{tmp}/c.sock",
            "--ssh-connection",
            f"ssh://tester@127.0.0.1:{server.port}/x",
            "--identity-path",
            str(keys.identity),
            "--known-hosts-path",
            str(known),
            "--log-level",
            "error",
        )
        assert result.returncode == 1
        assert f"{known} line 2" in result.stderr and "changed" in result.stderr
        assert "Traceback" not in result.stderr
        assert known.read_bytes() == before
        assert not (tmp / "c.sock").exists()
        assert '"ssh_authenticated"' not in server.proc.log()


def test_secure_host_key_refuses_unknown(
    request: pytest.FixtureRequest, keys: Keys, tmp: Path
) -> None:
    """--secure-host-key: a server not in known_hosts is refused and nothing is recorded."""
    server = owned(request, RelayServer(keys, tmp))
    with stopping(server):
        known = tmp / "known_hosts"
        result = run_relay(
            "client",
            "--listen",
            f"unix://{tmp}/c.sock",
            "--ssh-connection",
            f"ssh://tester@127.0.0.1:{server.port}/x",
            "--identity-path",
            str(keys.identity),
            "--secure-host-key",
            "--known-hosts-path",
            str(known),
            "--log-level",
            "error",
        )
        assert result.returncode == 1
        assert "is not in" in result.stderr and "--secure-host-key" in result.stderr
        assert not known.exists()


def test_start_gives_up_after_max_retries(keys: Keys, tmp: Path) -> None:
    """No server: the client tries --max-retries times with backoff, then exits 1."""
    port = free_port()
    started = time.monotonic()
    result = run_relay(
        "client",
        "--listen",
        f"unix://{tmp}/c.sock",
        "--ssh-connection",
        f"ssh://tester@127.0.0.1:{port}/x",
        "--identity-path",
        str(keys.identity),
        "--max-retries",
        "4",
        "--known-hosts-path",
        str(tmp / "kh"),
        "--log-level",
        "warn",
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert fatal(result.stderr, 1).endswith(
        "(gave up after 4 attempts): is the server running? start it on this machine first: "
        f"container-desktop-relay server --port {port}, or point --ssh-connection at the host "
        "and port it listens on")
    assert result.stderr.count('"ssh_connect_retry"') == 3
    assert elapsed >= (0.1 + 0.2 + 0.4) * 0.8  # three jittered backoff delays were waited
    assert not (tmp / "c.sock").exists()


def test_start_waits_for_a_late_server(
    request: pytest.FixtureRequest, keys: Keys, echo: EchoTarget, tmp: Path
) -> None:
    """A server that comes up during the start-up retries is connected to."""
    port = free_port()
    client = owned(
        request, ClientProc(keys, tmp, port, str(echo.path), "--max-retries", "40", wait=False)
    )
    with stopping(client):
        wait_for(lambda: '"ssh_connect_retry"' in client.log(), 10, "a failed first attempt")
        server = owned(request, RelayServer(keys, tmp, port=port))
        with stopping(server):
            client.wait_ready()
            assert _roundtrip(client.socket) == b"ping"


def test_live_socket_is_never_stolen(
    request: pytest.FixtureRequest,
    relay_server: RelayServer,
    keys: Keys,
    echo: EchoTarget,
    tmp: Path,
) -> None:
    """A second client on the same socket path refuses to start; the first keeps working."""
    first = owned(request, ClientProc(keys, tmp, relay_server.port, str(echo.path)))
    with stopping(first):
        result = run_relay(
            "client",
            "--listen",
            f"unix://{first.socket}",
            "--ssh-connection",
            f"ssh://t@127.0.0.1:{relay_server.port}/x",
            "--identity-path",
            str(keys.identity),
            "--known-hosts-path",
            str(first.known_hosts),
            "--log-level",
            "error",
        )
        assert result.returncode == 1
        assert "another process is already listening" in result.stderr
        assert _roundtrip(first.socket) == b"ping"


def test_stale_socket_is_replaced(
    request: pytest.FixtureRequest,
    relay_server: RelayServer,
    keys: Keys,
    echo: EchoTarget,
    tmp: Path,
) -> None:
    """A socket file left by a dead process is replaced; a regular file is not touched."""
    stale = tmp / "client.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # the file stays, nobody listens
    assert stale.exists()
    client = owned(request, ClientProc(keys, tmp, relay_server.port, str(echo.path)))
    with stopping(client):
        assert _roundtrip(client.socket) == b"ping"
        assert '"stale_socket_removed"' in client.log()
    assert not stale.exists()
    stale.write_text("precious")
    result = run_relay(
        "client",
        "--listen",
        f"unix://{stale}",
        "--ssh-connection",
        f"ssh://t@127.0.0.1:{relay_server.port}/x",
        "--identity-path",
        str(keys.identity),
        "--log-level",
        "error",
    )
    assert result.returncode == 1 and "not a socket" in result.stderr
    assert stale.read_text() == "precious"


def test_read_timeout_applies_to_client_connections(
    request: pytest.FixtureRequest,
    relay_server: RelayServer,
    keys: Keys,
    echo: EchoTarget,
    tmp: Path,
) -> None:
    """--read-timeout closes an idle forwarded connection on the client side too."""
    client = owned(
        request, ClientProc(keys, tmp, relay_server.port, str(echo.path), "--read-timeout", "500ms")
    )
    with stopping(client):
        with unix_connect(client.socket) as s:
            s.sendall(b"hi")
            assert s.recv(2) == b"hi"
            assert s.recv(1) == b""  # closed by the client role, not by us
        wait_for(lambda: "read_timeout" in client.log(), 5, "timeout log")


def test_frozen_server_detected_by_keepalive(
    request: pytest.FixtureRequest, keys: Keys, echo: EchoTarget, tmp: Path
) -> None:
    """A SIGSTOPped server is declared dead by keepalives; open connections are closed, and
    the client links up again once the server runs again."""
    server = owned(request, RelayServer(keys, tmp))
    client = owned(
        request,
        ClientProc(
            keys,
            tmp,
            server.port,
            str(echo.path),
            "--keepalive-interval",
            "300ms",
            "--keepalive-count-max",
            "2",
        ),
    )
    with stopping(server, client):
        s = unix_connect(client.socket, 30)
        s.sendall(b"hi")
        assert s.recv(2) == b"hi"
        server.proc.signal(signal.SIGSTOP)
        frozen = time.monotonic()
        assert s.recv(1) == b""  # (the helper's stop() sends SIGCONT before SIGTERM)
        detected = time.monotonic() - frozen
        s.close()
        assert detected < 4 * FACTOR, f"frozen server noticed after {detected:.2f}s"
        wait_for(lambda: '"ssh_link_down"' in client.log(), 5, "link-down log")
        server.proc.signal(signal.SIGCONT)
        wait_for(lambda: client.log().count('"client_ready"') >= 2, 20, "relink after SIGCONT")
        assert _roundtrip(client.socket, b"back") == b"back"


def test_client_exits_when_its_parent_dies(
    request: pytest.FixtureRequest,
    relay_server: RelayServer,
    keys: Keys,
    echo: EchoTarget,
    tmp: Path,
) -> None:
    """--watch-process-termination: when the process that started the client is gone, the
    client shuts down gracefully and removes its socket."""
    sock = tmp / "w.sock"
    argv = relay_cmd(
        "client",
        "--listen",
        f"unix://{sock}",
        "--identity-path",
        str(keys.identity),
        "--ssh-connection",
        f"ssh://t@127.0.0.1:{relay_server.port}{echo.path}",
        "--known-hosts-path",
        str(tmp / "kh"),
        "--tid-path",
        str(tmp / "w.tid"),
        "--watch-process-termination",
        "--poll-interval",
        "200ms",
        "--log-level",
        "info",
    )
    parent = owned(
        request, Proc(["sh", "-c", shlex.join(argv) + "; true"], tmp / "w.log", env=relay_env())
    )
    wait_for(lambda: (tmp / "w.tid").exists() or not parent.alive(), 30, "client ready")
    (client_pid,) = child_pids(parent.pid)
    request.addfinalizer(lambda: pid_alive(client_pid) and os.kill(client_pid, signal.SIGKILL))
    parent.signal(signal.SIGKILL)
    wait_for(lambda: not pid_alive(client_pid), 15, "the client to exit after its parent")
    log = parent.log()
    assert '"parent_gone"' in log and '"shutdown_complete"' in log
    assert not sock.exists() and not (tmp / "w.tid").exists()


def test_memory_bounded_while_server_is_frozen(
    request: pytest.FixtureRequest, keys: Keys, echo: EchoTarget, tmp: Path
) -> None:
    """With the server stalled, writers on open channels and on connections still waiting for
    their channel cannot grow the client's memory beyond its windows and buffers."""
    server = owned(request, RelayServer(keys, tmp))
    client = owned(
        request, ClientProc(keys, tmp, server.port, str(echo.path), "--keepalive-interval", "60s")
    )
    opened = []
    for _ in range(10):
        s = unix_connect(client.socket)
        s.sendall(b"x")
        assert s.recv(1) == b"x"
        opened.append(s)
    server.proc.signal(signal.SIGSTOP)
    request.addfinalizer(lambda: server.proc.signal(signal.SIGCONT))
    pending = [unix_connect(client.socket) for _ in range(20)]
    chunk = b"m" * (1 << 20)

    def flood(sock: socket.socket) -> None:
        sock.settimeout(3)
        try:
            for _ in range(16):  # 16 MiB each, 480 MiB in all if nothing pushed back
                sock.sendall(chunk)
        except OSError:
            pass

    threads = [threading.Thread(target=flood, args=(s,)) for s in opened + pending]
    with PeakRss(client.proc.pid) as rss:  # sampled during the push, not after it
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    for s in opened + pending:
        s.close()
    assert rss.samples > 10
    grown = rss.growth_mib()[0]
    assert grown < 100, f"client peaked {grown:.0f} MiB above its baseline"


def test_sigterm_during_start_up_exits_zero_promptly(
    request: pytest.FixtureRequest, keys: Keys, echo: EchoTarget, tmp: Path
) -> None:
    """A client whose server is frozen at start (TCP accepted, no SSH answer) is still in its
    first link attempts when SIGTERM comes: it exits 0 within --shutdown-timeout of the
    signal, not after giving up on its retries."""
    server = owned(request, RelayServer(keys, tmp))
    server.proc.signal(signal.SIGSTOP)
    client = owned(request, ClientProc(keys, tmp, server.port, str(echo.path),
                                       "--ssh-timeout", "5s", "--max-retries", "10",
                                       "--shutdown-timeout", "2s", wait=False))
    with stopping(server, client):
        wait_for(lambda: client.socket.exists() or not client.proc.alive(), 30,
                 "the client to listen (start-up under way)")
        assert client.proc.alive(), client.log()
        assert '"client_ready"' not in client.log()
        client.proc.signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = client.proc.wait(20)
        took = time.monotonic() - signalled
    assert code == 0, client.log()[-3000:]
    assert took < 2 + 1.5 * FACTOR, f"exited {took:.1f}s after SIGTERM"
    assert '"shutdown_complete"' in client.log()


def test_equal_limits_on_both_roles_refuse_nothing_admitted(
    request: pytest.FixtureRequest, keys: Keys, echo: EchoTarget, tmp: Path
) -> None:
    """--max-connections 8 on both roles, 16 clients hammering it: the client refuses what is
    over its limit, and the server refuses none of what the client admitted (closing
    connections and the readiness probe do not count against the server's limit)."""
    server = owned(request, RelayServer(keys, tmp, "--max-connections", "8"))
    client = owned(request, ClientProc(keys, tmp, server.port, str(echo.path),
                                       "--max-connections", "8"))
    served = [0]
    lock = threading.Lock()

    def hammer() -> None:
        for _ in range(40):
            try:
                got = _roundtrip(client.socket, b"x" * 3000)
            except OSError:
                continue
            if got == b"x" * 3000:
                with lock:
                    served[0] += 1

    with stopping(server, client):
        threads = [threading.Thread(target=hammer, daemon=True) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120 * FACTOR)
            assert not t.is_alive(), "a connection hung"
        server_log = server.proc.log()
    assert served[0] > 0
    assert "connection pool exhausted" not in server_log, [
        line for line in server_log.splitlines() if "pool exhausted" in line][:3]


def test_draining_server_turns_client_unready_and_connections_wait_for_the_next_link(
    request: pytest.FixtureRequest, keys: Keys, echo: EchoTarget, tmp: Path
) -> None:
    """While the server drains (SIGTERM, a stream still open), a new local connection is not
    refused: the client stops being ready, and the connection waits for the next link (a
    restarted server) and is served byte-exact there."""
    server = owned(request, RelayServer(keys, tmp, "--shutdown-timeout", "30s"))
    client = owned(request, ClientProc(keys, tmp, server.port, str(echo.path),
                                       "--ssh-timeout", "30s"))
    with stopping(server, client):
        held = unix_connect(client.socket, 30)
        held.sendall(b"hold")
        assert held.recv(4) == b"hold"
        server.proc.signal(signal.SIGTERM)
        wait_for(lambda: '"shutdown_requested"' in server.proc.log(), 10, "the drain")
        result: list[bytes] = []
        waiting = threading.Thread(
            target=lambda: result.append(_roundtrip(client.socket, b"late")), daemon=True)
        waiting.start()
        wait_for(lambda: '"server_draining"' in client.log(), 10, "the client to notice")
        assert '"connection_retried"' in client.log()
        held.shutdown(socket.SHUT_WR)  # let the drain finish
        assert held.recv(1) == b""
        held.close()
        assert server.proc.wait(20) == 0
        restarted = owned(request, RelayServer(keys, tmp, port=server.port))
        with stopping(restarted):
            waiting.join(40 * FACTOR)
            assert not waiting.is_alive()
    assert result == [b"late"]
    assert "connection_refused" not in client.log()


def _events(log: str, event: str) -> list[dict[str, Any]]:
    """The ``event`` log records of a relay's log, in order."""
    return [json.loads(line) for line in log.splitlines() if f'"{event}"' in line]


def test_missing_socket_is_logged_once_then_retried_quietly(
    request: pytest.FixtureRequest, keys: Keys, tmp: Path
) -> None:
    """A remote socket that does not exist: client and server each warn once, then retry it
    with backoff at debug only; /ready (both roles) and status name the path; once the socket
    appears the client turns ready."""
    missing = tmp / "later.sock"
    refusal = f"target socket {missing} does not exist"
    server_obs, client_obs = free_port(), free_port()
    server = owned(request, RelayServer(keys, tmp, "--health-check-enabled",
                                        "--health-check-port", str(server_obs),
                                        "--metrics-enabled=false"))
    client = owned(request, ClientProc(keys, tmp, server.port, str(missing),
                                       "--health-check-enabled", "--health-check-port",
                                       str(client_obs), wait=False))
    with stopping(server, client):
        def retried_quietly() -> bool:
            probes = _events(client.log(), "probe_failed")
            opens = _events(server.proc.log(), "channel_open_failed")
            return len(probes) >= 4 and len(opens) >= 4
        wait_for(retried_quietly, 30, "four probes of the missing socket")
        for log, event in ((client.log(), "probe_failed"),
                           (server.proc.log(), "channel_open_failed")):
            levels = [e["level"] for e in _events(log, event)]
            assert levels[0] == "warn" and set(levels[1:]) == {"debug"}, (event, levels)
        assert _events(client.log(), "probe_failed")[0]["socket_path"] == str(missing)
        client_ready = get_json(client_obs, "/ready")
        assert client_ready[0] == 503 and refusal in client_ready[1]["reason"]
        for port in (client_obs, server_obs):
            assert get_json(port, "/ready")[1]["unreachable_sockets"] == {
                str(missing): refusal}
        for role, port in (("client", client_obs), ("server", server_obs)):
            status = run_relay("status", "--role", role, "--health-check-port", str(port),
                               "--metrics-port", str(port))
            rows = [line.split(None, 1) for line in status.stdout.splitlines()]
            assert ["unreachable", refusal] in rows, status.stdout
        target = EchoTarget(missing)
        try:
            client.wait_ready()
            assert _roundtrip(client.socket, b"now") == b"now"
            assert get_json(client_obs, "/ready")[1]["unreachable_sockets"] == {}
            assert get_json(server_obs, "/ready")[1]["unreachable_sockets"] == {}
        finally:
            target.close()
