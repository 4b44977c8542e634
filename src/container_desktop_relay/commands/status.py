"""``container-desktop-relay status``: ask a running relay's /health, /ready and /metrics.

Prints a short table (or ``--json``) and exits 0 when the relay is healthy and ready, 1 when it
answers but is degraded, not ready or only partly reachable, and 2 when nothing answers (or on
bad usage). Default ports derive from the SSH port (``--port``); when they answer for a relay on
another SSH port, this relay's endpoints are reported as not served (exit 2).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from container_desktop_relay.commands.args import platform_role
from container_desktop_relay.config import load_config
from container_desktop_relay.durations import parse_duration
from container_desktop_relay.errors import ConfigError, NotServed
from container_desktop_relay.fixes import status_not_served
from container_desktop_relay.observability.ports import endpoint_ports, query_host

__all__ = ["Answer", "Report", "main", "query", "render_table"]

EXIT_OK = 0
EXIT_UNHEALTHY = 1
EXIT_UNREACHABLE = 2


@dataclass(slots=True)
class Answer:
    """What one endpoint said: its HTTP status and JSON body, or why it did not answer."""

    url: str
    code: int | None = None
    body: dict[str, Any] | None = None
    error: str | None = None

    @property
    def answered(self) -> bool:
        """Whether a relay endpoint answered (an HTTP response with a JSON object body)."""
        return self.body is not None

    def as_json(self) -> dict[str, Any]:
        """This answer as a JSON-able object."""
        return {"url": self.url, "code": self.code, "body": self.body, "error": self.error}


@dataclass(slots=True)
class Report:
    """The three answers and the verdict drawn from them."""

    health: Answer
    ready: Answer
    metrics: Answer | None
    #: the SSH port of the relay that answered, when it is not the one asked about
    other_relay: int | None = None

    @property
    def healthy(self) -> bool:
        """/health said 200 "healthy"."""
        return (self.health.code == 200 and self.health.body is not None
                and self.health.body.get("status") == "healthy")

    @property
    def is_ready(self) -> bool:
        """/ready said 200."""
        return self.ready.code == 200 and self.ready.answered

    @property
    def exit_code(self) -> int:
        """0 healthy and ready, 2 nothing answered, else 1."""
        answers = [self.health, self.ready] + ([self.metrics] if self.metrics else [])
        if self.other_relay is not None or not any(a.answered for a in answers):
            return EXIT_UNREACHABLE
        return EXIT_OK if self.healthy and self.is_ready else EXIT_UNHEALTHY

    def as_json(self) -> dict[str, Any]:
        """The report as a JSON-able object (what ``--json`` prints)."""
        return {
            "healthy": self.healthy,
            "ready": self.is_ready,
            "exit_code": self.exit_code,
            "served": self.exit_code != EXIT_UNREACHABLE,
            "other_relay_ssh_port": self.other_relay,
            "health": self.health.as_json(),
            "readiness": self.ready.as_json(),
            "metrics": self.metrics.as_json() if self.metrics else None,
        }


async def _get(session: aiohttp.ClientSession, url: URL) -> Answer:
    answer = Answer(str(url))
    try:
        async with session.get(url, headers={"Accept": "application/json"},
                               allow_redirects=False) as response:
            answer.code = response.status
            try:
                body = await response.json(content_type=None)
            except ValueError:
                body = None
            if isinstance(body, dict):
                answer.body = body
            else:
                answer.error = f"HTTP {response.status} without a relay JSON body"
    except TimeoutError:
        answer.error = "timed out"
    except aiohttp.ClientConnectorError as exc:
        errno = exc.os_error.errno
        answer.error = (os.strerror(errno) if errno else str(exc.os_error)).lower()
    except aiohttp.ClientError as exc:
        answer.error = str(exc) or type(exc).__name__
    return answer


async def query(host: str, health_port: int, metrics_port: int | None,
                timeout: float) -> Report:
    """Fetch /health, /ready and (unless ``metrics_port`` is None) /metrics concurrently."""
    def url(port: int, path: str) -> URL:
        return URL.build(scheme="http", host=host, port=port, path=path)

    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        gets = [_get(session, url(health_port, "/health")), _get(session, url(health_port,
                                                                               "/ready"))]
        if metrics_port is not None:
            gets.append(_get(session, url(metrics_port, "/metrics")))
        answers = await asyncio.gather(*gets)
    return Report(answers[0], answers[1], answers[2] if metrics_port is not None else None)


def _field(answer: Answer | None, key: str) -> Any:
    if answer is None or answer.body is None:
        return None
    return answer.body.get(key)


def render_table(report: Report) -> str:
    """The human-readable report: state, role, uptime, link, target sockets that failed
    recently, connections, bytes, errors."""
    rows: list[tuple[str, str]] = []
    health, ready, metrics = report.health, report.ready, report.metrics
    if health.answered:
        state = str(_field(health, "status"))
    else:
        state = f"unknown (/health: {health.error})"
    if ready.answered:
        readiness = str(_field(ready, "status"))
        reason = _field(ready, "reason")
        if reason and not report.is_ready:
            readiness += f" ({reason})"
    else:
        readiness = f"unknown (/ready: {ready.error})"
    rows.append(("state", f"{state}, {readiness}"))
    if ready.answered:
        rows.append(("role", str(_field(ready, "role"))))
        patches = _field(ready, "asyncssh_patches")
        if isinstance(patches, dict):
            rows.append(("asyncssh", _patches_row(patches)))
    uptime = _field(health, "uptime") or _field(metrics, "uptime")
    rows.append(("uptime", str(uptime) if uptime is not None else "unknown"))
    if ready.answered:
        link = _field(ready, "link_up")
        rows.append(("link", "n/a (server role)" if link is None else ("up" if link else "down")))
        unreachable = _field(ready, "unreachable_sockets")
        if isinstance(unreachable, dict):
            for path, why in unreachable.items():
                rows.append(("unreachable", str(why) if path in str(why) else f"{path}: {why}"))
    metrics_ok = metrics is not None and metrics.code == 200 and metrics.answered
    source = metrics if metrics_ok else health
    active, total = _field(source, "active_connections"), _field(source, "total_connections")
    if active is not None:
        rows.append(("connections", f"{active} active, {total} total"))
    if metrics_ok:
        rows.append(("bytes", f"{_field(metrics, 'total_bytes_read')} read, "
                              f"{_field(metrics, 'total_bytes_written')} written"))
        rows.append(("errors", f"{_field(metrics, 'total_errors')} "
                               f"({_field(metrics, 'connection_errors')} connection, "
                               f"{_field(metrics, 'socket_errors')} socket)"))
        rows.append(("avg duration", str(_field(metrics, "average_connection_duration"))))
    else:
        if metrics is not None:
            why = metrics.error or f"HTTP {metrics.code}"
            rows.append(("bytes", f"unknown (/metrics: {why})"))
        if health.answered:
            rows.append(("errors", str(_field(health, "error_count"))))
    if health.answered:
        rows.append(("last error", _field(health, "last_error") or "none"))
    width = max(len(name) for name, _ in rows)
    return "".join(f"{name:<{width}}  {value}\n" for name, value in rows)


def _patches_row(patches: dict[str, Any]) -> str:
    """ "2.24.1, patches all: 11 active" (and how many were left out)."""
    active = patches.get("active") or []
    left = patches.get("not_applied") or {}
    row = f"{patches.get('asyncssh')}, patches {patches.get('mode')}: {len(active)} active"
    return row + (f", {len(left)} not applied" if left else "")


def main(args: argparse.Namespace) -> int:
    """Run ``status`` with its parsed flags (see commands.registry); returns the exit status.

    Raises:
        ConfigError: bad flags or configuration (exit 2).
    """
    try:
        timeout = parse_duration(args.timeout)
    except ValueError:
        timeout = -1.0
    if timeout <= 0:
        raise ConfigError(f"invalid --timeout={args.timeout}: must be a duration greater than 0")
    flags = {key: getattr(args, key) for key in ("health_check_host", "health_check_port",
                                                 "metrics_port", "port")}
    config = load_config(flags, config_path=args.config_file)
    role = args.role or platform_role()
    ports = endpoint_ports(config, role)
    host = query_host(config.health_check_host)
    health_port = ports.health_port
    metrics_port: int | None = ports.metrics_port
    if health_port == 0:
        raise ConfigError("health_check_port is 0 (any free port): pass the bound port with "
                          "--health-check-port (the relay logs it as observability_listening)")
    if config.metrics_enabled is False:
        metrics_port = None
    elif metrics_port == 0:  # both ports 0 share one server; otherwise /metrics answers 404
        metrics_port = health_port
    report = asyncio.run(query(host, health_port, metrics_port, timeout))
    # Which relay answered matters when the port was derived from an SSH port (or one given).
    ssh_port = ports.ssh_port
    answered_for = _field(report.ready, "ssh_port")
    derived = not ports.health_explicit or config.source_of("port") is not None
    if derived and isinstance(answered_for, int) and answered_for != ssh_port:
        report.other_relay = answered_for
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    elif report.other_relay is not None:  # the fatal JSON line on stderr, exit 2
        raise NotServed(f"not served: {report.health.url} answers for the relay on SSH port "
                        f"{report.other_relay}, not {ssh_port}; this relay's default port was "
                        "taken (its log says observability_port_in_use)")
    elif report.exit_code == EXIT_UNREACHABLE:
        raise NotServed(status_not_served(report.health.url, str(report.health.error),
                                          role=role, ssh_port=ssh_port, derived=derived))
    else:
        print(render_table(report), end="")
    return report.exit_code
