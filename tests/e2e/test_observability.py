"""Observability of the real server process: exact counters via OpenSSH, shutdown, status."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import (
    FACTOR,
    EchoTarget,
    Keys,
    Proc,
    RelayServer,
    exchange,
    fatal,
    free_port,
    relay_cmd,
    relay_env,
    run_relay,
    sha,
    ssh_forward,
    stopping,
    tcp_open,
    unix_connect,
    wait_for,
)
from obs_helpers import bound_ports, get, get_json, ready_json

pytestmark = pytest.mark.e2e


def observed_server(keys: Keys, tmp: Path, *extra: str) -> RelayServer:
    """The server role with /health, /ready and /metrics on (port 0 unless ``extra`` says)."""
    return RelayServer(keys, tmp, "--health-check-enabled=true", "--metrics-enabled=true",
                       "--health-check-port=0", "--metrics-port=0", *extra)


def test_exact_counters_after_concurrent_connections(keys: Keys, echo: EchoTarget,
                                                     tmp: Path) -> None:
    """N concurrent connections through ssh -L: counts match to the byte, JSON and Prometheus."""
    server = observed_server(keys, tmp)
    fwd = ssh_forward(server.port, keys.identity, tmp / "l.sock", str(echo.path), tmp)
    with stopping(server, fwd):
        port = bound_ports(server.proc)["health_port"]
        sizes = [1 + 37_171 * i for i in range(24)]  # 1 byte .. ~0.85 MB, all different
        payloads = [os.urandom(n) for n in sizes]
        results: list[tuple[int, str] | BaseException] = [ValueError("not run")] * len(sizes)

        def run(i: int) -> None:
            try:
                results[i] = exchange(tmp / "l.sock", payloads[i])
            except BaseException as exc:  # reported by the assertion below
                results[i] = exc

        seen: list[tuple[int, int]] = []
        done = threading.Event()

        def scrape() -> None:  # scrapes while data flows: live bytes, never going down
            while not done.is_set():
                body = get_json(port, "/metrics")[1]
                seen.append((body["total_bytes_read"], body["total_bytes_written"]))
                get(port, "/metrics?format=prometheus")

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(sizes))]
        scraper = threading.Thread(target=scrape)
        scraper.start()
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(120 * FACTOR)
        finally:
            done.set()
            scraper.join(30 * FACTOR)
        assert results == [(len(p), sha(p)) for p in payloads]
        reads, writes = [r for r, _ in seen], [w for _, w in seen]
        assert len(seen) > 1 and reads == sorted(reads) and writes == sorted(writes)
        assert all(r <= sum(sizes) and w <= sum(sizes) for r, w in seen)

        def settled() -> dict[str, Any] | None:
            body = get_json(port, "/metrics")[1]
            return body if body["active_connections"] == 0 else None

        body = wait_for(settled, 20, "every connection to be accounted")
        total = sum(sizes)
        assert body["total_connections"] == len(sizes)
        assert body["total_bytes_read"] == total
        assert body["total_bytes_written"] == total
        assert (body["total_errors"], body["connection_errors"], body["socket_errors"]) == (0,) * 3
        code, health = get_json(port, "/health")
        assert code == 200 and health["status"] == "healthy"
        assert (health["total_connections"], health["active_connections"]) == (len(sizes), 0)

        code, content_type, text = get(port, "/metrics?format=prometheus")
        assert code == 200 and content_type.startswith("text/plain; version=0.0.4")
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in text_string_to_metric_families(text) for s in f.samples}
        role = (("role", "server"),)
        assert samples[("cdr_connections_total", role)] == len(sizes)
        assert samples[("cdr_bytes_read_total", role)] == total
        assert samples[("cdr_bytes_written_total", role)] == total
        assert samples[("cdr_active_connections", role)] == 0
        assert samples[("cdr_connection_duration_seconds_count", role)] == len(sizes)
        assert samples[("cdr_channel_open_latency_seconds_count", role)] == len(sizes)
        assert samples[("cdr_ready", role)] == 1


def test_separate_ports_and_404_405(keys: Keys, tmp: Path) -> None:
    """Distinct health and metrics ports split the paths; unknown paths 404, POST 405."""
    health_port, metrics_port = free_port(), free_port()
    server = observed_server(keys, tmp, f"--health-check-port={health_port}",
                             f"--metrics-port={metrics_port}")
    with stopping(server):
        ports = bound_ports(server.proc)
        assert (ports["health_port"], ports["metrics_port"]) == (health_port, metrics_port)
        assert get(health_port, "/ready")[0] == 200
        assert get(health_port, "/metrics")[0] == 404
        assert get(metrics_port, "/health")[0] == 404
        assert get(metrics_port, "/metrics")[0] == 200
        request = urllib.request.Request(f"http://127.0.0.1:{health_port}/health", data=b"x",
                                         method="POST")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=10 * FACTOR)
        with info.value:
            assert info.value.code == 405


def test_ready_turns_503_first_during_shutdown(keys: Keys, echo: EchoTarget, tmp: Path) -> None:
    """SIGTERM with a connection open: /ready 503 while draining, served until the drain ends."""
    server = observed_server(keys, tmp, "--shutdown-timeout=60s")
    fwd = ssh_forward(server.port, keys.identity, tmp / "l.sock", str(echo.path), tmp)
    with stopping(server, fwd):
        port = bound_ports(server.proc)["health_port"]
        assert ready_json(port) == (200, {"status": "ready", "state": "ready",
                                          "reason": "listening", "role": "server",
                                          "link_up": None, "ssh_port": server.port,
                                          "unreachable_sockets": {}})
        held = unix_connect(tmp / "l.sock", 30)
        with held:
            held.sendall(b"ping")
            assert held.recv(4) == b"ping"
            def one_active() -> dict[str, Any] | None:
                body = get_json(port, "/metrics")[1]
                return body if body["active_connections"] == 1 else None

            live = wait_for(one_active, 10, "the held connection to count")
            assert (live["total_bytes_read"], live["total_bytes_written"]) == (4, 4)
            server.proc.signal(signal.SIGTERM)
            wait_for(lambda: get_json(port, "/ready")[0] == 503, 10, "/ready to turn 503")
            assert ready_json(port)[1] == {"status": "not ready",
                                           "state": "draining",
                                                   "reason": "shutting down",
                                                   "role": "server", "link_up": None,
                                                   "ssh_port": server.port,
                                                   "unreachable_sockets": {}}
            assert get_json(port, "/health")[0] == 200  # still served while draining
            status = run_relay("status", f"--health-check-port={port}",
                               f"--metrics-port={port}")
            assert status.returncode == 1, status.stdout + status.stderr
            assert "not ready (shutting down)" in status.stdout
            assert server.proc.alive()
            held.shutdown(socket.SHUT_WR)
            assert held.recv(16) == b""
        assert server.proc.wait(30) == 0
        status = run_relay("status", f"--health-check-port={port}", f"--metrics-port={port}")
        assert status.returncode == 2


def test_status_exit_codes_healthy_then_degraded(keys: Keys, echo: EchoTarget,
                                                 tmp: Path) -> None:
    """status exits 0 when healthy and ready, 1 once active connections pass the threshold."""
    server = observed_server(keys, tmp, "--degraded-threshold=1")
    fwd = ssh_forward(server.port, keys.identity, tmp / "l.sock", str(echo.path), tmp)
    with stopping(server, fwd):
        port = bound_ports(server.proc)["health_port"]
        args = ("status", f"--health-check-port={port}", f"--metrics-port={port}")
        result = run_relay(*args)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.startswith("state         healthy, ready\n")
        socks = [socket.socket(socket.AF_UNIX) for _ in range(2)]
        with stopping(*socks):
            for s in socks:
                s.settimeout(30 * FACTOR)
                s.connect(str(tmp / "l.sock"))
                s.sendall(b"hi")
                assert s.recv(2) == b"hi"
            wait_for(lambda: get(port, "/health")[0] == 503, 10, "/health to turn 503")
            result = run_relay(*args, "--json")
            assert result.returncode == 1
            data = json.loads(result.stdout)
            assert data["health"]["body"]["status"] == "degraded"
            assert data["health"]["body"]["active_connections"] == 2
            assert data["ready"] is True
        wait_for(lambda: get(port, "/health")[0] == 200, 10, "/health to recover")
        assert run_relay(*args).returncode == 0


def test_busy_health_port_is_a_clear_error(keys: Keys, tmp: Path) -> None:
    """A busy --health-check-port stops the server within 10 s: exit 2, one line naming the
    port and the flag, no traceback."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        server = RelayServer(keys, tmp, "--health-check-enabled=true",
                             f"--health-check-port={port}", "--metrics-enabled=false",
                             wait=False)
        with stopping(server):
            assert server.proc.wait(10) == 2
            held = f"(held by pid {os.getpid()} ("  # this test process holds the port
            message = fatal(server.proc.log(), 2)
            assert message.startswith(
                f"cannot listen for /health, /ready on 127.0.0.1:{port}: address already in use "
                + held), message
            assert message.endswith(
                f" (health_check_port={port} from --health-check-port: choose a free port, 0 "
                "for any, or leave it unset)"), message
            assert "Traceback" not in server.proc.log()


