"""Observability of the real client role: exact counters, link loss and recovery, status."""

from __future__ import annotations

import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from clienthelp import ClientProc, owned
from helpers import (
    FACTOR,
    EchoTarget,
    Keys,
    RelayServer,
    exchange,
    run_relay,
    sha,
    stopping,
    wait_for,
)
from obs_helpers import bound_ports, get, get_json, ready_json

pytestmark = pytest.mark.e2e

OBSERVED = ("--health-check-enabled=true", "--metrics-enabled=true", "--health-check-port=0",
            "--metrics-port=0", "--keepalive-interval=0.5s")


def observed_client(request: pytest.FixtureRequest, keys: Keys, tmp: Path, server: RelayServer,
                    echo: EchoTarget) -> tuple[ClientProc, int]:
    """A ready client role with its endpoints on one free port (stopped after the test)."""
    client = owned(request, ClientProc(keys, tmp, server.port, str(echo.path), *OBSERVED))
    return client, int(bound_ports(client.proc)["health_port"])


def ready_body(port: int) -> dict[str, Any] | None:
    """The /ready body once it is 200, else None."""
    code, body = ready_json(port)
    return body if code == 200 else None


def test_client_counts_exact_and_reports_link(request: pytest.FixtureRequest, keys: Keys,
                                              echo: EchoTarget, tmp: Path) -> None:
    """Connections through the client role are counted to the byte; /ready names the link."""
    server = owned(request, RelayServer(keys, tmp))
    client, port = observed_client(request, keys, tmp, server, echo)
    assert wait_for(lambda: ready_body(port), 30, "client /ready 200") == {
        "status": "ready", "state": "ready", "reason": "linked", "role": "client",
        "link_up": True, "ssh_port": server.port, "unreachable_sockets": {}}
    code, health = get_json(port, "/health")
    assert (code, health["status"]) == (200, "healthy")

    sizes = [3 + 50_003 * i for i in range(12)]
    payloads = [os.urandom(n) for n in sizes]
    results: list[Any] = [None] * len(sizes)

    def run(i: int) -> None:
        try:
            results[i] = exchange(client.socket, payloads[i])
        except BaseException as exc:  # reported by the assertion below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(sizes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120 * FACTOR)
    assert results == [(len(p), sha(p)) for p in payloads]

    def settled() -> dict[str, Any] | None:
        body = get_json(port, "/metrics")[1]
        return body if body["active_connections"] == 0 else None

    metrics = wait_for(settled, 20, "client connections to be accounted")
    assert metrics["total_connections"] == len(sizes)
    assert metrics["total_bytes_read"] == metrics["total_bytes_written"] == sum(sizes)
    assert metrics["total_errors"] == 0
    text = get(port, "/metrics", accept="text/plain")[2]
    samples = {s.name: s.value for f in text_string_to_metric_families(text)
               for s in f.samples if s.labels.get("role") == "client"}
    assert samples["cdr_link_up"] == 1 and samples["cdr_ready"] == 1
    assert samples["cdr_connections_total"] == len(sizes)
    assert samples["cdr_bytes_read_total"] == sum(sizes)
    assert samples["cdr_channel_open_latency_seconds_count"] == len(sizes)


def test_client_link_loss_degrades_then_recovers(request: pytest.FixtureRequest, keys: Keys,
                                                 echo: EchoTarget, tmp: Path) -> None:
    """Server gone: /health 503 degraded, /ready 503 with the reason, status 1; back: 200."""
    server = owned(request, RelayServer(keys, tmp))
    client, port = observed_client(request, keys, tmp, server, echo)
    wait_for(lambda: ready_body(port), 30, "client /ready 200")
    args = ("status", f"--health-check-port={port}", f"--metrics-port={port}")
    result = run_relay(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "link          up" in result.stdout

    server.proc.signal(signal.SIGKILL)
    server.proc.wait(10)

    def degraded() -> dict[str, Any] | None:
        code, body = get_json(port, "/health")
        return body if code == 503 else None

    assert wait_for(degraded, 20, "client /health 503")["status"] == "degraded"
    code, ready = get_json(port, "/ready")
    assert code == 503 and ready["status"] == "not ready"
    assert ready["reason"].startswith("SSH link down") and ready["link_up"] is False
    assert 'cdr_link_up{role="client"} 0.0' in get(port, "/metrics?format=prometheus")[2]
    assert get_json(port, "/metrics")[1]["connection_errors"] >= 1
    result = run_relay(*args)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "degraded, not ready (SSH link down" in result.stdout
    assert "link          down" in result.stdout

    with stopping(RelayServer(keys, tmp, port=server.port)):
        body = wait_for(lambda: ready_body(port), 30, "client /ready 200 after reconnecting")
        assert body["link_up"] is True
        assert get_json(port, "/health")[0] == 200
        assert run_relay(*args).returncode == 0
    assert client.proc.alive()


def test_client_ready_turns_503_first_during_shutdown(request: pytest.FixtureRequest,
                                                      keys: Keys, echo: EchoTarget,
                                                      tmp: Path) -> None:
    """SIGTERM with a local connection open: the client's /ready is 503 until the drain ends."""
    server = owned(request, RelayServer(keys, tmp))
    client, port = observed_client(request, keys, tmp, server, echo)
    wait_for(lambda: ready_body(port), 30, "client /ready 200")
    with socket.socket(socket.AF_UNIX) as held:
        held.settimeout(30 * FACTOR)
        held.connect(str(client.socket))
        held.sendall(b"ping")
        assert held.recv(4) == b"ping"
        client.proc.signal(signal.SIGTERM)
        wait_for(lambda: get_json(port, "/ready")[0] == 503, 10, "client /ready 503")
        assert get_json(port, "/ready")[1]["reason"] == "shutting down"
        assert client.proc.alive()
        held.shutdown(socket.SHUT_WR)
        assert held.recv(16) == b""
    assert client.proc.wait(30) == 0
