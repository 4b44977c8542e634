"""Prometheus exposition of a role's live counters, via the official prometheus_client library.

:class:`RelayCollector` reads :class:`~container_desktop_relay.observability.metrics.Metrics` and
:class:`~container_desktop_relay.runtime.state.RoleState` at scrape time: there is no second set of
counters to keep in step. :func:`render` picks the text format (0.0.4) or OpenMetrics from the
request's Accept header with prometheus_client's own negotiation.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from container_desktop_relay._version import __version__
from container_desktop_relay.observability.metrics import Histogram, Metrics
from container_desktop_relay.runtime.state import RoleState

__all__ = ["ERROR_KINDS", "RelayCollector", "make_registry", "render"]

#: the ``kind`` label values of ``cdr_errors_total`` (always all present, so rates work from 0).
ERROR_KINDS = ("connection", "socket", "other")


def _le(bound: float) -> str:
    """A bucket bound as Prometheus writes it: "0.005", "1.0", "+Inf"."""
    return "+Inf" if bound == math.inf else repr(float(bound))


def _histogram(name: str, doc: str, role: str, hist: Histogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["role"])
    buckets = [(_le(bound), float(n)) for bound, n in hist.cumulative()]
    family.add_metric([role], buckets, hist.total)
    return family


class RelayCollector(Collector):
    """Turns one role's Metrics and RoleState into Prometheus metric families at scrape time."""

    def __init__(self, metrics: Metrics, state: RoleState) -> None:
        self.metrics = metrics
        self.state = state

    def collect(self) -> Iterator[Metric]:
        """Yield every ``cdr_*`` family; O(active connections) for the live byte counts."""
        m = self.metrics
        snap = m.snapshot()
        role = snap.role

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=["role"])
            family.add_metric([role], value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=["role"])
            family.add_metric([role], value)
            return family

        info = GaugeMetricFamily("cdr_build_info", "Relay version and role (always 1).",
                                 labels=["role", "version"])
        info.add_metric([role, __version__], 1)
        yield info
        yield gauge("cdr_up", "1 while the role is running.", 1)
        yield gauge("cdr_ready", "1 when the role can serve a new connection now (/ready 200).",
                    1 if self.state.ready else 0)
        yield gauge("cdr_draining", "1 once graceful shutdown has begun.",
                    1 if self.state.draining else 0)
        if self.state.link_up is not None:
            yield gauge("cdr_link_up", "Client role: 1 while the SSH link to the server is up.",
                        1 if self.state.link_up else 0)
        yield gauge("cdr_uptime_seconds", "Seconds since the role started.", snap.uptime)
        yield counter("cdr_connections_total", "Forwarded connections accepted.",
                      snap.total_connections)
        yield gauge("cdr_active_connections", "Forwarded connections open now.",
                    snap.active_connections)
        yield counter("cdr_bytes_read_total",
                      "Bytes read from the client side of forwarded connections (requests "
                      "toward the engine).", snap.total_bytes_read)
        yield counter("cdr_bytes_written_total",
                      "Bytes written to the client side of forwarded connections (responses "
                      "from the engine).", snap.total_bytes_written)
        errors = CounterMetricFamily("cdr_errors_total", "Errors by kind: connection (SSH "
                                     "level), socket (local socket/pipe), other.",
                                     labels=["role", "kind"])
        for kind, value in zip(ERROR_KINDS, (m.connection_errors, m.socket_errors,
                                             m.other_errors), strict=True):
            errors.add_metric([role, kind], value)
        yield errors
        if m.forward_connections:
            forwards = CounterMetricFamily("cdr_forward_connections", "Client role: forwarded "
                                           "connections accepted per forward (local endpoint).",
                                           labels=["role", "forward"])
            for name, value in m.forward_connections.items():
                forwards.add_metric([role, name], value)
            yield forwards
        yield _histogram("cdr_connection_duration_seconds",
                         "Lifetime of finished forwarded connections.", role, m.duration_hist)
        yield _histogram("cdr_channel_open_latency_seconds",
                         "Time to open the SSH channel / target socket of a new connection.",
                         role, m.open_latency_hist)
        yield gauge("cdr_asyncio_tasks", "asyncio tasks alive in the relay (leak detection).",
                    _task_count())


def _task_count() -> int:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # collected outside the event loop (tests)
        return 0


def make_registry(metrics: Metrics, state: RoleState, *, process: bool = True) -> CollectorRegistry:
    """A registry holding the relay collector (and the standard process collector)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(metrics, state))
    if process:
        ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """Exposition bytes and their Content-Type: OpenMetrics when ``accept`` asks, else text."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type