def _port_with_free_defaults(avoid: set[int]) -> int:
    """A free SSH port whose derived /health (+58) and /metrics (+68) ports are free too."""
    def candidate() -> int | None:
        port = free_port()
        wanted = {port, port + 58, port + 68}
        if port + 68 > 65535 or wanted & avoid:
            return None
        return port if all(not tcp_open("127.0.0.1", p) for p in wanted) else None

    return wait_for(candidate, 10, "a port with free derived ports")  # type: ignore[no-any-return]


def test_two_default_servers_run_side_by_side(keys: Keys, tmp: Path) -> None:
    """Two servers with default observability on two SSH ports: both relay 8 MiB byte-exact
    through ssh -N -L, each serves its endpoints on ports derived from its SSH port, and
    status --port finds each one."""
    first = _port_with_free_defaults(set())
    second = _port_with_free_defaults({first, first + 58, first + 68})
    servers: list[RelayServer] = []
    forwards = []
    echoes = []
    try:
        for n, port in enumerate((first, second)):
            echoes.append(EchoTarget(tmp / f"e{n}.sock"))
            servers.append(RelayServer(keys, tmp, port=port, observability=True))
        for n, server in enumerate(servers):
            forwards.append(ssh_forward(server.port, keys.identity, tmp / f"l{n}.sock",
                                        str(echoes[n].path), tmp))
        payload = os.urandom(8 << 20)
        for n, server in enumerate(servers):
            assert exchange(tmp / f"l{n}.sock", payload) == (len(payload), sha(payload))
            listening = bound_ports(server.proc)
            assert (listening["health_port"], listening["metrics_port"]) == (
                server.port + 58, server.port + 68)
            assert '"observability_port_in_use"' not in server.proc.log()
            result = run_relay("status", "--role", "server", "--port", str(server.port),
                               "--json")
            assert result.returncode == 0, result.stdout + result.stderr
            assert json.loads(result.stdout)["readiness"]["body"]["ssh_port"] == server.port
    finally:
        for thing in [*forwards, *servers, *echoes]:
            with contextlib.suppress(Exception):
                thing.stop() if hasattr(thing, "stop") else thing.close()


