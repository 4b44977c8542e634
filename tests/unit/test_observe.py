"""/health, /ready and /metrics: views, content negotiation, and the HTTP server on port 0."""

from __future__ import annotations

import datetime
import logging
import os
import re
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from container_desktop_relay.config import Config, load_config
from container_desktop_relay.errors import ConfigError
from container_desktop_relay.observability.httpserve import HttpServer
from container_desktop_relay.observability.metrics import Metrics
from container_desktop_relay.observability.observe import (
    Observability,
    health_view,
    make_handler,
    metrics_format,
    metrics_view,
    ready_view,
    rfc3339,
)
from container_desktop_relay.runtime.portowner import describe_holder
from container_desktop_relay.runtime.state import SOCKET_MEMORY, RoleState
from container_desktop_relay.ssh import patches as sshfix
from obs_helpers import Clock, finish, open_connection

HEALTH_KEYS = ["status", "uptime", "active_connections", "total_connections", "error_count",
               "last_error", "timestamp"]
METRICS_KEYS = ["total_connections", "active_connections", "total_bytes_read",
                "total_bytes_written", "total_errors", "connection_errors", "socket_errors",
                "average_connection_duration", "uptime"]
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


# ------------------------------------------------------------------ views
def test_health_shape_and_go_uptime() -> None:
    """/health has exactly the spec's fields; uptime is Go-style, timestamp RFC 3339 UTC."""
    clock = Clock()
    metrics = Metrics("server", clock=clock)
    clock.now += 1 * 3600 + 23 * 60 + 45.6
    finish(open_connection(metrics, 10, 20))
    open_connection(metrics)
    metrics.error("socket", "target socket /x does not exist")
    now = datetime.datetime(2025, 1, 16, 10, 30, tzinfo=datetime.UTC)
    code, body = health_view(metrics.snapshot(), RoleState("server"), 1000, now)
    assert code == 200
    assert list(body) == HEALTH_KEYS
    assert body == {"status": "healthy", "uptime": "1h23m45s", "active_connections": 1,
                    "total_connections": 2, "error_count": 1,
                    "last_error": "target socket /x does not exist",
                    "timestamp": "2025-01-16T10:30:00Z"}
    assert RFC3339.match(rfc3339())


def test_health_degraded_only_above_threshold() -> None:
    """503 "degraded" once active connections exceed the threshold, not at it."""
    metrics = Metrics("server")
    state = RoleState("server")
    for _ in range(3):
        open_connection(metrics)
    assert health_view(metrics.snapshot(), state, 3)[0] == 200
    code, body = health_view(metrics.snapshot(), state, 2)
    assert (code, body["status"]) == (503, "degraded")


def test_health_degraded_while_client_link_down() -> None:
    """The client's /health is 503 while its SSH link is down, 200 once it is up."""
    metrics = Metrics("client")
    state = RoleState("client")
    state.link_up = False
    code, body = health_view(metrics.snapshot(), state, 1000)
    assert (code, body["status"]) == (503, "degraded")
    state.link_up = True
    assert health_view(metrics.snapshot(), state, 1000)[0] == 200


def test_ready_follows_state_and_draining_wins() -> None:
    """/ready is 503 with a reason until ready, and 503 again once draining, for good."""
    state = RoleState("server")
    patches = sshfix.report()
    assert ready_view(state) == (503, {"status": "not ready", "state": "not_ready",
                                       "reason": "starting", "role": "server",
                                       "link_up": None, "ssh_port": None,
                                       "asyncssh_patches": patches,
                                       "unreachable_sockets": {}})
    state.set_ready("listening")
    assert ready_view(state)[0] == 200
    state.start_draining()
    state.set_ready("listening")
    assert ready_view(state) == (503, {"status": "not ready", "state": "draining",
                                       "reason": "shutting down", "role": "server",
                                       "link_up": None, "ssh_port": None,
                                       "asyncssh_patches": patches,
                                       "unreachable_sockets": {}})



