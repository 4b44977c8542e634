"""Observability test helpers: real Metrics fed through real Pumps, HTTP gets, bound ports."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from container_desktop_relay.core.pump import CLIENT, TARGET, Pump
from container_desktop_relay.core.registry import ConnectionRegistry
from container_desktop_relay.observability.metrics import Metrics
from helpers import FACTOR, Proc, wait_for


class Sink:
    """An in-memory end that accepts everything (the pump's End protocol)."""

    def write(self, data: bytes) -> int:
        return 0  # taken at once

    def queued(self) -> int:
        return 0

    def backlog(self) -> int:
        return 0

    def write_eof(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class Clock:
    """A settable monotonic clock."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def open_connection(metrics: Metrics, up: int = 0, down: int = 0) -> Pump:
    """Start a forwarded connection on ``metrics``' registry (a fresh one when it observes
    none yet, as a role would give it) that moved ``up``/``down`` bytes so far."""
    registry = metrics.registry
    if registry is None:
        registry = ConnectionRegistry(100, count_closing=False)
        metrics.observe(registry)
    pump = Pump(registry.new_id(), "/t.sock", registry.finished)
    pump.attach(CLIENT, Sink())
    pump.attach(TARGET, Sink())
    registry.add(pump)
    if up:
        pump.data(CLIENT, b"u" * up)
    if down:
        pump.data(TARGET, b"d" * down)
    return pump


def finish(pump: Pump) -> None:
    """End ``pump`` (both sides lost), which reports it to its registry and so its Metrics."""
    pump.lost(CLIENT)
    pump.lost(TARGET)


# ---------------------------------------------------------------- real processes over HTTP
def bound_ports(proc: Proc) -> dict[str, Any]:
    """The ``observability_listening`` log record of a relay process (waits for it)."""
    def find() -> dict[str, Any] | None:
        for line in proc.log().splitlines():
            if '"observability_listening"' in line:
                return json.loads(line)  # type: ignore[no-any-return]
        if not proc.alive():
            raise AssertionError(f"relay exited before listening:\n{proc.log()}")
        return None

    return wait_for(find, 20, "observability_listening log line")  # type: ignore[no-any-return]


def get(port: int, path: str, accept: str | None = None) -> tuple[int, str, str]:
    """GET http://127.0.0.1:port/path: (status, content type, body), 4xx/5xx included."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=10 * FACTOR) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()


def get_json(port: int, path: str) -> tuple[int, dict[str, Any]]:
    """GET and decode a JSON answer: (status, body)."""
    code, _, body = get(port, path)
    return code, json.loads(body)


def ready_json(port: int, mode: str = "all") -> tuple[int, Any]:
    """GET /ready: (status, body) with its ``asyncssh_patches`` report checked (asyncssh's
    version, ``mode``, and every patch either active or named with a reason) and removed."""
    import asyncssh

    code, body = get_json(port, "/ready")
    patches = body.pop("asyncssh_patches")
    assert patches["asyncssh"] == asyncssh.__version__ and patches["mode"] == mode, patches
    assert patches["active"] or patches["not_applied"], patches
    return code, body
