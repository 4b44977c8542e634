"""HTTP observability of a role: /health and /ready on one port, /metrics (JSON or Prometheus).

Served by :mod:`~container_desktop_relay.observability.httpserve` (h11) on the role's own
event loop. Every handler reads the live
:class:`~container_desktop_relay.observability.metrics.Metrics` and
:class:`~container_desktop_relay.runtime.state.RoleState` in O(active connections) without awaiting,
so a scrape never stalls the data path. When the health and metrics ports are equal (including
both 0), one server carries all three paths. Observability never stops relaying on its own: a
port left at its default that is taken is logged (``observability_port_in_use``) and not served;
only a port set explicitly stops the start when it is taken.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from container_desktop_relay.config import Config
from container_desktop_relay.durations import format_duration
from container_desktop_relay.errors import ConfigError, ListenError
from container_desktop_relay.fixes import port_in_use
from container_desktop_relay.log import get_logger
from container_desktop_relay.observability import prometheus
from container_desktop_relay.observability.httpserve import (
    HttpServer,
    Request,
    Response,
    json_response,
)
from container_desktop_relay.observability.metrics import Metrics, Snapshot
from container_desktop_relay.observability.ports import HEALTH, METRICS, endpoint_ports
from container_desktop_relay.runtime.portowner import tcp_port_holder
from container_desktop_relay.runtime.state import RoleState
from container_desktop_relay.ssh import patches as sshfix

if TYPE_CHECKING:
    from container_desktop_relay.runtime.app import Role, Shutdown

__all__ = [
    "Observability",
    "health_view",
    "make_handler",
    "metrics_format",
    "metrics_view",
    "observability_extra",
    "ready_view",
]

log = get_logger(__name__)

JSON = "application/json"
OPENMETRICS = "application/openmetrics-text"
TEXT = "text/plain"
_OFFERS = (JSON, OPENMETRICS, TEXT)  # tie order: JSON wins, as for curl's "*/*"
_FORMATS = {"json": "json", "prometheus": "prometheus", "text": "prometheus",
            "openmetrics": "openmetrics"}
_NO_STORE = {"Cache-Control": "no-store"}


# --------------------------------------------------------------------------- views (no I/O)
def rfc3339(when: datetime.datetime | None = None) -> str:
    """``when`` (default now) as RFC 3339 UTC with second precision: "2025-01-16T10:30:00Z"."""
    when = when or datetime.datetime.now(datetime.UTC)
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def health_view(snap: Snapshot, state: RoleState, threshold: int,
                now: datetime.datetime | None = None) -> tuple[int, dict[str, Any]]:
    """The /health code and body: 503 "degraded" above ``threshold`` or with the link down."""
    degraded = snap.active_connections > threshold or state.link_up is False
    body = {
        "status": "degraded" if degraded else "healthy",
        "uptime": format_duration(int(snap.uptime)),
        "active_connections": snap.active_connections,
        "total_connections": snap.total_connections,
        "error_count": snap.total_errors,
        "last_error": snap.last_error,
        "timestamp": rfc3339(now),
    }
    return (503 if degraded else 200), body


def ready_view(state: RoleState, ssh_port: int | None = None) -> tuple[int, dict[str, Any]]:
    """The /ready status code and body: 200 only when the role can serve a connection now.

    ``ssh_port`` (the server's own SSH port, or the one the client connects to) lets ``status``
    tell this relay's endpoints from another relay's on the same port; ``unreachable_sockets``
    names each target socket that failed recently (a missing one: "does not exist").
    """
    body = {
        "status": "ready" if state.ready else "not ready",
        "state": state.condition,
        "reason": state.reason,
        "role": state.role,
        "link_up": state.link_up,
        "asyncssh_patches": sshfix.report(),
        "ssh_port": ssh_port,
        "unreachable_sockets": state.unreachable_sockets(),
    }
    return (200 if state.ready else 503), body


def metrics_view(snap: Snapshot) -> dict[str, Any]:
    """The /metrics JSON body: exactly the spec's fields."""
    return {
        "total_connections": snap.total_connections,
        "active_connections": snap.active_connections,
        "total_bytes_read": snap.total_bytes_read,
        "total_bytes_written": snap.total_bytes_written,
        "total_errors": snap.total_errors,
        "connection_errors": snap.connection_errors,
        "socket_errors": snap.socket_errors,
        "average_connection_duration": format_duration(snap.average_connection_duration),
        "uptime": format_duration(int(snap.uptime)),
    }


def _quality(accept: str, offer: str) -> float:
    """The q-value ``accept`` gives ``offer`` (most specific matching range wins; 0 if none)."""
    main = offer.split("/")[0]
    best_rank, best_q = -1, 0.0
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        media = media.lower()
        if media == offer:
            rank = 2
        elif media == f"{main}/*":
            rank = 1
        elif media == "*/*":
            rank = 0
        else:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if rank > best_rank or (rank == best_rank and q > best_q):
            best_rank, best_q = rank, q
    return best_q


def metrics_format(accept: str | None, fmt: str | None) -> str:
    """"json", "prometheus" or "openmetrics" for a /metrics request.

    ``?format=`` wins; otherwise the Accept header's preferred type among JSON, OpenMetrics and
    text/plain, with JSON for no header, ``*/*`` or nothing acceptable.

    Raises:
        ValueError: ``fmt`` is not json, prometheus, text or openmetrics.
    """
    if fmt is not None:
        try:
            return _FORMATS[fmt.strip().lower()]
        except KeyError:
            raise ValueError(
                f"unknown format {fmt!r}: use json, prometheus or openmetrics") from None
    if not accept:
        return "json"
    scores = {offer: _quality(accept, offer) for offer in _OFFERS}
    best = max(_OFFERS, key=lambda offer: scores[offer])
    if best == JSON or scores[best] <= 0:
        return "json"
    return "prometheus"


# --------------------------------------------------------------------------- routing
_ALLOW = "GET, HEAD"


def make_handler(metrics: Metrics, state: RoleState, *, threshold: int,
                 paths: frozenset[str] = frozenset({HEALTH, METRICS}),
                 ssh_port: int | None = None) -> Callable[[Request], Response]:
    """The request handler serving /health and /ready (``health``) and/or /metrics."""
    registry = prometheus.make_registry(metrics, state)

    def health() -> Response:
        status, body = health_view(metrics.snapshot(), state, threshold)
        return json_response(body, status, _NO_STORE)

    def ready() -> Response:
        status, body = ready_view(state, ssh_port)
        return json_response(body, status, _NO_STORE)

    def metrics_page(request: Request) -> Response:
        headers = {**_NO_STORE, "Vary": "Accept"}
        accept = request.headers.get("accept", "")
        try:
            fmt = metrics_format(accept, request.query.get("format"))
        except ValueError as exc:
            return json_response({"error": str(exc)}, 400, headers)
        if fmt == "json":
            return json_response(metrics_view(metrics.snapshot()), 200, headers)
        if fmt == "openmetrics":
            accept = OPENMETRICS
        payload, content_type = prometheus.render(registry, accept)
        headers["Content-Type"] = content_type
        return Response(200, payload, headers)

    routes: dict[str, Callable[[Request], Response]] = {}
    if HEALTH in paths:
        routes["/health"] = lambda _request: health()
        routes["/ready"] = lambda _request: ready()
    if METRICS in paths:
        routes["/metrics"] = metrics_page

    def handle(request: Request) -> Response:
        view = routes.get(request.path)
        if view is None:
            return json_response({"error": "Not Found", "path": request.path}, 404, _NO_STORE)
        if request.method not in ("GET", "HEAD"):
            return json_response({"error": "Method Not Allowed", "path": request.path}, 405,
                                 {**_NO_STORE, "Allow": _ALLOW})
        return view(request)

    return handle


# --------------------------------------------------------------------------- lifecycle
class Observability:
    """The role's HTTP endpoints: binds the configured ports, reports them, stops cleanly."""

    def __init__(self, config: Config, metrics: Metrics, state: RoleState) -> None:
        self.config = config
        self.metrics = metrics
        self.state = state
        self.host = config.health_check_host
        #: bound ports once started: {"health": port, "metrics": port} for the enabled ones.
        self.ports: dict[str, int] = {}
        #: default ports that were taken, so not served: {"health": port, ...}
        self.unserved: dict[str, int] = {}
        self._servers: list[HttpServer] = []
        #: which port serves which endpoint (shared with status and doctor)
        self.endpoints = endpoint_ports(config, state.role)

    def plan(self) -> list[tuple[int, frozenset[str]]]:
        """(port, paths) of each server to start, merging equal health and metrics ports."""
        return self.endpoints.servers()

    def _origin(self, paths: frozenset[str]) -> tuple[str, str] | None:
        """(key, where it was set) of the first explicitly set port among ``paths``."""
        for what, key in ((HEALTH, "health_check_port"), (METRICS, "metrics_port")):
            if what in paths and self.endpoints.explicit(what):
                return key, self.config.source_of(key) or "the configuration"
        return None

    async def start(self) -> dict[str, int]:
        """Bind every planned server; return the bound ports by endpoint group.

        A port left at its default that is in use is logged as ``observability_port_in_use``
        and recorded in :attr:`unserved`; the role runs on without those endpoints.

        Raises:
            ConfigError: an explicitly set port is in use (exit 2); nothing stays bound.
            ListenError: a port cannot be bound for another reason; nothing stays bound.
        """
        try:
            for port, paths in self.plan():
                bound = await self._start_one(port, paths)
                for what in paths:
                    if bound:
                        self.ports[what] = bound
                    else:
                        self.unserved[what] = port
        except BaseException:
            await self.stop()
            raise
        if self.ports:
            log.info("observability_listening", extra={
                "host": self.host,
                "health_port": self.ports.get(HEALTH),
                "metrics_port": self.ports.get(METRICS),
                "ports": sorted(set(self.ports.values())),
            })
        return dict(self.ports)

    async def _start_one(self, port: int, paths: frozenset[str]) -> int:
        """Serve ``paths`` on ``port``; the bound port, or 0 when a default port is taken."""
        handler = make_handler(self.metrics, self.state,
                               threshold=self.config.degraded_threshold, paths=paths,
                               ssh_port=self.endpoints.ssh_port)
        server = HttpServer(handler)
        what = " and ".join(sorted("/health, /ready" if p == HEALTH else "/metrics"
                                   for p in paths))
        try:
            bound = await server.start(self.host, port)
        except OSError as exc:  # asyncio rewrites strerror; the errno says it plainly
            why = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            message = f"cannot listen for {what} on {self.host}:{port}: {why}"
            if exc.errno != errno.EADDRINUSE:
                raise ListenError(message) from None
            holder = tcp_port_holder(port)
            held = f" (held by {holder})" if holder else ""
            origin = self._origin(paths)
            if origin is not None:
                key, source = origin
                raise ConfigError(f"{message}{held} ({key}={port} from {source}: choose a free "
                                  "port, 0 for any, or leave it unset)") from None
            flags = " or ".join(f"--{key.replace('_', '-')}" for part, key in
                                ((HEALTH, "health_check_port"), (METRICS, "metrics_port"))
                                if part in paths)
            log.warning("observability_port_in_use", extra={
                "host": self.host, "port": port, "endpoints": what,
                "error": f"{message}; relaying goes on without them "
                         + port_in_use(flags, holder),
            })
            return 0
        self._servers.append(server)
        return bound

    async def stop(self) -> None:
        """Close every server and its connections."""
        servers, self._servers = self._servers, []
        for server in reversed(servers):
            with contextlib.suppress(Exception):
                await server.close()


def observability_extra(
    config: Config,
) -> Callable[[Role, Shutdown], Awaitable[Callable[[], Awaitable[None]] | None]]:
    """An ``extras`` entry for :func:`app.serve`: start the endpoints, return their cleanup."""

    async def start(role: Role, shutdown: Shutdown) -> Callable[[], Awaitable[None]] | None:
        obs = Observability(config, role.metrics, role.state)
        if not obs.plan():
            return None
        await obs.start()
        return obs.stop

    return start