def test_ready_names_unreachable_sockets_until_reached_or_forgotten() -> None:
    """/ready lists each target socket that failed recently with its reason; one reached
    since, or not tried again for SOCKET_MEMORY seconds, is no longer listed."""
    state = RoleState("server")
    state.set_ready("listening")
    missing = "target socket /run/x.sock does not exist"
    now = time.monotonic()
    assert state.socket_failed("/run/x.sock", missing, now=now)
    assert state.socket_failed("/run/y.sock", "timed out")
    code, body = ready_view(state)
    assert code == 200
    assert body["unreachable_sockets"] == {"/run/x.sock": missing, "/run/y.sock": "timed out"}
    state.socket_reached("/run/y.sock")
    assert state.unreachable_sockets(now=now + SOCKET_MEMORY) == {"/run/x.sock": missing}
    assert state.unreachable_sockets(now=now + SOCKET_MEMORY + 0.1) == {}


def test_a_socket_failure_is_news_once() -> None:
    """The first failure of a socket is news, repeats with the same reason within
    SOCKET_MEMORY are not; another reason, a gap past it, or a failure after the socket was
    reached is news again."""
    state = RoleState("client")
    missing = "target socket /run/x.sock does not exist"
    assert state.socket_failed("/run/x.sock", missing, now=0.0)
    assert not state.socket_failed("/run/x.sock", missing, now=2.0)
    assert not state.socket_failed("/run/x.sock", missing, now=2.0 + SOCKET_MEMORY)
    assert state.socket_failed("/run/x.sock", missing, now=2.1 + 2 * SOCKET_MEMORY)
    assert state.socket_failed("/run/x.sock", "timed out", now=3.0 + 2 * SOCKET_MEMORY)
    assert state.socket_failed("/run/other.sock", "timed out", now=3.0 + 2 * SOCKET_MEMORY)
    state.socket_reached("/run/x.sock")
    state.socket_reached("/run/never.sock")
    assert state.socket_failed("/run/x.sock", "timed out", now=4.0 + 2 * SOCKET_MEMORY)


def test_ready_names_an_unavailable_spawned_server() -> None:
    """A client whose spawned server keeps exiting at once says so in /ready's state."""
    state = RoleState("client")
    state.set_not_ready("server_unavailable: the spawned server exited 3 times in a row")
    code, body = ready_view(state)
    assert (code, body["state"]) == (503, "server_unavailable")
    assert body["reason"].startswith("server_unavailable: the spawned server exited")


def test_metrics_counts_live_and_closed_bytes() -> None:
    """/metrics JSON has exactly the spec's fields and sums closed and live connections."""
    clock = Clock()
    metrics = Metrics("server", clock=clock)
    finish(open_connection(metrics, 100, 1000))
    finish(open_connection(metrics, 7, 0))
    open_connection(metrics, 5, 50)
    metrics.error("connection", "login failed")
    metrics.error("socket", "refused")
    metrics.error("other", "odd")
    clock.now += 330
    body = metrics_view(metrics.snapshot())
    assert list(body) == METRICS_KEYS
    assert {k: v for k, v in body.items() if k != "average_connection_duration"} == {
        "total_connections": 3, "active_connections": 1, "total_bytes_read": 112,
        "total_bytes_written": 1050, "total_errors": 3, "connection_errors": 1,
        "socket_errors": 1, "uptime": "5m30s"}
    assert re.fullmatch(r"[\d.]+(ns|µs|ms|s)", body["average_connection_duration"])


@pytest.mark.parametrize(("accept", "fmt", "expected"), [
    (None, None, "json"),
    ("", None, "json"),
    ("*/*", None, "json"),
    ("application/json", None, "json"),
    ("text/plain", None, "prometheus"),
    ("text/plain; version=0.0.4", None, "prometheus"),
    ("application/openmetrics-text; version=1.0.0", None, "prometheus"),
    ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
     "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1", None, "prometheus"),
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", None, "json"),
    ("text/plain;q=0.5, application/json", None, "json"),
    ("application/json;q=0.1, text/plain", None, "prometheus"),
    ("text/*", None, "prometheus"),
    ("image/png", None, "json"),
    ("application/json", "prometheus", "prometheus"),
    ("text/plain", "JSON", "json"),
    (None, "openmetrics", "openmetrics"),
])
def test_metrics_format_negotiation(accept: str | None, fmt: str | None, expected: str) -> None:
    """?format= wins; else Accept picks Prometheus only when it prefers text or OpenMetrics."""
    assert metrics_format(accept, fmt) == expected


