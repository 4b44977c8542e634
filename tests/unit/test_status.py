"""`status`: verdicts and exit codes, the table, and queries against live endpoints on port 0."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from container_desktop_relay.commands.status import Answer, Report, query, render_table
from container_desktop_relay.config import Config
from container_desktop_relay.observability.metrics import Metrics
from container_desktop_relay.observability.observe import Observability
from container_desktop_relay.runtime.state import RoleState
from container_desktop_relay.ssh import patches as sshfix
from helpers import FACTOR, fatal, relay_cmd, relay_env, run_relay
from obs_helpers import finish, open_connection


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answer(code: int | None, body: dict[str, object] | None, error: str | None = None) -> Answer:
    return Answer("http://x", code, body, error)


HEALTHY = answer(200, {"status": "healthy", "uptime": "5s", "active_connections": 1,
                       "total_connections": 4, "error_count": 0, "last_error": ""})
READY = answer(200, {"status": "ready", "reason": "listening", "role": "server",
                     "link_up": None,
                     "asyncssh_patches": {"asyncssh": "2.24.1", "mode": "none", "active": [],
                                          "not_applied": {"window-credit": "not selected"}}})
METRICS = answer(200, {"total_connections": 4, "active_connections": 1, "total_bytes_read": 10,
                       "total_bytes_written": 20, "total_errors": 0, "connection_errors": 0,
                       "socket_errors": 0, "average_connection_duration": "1s",
                       "uptime": "5s"})
DOWN = answer(None, None, "connection refused")


@pytest.mark.parametrize(("health", "ready", "metrics", "code"), [
    (HEALTHY, READY, METRICS, 0),
    (HEALTHY, READY, DOWN, 0),
    (HEALTHY, READY, None, 0),
    (answer(503, {"status": "degraded"}), READY, METRICS, 1),
    (HEALTHY, answer(503, {"status": "not ready", "reason": "shutting down"}), METRICS, 1),
    (DOWN, DOWN, METRICS, 1),
    (answer(200, {"status": "degraded"}), READY, METRICS, 1),
    (answer(404, None, "HTTP 404 without a relay JSON body"), DOWN, DOWN, 2),
    (DOWN, DOWN, DOWN, 2),
    (DOWN, DOWN, None, 2),
])
def test_exit_codes(health: Answer, ready: Answer, metrics: Answer | None, code: int) -> None:
    """0 only when healthy and ready, 2 when no endpoint answered, 1 otherwise."""
    assert Report(health, ready, metrics).exit_code == code


def test_table_rows() -> None:
    """The table names state, role, uptime, link, connections, bytes, errors and last error."""
    table = render_table(Report(HEALTHY, READY, METRICS))
    assert table.splitlines() == [
        "state         healthy, ready",
        "role          server",
        "asyncssh      2.24.1, patches none: 0 active, 1 not applied",
        "uptime        5s",
        "link          n/a (server role)",
        "connections   1 active, 4 total",
        "bytes         10 read, 20 written",
        "errors        0 (0 connection, 0 socket)",
        "avg duration  1s",
        "last error    none",
    ]


def test_table_names_unreachable_sockets() -> None:
    """Each socket /ready lists as unreachable gets a row naming it (the path once)."""
    body = {**(READY.body or {}), "status": "not ready",
            "reason": "remote socket unreachable: target socket /run/x.sock does not exist",
            "unreachable_sockets": {"/run/x.sock": "target socket /run/x.sock does not exist",
                                    "/run/y.sock": "timed out"}}
    lines = render_table(Report(HEALTHY, answer(503, body), METRICS)).splitlines()
    assert lines[0] == ("state         healthy, not ready (remote socket unreachable: target "
                        "socket /run/x.sock does not exist)")
    assert [ln for ln in lines if ln.startswith("unreachable")] == [
        "unreachable   target socket /run/x.sock does not exist",
        "unreachable   /run/y.sock: timed out",
    ]


def test_table_when_parts_are_missing() -> None:
    """A not-ready client with its link down and /metrics unreachable says so row by row."""
    ready = answer(503, {"status": "not ready", "reason": "ssh link down", "role": "client",
                         "link_up": False})
    health = answer(503, {"status": "degraded", "uptime": "1m0s", "active_connections": 0,
                          "total_connections": 0, "error_count": 3,
                          "last_error": "connection refused"})
    table = render_table(Report(health, ready, DOWN))
    assert "state        degraded, not ready (ssh link down)" in table
    assert "link         down" in table
    assert "bytes        unknown (/metrics: connection refused)" in table
    assert "errors       3" in table
    assert "last error   connection refused" in table


@pytest_asyncio.fixture
async def live() -> AsyncIterator[tuple[Observability, int]]:
    """Live endpoints of a server role on one free port."""
    obs = Observability(Config(health_check_port=0, metrics_port=0), Metrics("server"),
                        RoleState("server"))
    ports = await obs.start()
    try:
        yield obs, ports["health"]
    finally:
        await obs.stop()


@pytest.mark.asyncio
async def test_query_follows_the_live_state(live: tuple[Observability, int]) -> None:
    """query() reads real endpoints: 1 while starting, 0 when ready, 1 again when draining."""
    obs, port = live
    report = await query("127.0.0.1", port, port, 5)
    assert report.exit_code == 1 and report.ready.body == {
        "status": "not ready", "state": "not_ready", "reason": "starting", "role": "server",
        "link_up": None, "ssh_port": 20022, "asyncssh_patches": sshfix.report(),
        "unreachable_sockets": {}}
    obs.state.set_ready("listening")
    finish(open_connection(obs.metrics, 123, 456))
    report = await query("127.0.0.1", port, port, 5)
    assert report.exit_code == 0
    assert report.metrics is not None and report.metrics.body is not None
    assert report.metrics.body["total_bytes_read"] == 123
    obs.state.start_draining()
    assert (await query("127.0.0.1", port, port, 5)).exit_code == 1


@pytest.mark.asyncio
async def test_query_nothing_listening() -> None:
    """Nothing on the ports: exit code 2 and a readable reason."""
    port = closed_port()
    report = await query("127.0.0.1", port, port, 5)
    assert report.exit_code == 2
    assert report.health.error == "connection refused"


@pytest.mark.asyncio
async def test_status_command_against_live_endpoints(live: tuple[Observability, int]) -> None:
    """The real command prints the table (exit 0) and --json (parsable, same verdict)."""
    obs, port = live
    obs.state.set_ready("listening")

    async def run(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            *relay_cmd("status", "--health-check-port", str(port), "--metrics-port", str(port),
                       *args),
            env=relay_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), 60 * FACTOR)
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    code, out = await run()
    assert code == 0 and out.startswith("state         healthy, ready\n")
    code, out = await run("--json")
    data = json.loads(out)
    assert code == 0 and data["healthy"] and data["ready"] and data["exit_code"] == 0
    assert data["metrics"]["body"]["total_connections"] == 0
    obs.state.start_draining()
    code, out = await run()
    assert code == 1 and "not ready (shutting down)" in out


@pytest.mark.asyncio
async def test_status_tells_another_relays_endpoints_apart(
        live: tuple[Observability, int]) -> None:
    """Endpoints answering for another SSH port are not this relay's: "not served", exit 2."""
    obs, port = live
    obs.state.set_ready("listening")
    proc = await asyncio.create_subprocess_exec(
        *relay_cmd("status", "--role", "server", "--port", "20023", "--health-check-port",
                   str(port), "--metrics-port", str(port)),
        env=relay_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60 * FACTOR)
    assert proc.returncode == 2 and out == b""
    assert fatal(err.decode(), 2) == (
        f"not served: http://127.0.0.1:{port}/health answers for the relay on SSH port 20022, "
        "not 20023; this relay's default port was taken (its log says "
        "observability_port_in_use)")