def test_taken_default_port_is_logged_and_relaying_goes_on(keys: Keys, echo: EchoTarget,
                                                           tmp: Path) -> None:
    """A default health port held by someone else: one observability_port_in_use warning
    naming it, the server relays 8 MiB byte-exact, and status finds /health unanswered."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = busy.getsockname()[1]
        ssh_port = taken - 58
        assert not tcp_open("127.0.0.1", ssh_port), "the derived SSH port is in use; rerun"
        server = RelayServer(keys, tmp, port=ssh_port, observability=True)
        fwd = ssh_forward(server.port, keys.identity, tmp / "l.sock", str(echo.path), tmp)
        with stopping(server, fwd):
            payload = os.urandom(8 << 20)
            assert exchange(tmp / "l.sock", payload) == (len(payload), sha(payload))
            warnings = [json.loads(ln) for ln in server.proc.log().splitlines()
                        if '"observability_port_in_use"' in ln]
            assert len(warnings) == 1
            assert warnings[0]["port"] == taken and warnings[0]["level"] == "warn"
            assert server.proc.alive()
            result = run_relay("status", "--role", "server", "--port", str(ssh_port),
                               "--json", "--timeout", "2s")
            data = json.loads(result.stdout)
            # /health and /ready are not served; /metrics (its own default port) is
            assert result.returncode == 1 and data["health"]["body"] is None
            assert data["health"]["error"] == "timed out" and data["metrics"]["code"] == 200


def test_every_listener_binds_loopback_by_default(keys: Keys, tmp: Path) -> None:
    """With neither --host nor --health-check-host, the SSH port, /health and /metrics all
    listen on 127.0.0.1 and nothing else (docs/security.md: nothing on the network)."""
    import psutil

    port, health_port, metrics_port = free_port(), free_port(), free_port()
    proc = Proc(relay_cmd("server", "--port", str(port), "--identity-path", str(keys.identity),
                          "--authorized-keys-path", str(keys.authorized_keys),
                          f"--health-check-port={health_port}",
                          f"--metrics-port={metrics_port}", "--log-level", "debug"),
                tmp / "default-host.log", env=relay_env())
    with stopping(proc):
        wait_for(lambda: '"server_listening"' in proc.log() or not proc.alive(), 20,
                 "the server to listen")
        bound_ports(proc)
        listening = {(c.laddr.ip, c.laddr.port)
                     for c in psutil.Process(proc.pid).net_connections("inet")
                     if c.status == psutil.CONN_LISTEN}
        assert listening == {("127.0.0.1", port), ("127.0.0.1", health_port),
                             ("127.0.0.1", metrics_port)}, proc.log()