def test_metrics_format_rejects_unknown() -> None:
    """An unknown ?format= is an error naming the choices."""
    with pytest.raises(ValueError, match="json, prometheus or openmetrics"):
        metrics_format(None, "xml")


# ------------------------------------------------------------------ HTTP
class Served:
    """A role's state and counters behind a test client."""

    def __init__(self, client: aiohttp.ClientSession, state: RoleState,
                 metrics: Metrics) -> None:
        self.client = client
        self.state = state
        self.metrics = metrics


@pytest_asyncio.fixture
async def served() -> AsyncIterator[Served]:
    """The observability app (all paths) of a server role on a real port 0."""
    state = RoleState("server")
    metrics = Metrics("server")
    server = HttpServer(make_handler(metrics, state, threshold=2))
    port = await server.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as client:
            yield Served(client, state, metrics)
    finally:
        await server.close()


@pytest.mark.asyncio
async def test_http_health_and_ready(served: Served) -> None:
    """/health and /ready answer JSON with the right codes as the state changes."""
    c = served.client
    resp = await c.get("/ready")
    assert resp.status == 503 and (await resp.json())["status"] == "not ready"
    assert resp.headers["Cache-Control"] == "no-store"
    served.state.set_ready("listening")
    resp = await c.get("/ready")
    assert resp.status == 200 and (await resp.json())["status"] == "ready"
    resp = await c.get("/health")
    assert resp.status == 200 and list(await resp.json()) == HEALTH_KEYS
    for _ in range(3):
        open_connection(served.metrics)
    resp = await c.get("/health")
    assert resp.status == 503 and (await resp.json())["status"] == "degraded"


@pytest.mark.asyncio
async def test_http_metrics_json_by_default(served: Served) -> None:
    """curl-style requests get the spec's JSON."""
    open_connection(served.metrics, 3, 4)
    for accept in ("*/*", None):
        headers = {"Accept": accept} if accept else {}
        resp = await served.client.get("/metrics", headers=headers)
        assert resp.status == 200
        assert resp.content_type == "application/json"
        body = await resp.json()
        assert (body["total_bytes_read"], body["total_bytes_written"]) == (3, 4)


@pytest.mark.asyncio
async def test_http_metrics_prometheus_text(served: Served) -> None:
    """?format=prometheus and Accept: text/plain give text 0.0.4 the official parser reads."""
    finish(open_connection(served.metrics, 11, 22))
    for params, headers in (({"format": "prometheus"}, {}), ({}, {"Accept": "text/plain"})):
        resp = await served.client.get("/metrics", params=params, headers=headers)
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert resp.headers["Vary"] == "Accept"
        families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
        assert families["cdr_bytes_read"].samples[0].value == 11
        assert families["cdr_connections"].samples[0].labels == {"role": "server"}


@pytest.mark.asyncio
async def test_http_metrics_openmetrics(served: Served) -> None:
    """A Prometheus scraper's Accept gets OpenMetrics, which the OpenMetrics parser reads."""
    finish(open_connection(served.metrics, 5, 6))
    accept = ("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,"
              "*/*;q=0.1")
    resp = await served.client.get("/metrics", headers={"Accept": accept})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    text = await resp.text()
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in openmetrics_families(text)}
    assert families["cdr_connections"].type == "counter"
    assert families["cdr_connection_duration_seconds"].type == "histogram"
    resp = await served.client.get("/metrics", params={"format": "openmetrics"})
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")


@pytest.mark.asyncio
async def test_http_unknown_format_is_400(served: Served) -> None:
    """?format=xml is a 400 with a JSON reason."""
    resp = await served.client.get("/metrics", params={"format": "xml"})
    assert resp.status == 400 and "unknown format" in (await resp.json())["error"]


@pytest.mark.asyncio
async def test_http_404_and_405(served: Served) -> None:
    """Unknown paths are 404, wrong methods 405 with Allow; both as JSON."""
    resp = await served.client.get("/nope")
    assert resp.status == 404 and (await resp.json())["path"] == "/nope"
    for path in ("/health", "/ready", "/metrics"):
        resp = await served.client.post(path, data=b"x")
        assert resp.status == 405
        assert "GET" in resp.headers["Allow"]
        assert (await resp.json())["error"] == "Method Not Allowed"
    resp = await served.client.head("/health")
    assert resp.status == 200