def test_status_derived_port_not_served() -> None:
    """Nothing on the port derived from --port: "not served", naming the SSH port, exit 2."""
    with socket.socket() as held:  # bound, not listening: connecting is refused
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        result = run_relay("status", "--role", "server", "--port", str(port - 58),
                           "--metrics-port", str(port))
    assert result.returncode == 2
    assert fatal(result.stderr, 2) == (
        f"not served: no relay answers at http://127.0.0.1:{port}/health: connection refused "
        f"(a relay on SSH port {port - 58} whose default port was taken runs without these "
        "endpoints; its log says observability_port_in_use)")


def test_status_of_a_client_without_endpoints_says_how_to_turn_them_on() -> None:
    """A client serves nothing by default: the line says so and names both flags, exit 2."""
    port = closed_port()
    result = run_relay("status", "--role", "client", "--port", str(port - 59))
    assert result.returncode == 2 and result.stdout == ""
    assert fatal(result.stderr, 2).startswith(
        f"not served: no relay answers at http://127.0.0.1:{port}/health: connection refused "
        "(a client serves /health, /ready and /metrics only when started with "
        "--health-check-enabled and --metrics-enabled: they are off by default;")


def test_status_nothing_answers_exits_2() -> None:
    """No relay on the port: exit 2 with one JSON fatal line on stderr."""
    port = closed_port()
    result = run_relay("status", "--health-check-port", str(port), "--metrics-port", str(port))
    assert result.returncode == 2
    assert fatal(result.stderr, 2) == (f"no relay answers at http://127.0.0.1:{port}/health: "
                                     "connection refused")


@pytest.mark.parametrize("args", [("--bogus",), ("--role", "both"), ("--timeout", "soon"),
                                  ("--health-check-port", "70000"),
                                  ("--health-check-port", "0")])
def test_status_bad_usage_exits_2_with_one_line(args: tuple[str, ...]) -> None:
    """Bad flags and values: one error line, exit 2, nothing queried."""
    result = run_relay("status", *args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert fatal(result.stderr, 2)
    assert result.stdout == ""


def test_status_reads_ports_from_config_file(tmp_path: Path) -> None:
    """--config supplies host and ports (here: a closed port, so exit 2 names it)."""
    port = closed_port()
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"health_check_port": port, "metrics_port": port}))
    result = run_relay("status", "--config", str(config))
    assert result.returncode == 2 and f":{port}/health" in result.stderr