# ------------------------------------------------------------------ lifecycle
def _config(**kw: object) -> Config:
    return Config(**kw)  # type: ignore[arg-type]


def _busy_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


@pytest.mark.asyncio
async def test_equal_ports_share_one_server(caplog: pytest.LogCaptureFixture) -> None:
    """Both ports 0: one server on one free port carries all three paths; the port is logged."""
    obs = Observability(_config(health_check_port=0, metrics_port=0), Metrics("server"),
                        RoleState("server"))
    with caplog.at_level(logging.INFO, logger="container_desktop_relay"):
        ports = await obs.start()
    try:
        assert ports["health"] == ports["metrics"] > 0
        record = next(r for r in caplog.records if r.getMessage() == "observability_listening")
        assert record.__dict__["health_port"] == ports["health"]
        assert record.__dict__["ports"] == [ports["health"]]
    finally:
        await obs.stop()


@pytest.mark.asyncio
async def test_separate_ports_serve_separate_paths() -> None:
    """Different ports: /health and /ready on one, /metrics on the other, 404 across."""
    holder = _busy_port()
    metrics_port = holder.getsockname()[1]
    holder.close()
    obs = Observability(_config(health_check_port=0, metrics_port=metrics_port),
                        Metrics("server"), RoleState("server"))
    ports = await obs.start()
    try:
        assert ports["metrics"] == metrics_port and ports["health"] != metrics_port
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{ports['health']}"
            assert (await session.get(base + "/health")).status == 200
            assert (await session.get(base + "/metrics")).status == 404
            base = f"http://127.0.0.1:{ports['metrics']}"
            assert (await session.get(base + "/metrics")).status == 200
            assert (await session.get(base + "/ready")).status == 404
    finally:
        await obs.stop()


@pytest.mark.asyncio
async def test_client_defaults_off_and_disabled_parts() -> None:
    """The client serves nothing by default; a disabled part is not served."""
    assert Observability(Config(), Metrics("client"), RoleState("client")).plan() == []
    obs = Observability(_config(health_check_enabled=False, metrics_port=0), Metrics("server"),
                        RoleState("server"))
    assert [paths for _, paths in obs.plan()] == [frozenset({"metrics"})]


@pytest.mark.asyncio
async def test_explicit_busy_port_is_config_error_and_unbinds_the_rest() -> None:
    """A busy port set explicitly stops the start naming it and where it was set (exit 2);
    servers already bound are closed again."""
    busy = _busy_port()
    port = busy.getsockname()[1]
    try:
        config = load_config({"health_check_port": "0", "metrics_port": str(port)},
                             environ={})
        obs = Observability(config, Metrics("server"), RoleState("server"))
        with pytest.raises(ConfigError) as info:
            await obs.start()
        assert str(info.value) == (
            f"cannot listen for /metrics on 127.0.0.1:{port}: address already in use "
            f"(held by {_this_process()}) (metrics_port={port} from --metrics-port: choose a "
            "free port, 0 for any, or leave it unset)")
        assert info.value.exit_code == 2
        assert obs._servers == []
    finally:
        busy.close()


def _this_process() -> str:
    """How a port-in-use message names this test process."""
    return describe_holder(os.getpid(), Path("/proc/self/cmdline").read_bytes(), "")


@pytest.mark.asyncio
async def test_busy_default_port_is_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    """A default (derived) port that is taken: one warning naming it, the rest still served."""
    busy = _busy_port()
    port = busy.getsockname()[1]
    # the server's default health port is its SSH port + 58
    config = _config(port=port - 58, metrics_port=0)
    obs = Observability(config, Metrics("server"), RoleState("server"))
    try:
        assert config.effective_health_port("server") == port
        with caplog.at_level(logging.INFO, logger="container_desktop_relay"):
            ports = await obs.start()
        assert obs.unserved == {"health": port}
        assert set(ports) == {"metrics"}
        warned = [r for r in caplog.records if r.getMessage() == "observability_port_in_use"]
        assert len(warned) == 1 and warned[0].levelno == logging.WARNING
        assert warned[0].__dict__["port"] == port
        assert warned[0].__dict__["error"].endswith(
            f"(held by {_this_process()}; stop that process or choose another port with "
            "--health-check-port)")
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{ports['metrics']}/metrics"
            assert (await session.get(url)).status == 200
    finally:
        await obs.stop()
        busy.close()
