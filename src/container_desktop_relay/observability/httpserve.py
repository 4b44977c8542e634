"""A small HTTP/1.1 server for the observability endpoints: h11 parses, asyncio carries bytes.

aiohttp's server made every role 13.5 MB bigger for three GET endpoints; h11 (the sans-I/O
HTTP/1.1 state machine httpcore and Hypercorn build on) costs under 1 MB. Requests are
answered synchronously by a handler, keep-alive and pipelining follow h11's state machine,
malformed requests get a 4xx and the connection is closed, and idle connections are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11

from container_desktop_relay.log import get_logger

__all__ = ["HttpServer", "Request", "Response", "json_response"]

log = get_logger(__name__)

#: A connection that completes no request for this long is closed.
IDLE_TIMEOUT = 30.0
#: Largest request head accepted (request line plus headers).
MAX_HEAD = 16 * 1024
JSON_TYPE = "application/json; charset=utf-8"


@dataclass(slots=True)
class Request:
    """One parsed request: method, path, query parameters (first value) and headers."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names


@dataclass(slots=True)
class Response:
    """What a handler answers: status, headers and body (Content-Length is added)."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response (UTF-8)."""
    return Response(status, json.dumps(data).encode(),
                    {"Content-Type": JSON_TYPE, **(headers or {})})


Handler = Callable[[Request], Response]


class _Connection(asyncio.Protocol):
    """One HTTP client connection, driven by an h11 state machine."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.transport: asyncio.Transport | None = None
        self.request: h11.Request | None = None
        self._idle: asyncio.TimerHandle | None = None

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        self.http.receive_data(data)
        self._arm_idle()
        self._process()

    def eof_received(self) -> bool:
        self.http.receive_data(b"")
        self._process()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()

    # h11
    def _process(self) -> None:
        while self.transport is not None and not self.transport.is_closing():
            try:
                event = self.http.next_event()
            except h11.RemoteProtocolError as exc:
                self._fail(exc.error_status_hint, str(exc))
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self.request = event
            elif isinstance(event, h11.EndOfMessage):
                self._respond()
            elif isinstance(event, h11.ConnectionClosed):
                self.transport.close()
                return
            # h11.Data: a request body; these endpoints take none, so it is read and dropped.

    def _respond(self) -> None:
        assert self.request is not None
        method = self.request.method.decode("ascii", "replace")
        target = urlsplit(self.request.target.decode("latin-1"))
        query = {k: v[0] for k, v in parse_qs(target.query).items()}
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in self.request.headers}
        try:
            response = self.server.handler(Request(method, target.path, query, headers))
        except Exception:
            log.exception("http_handler_failed", extra={"path": target.path})
            response = json_response({"error": "Internal Server Error"}, 500)
        self._send(response, body=method != "HEAD")
        if self.http.our_state is h11.MUST_CLOSE:
            self._close()
            return
        with contextlib.suppress(h11.LocalProtocolError):  # the client has not finished
            self.http.start_next_cycle()

    def _send(self, response: Response, *, body: bool = True) -> None:
        assert self.transport is not None
        headers = [(k, v) for k, v in response.headers.items()]
        headers.append(("Content-Length", str(len(response.body))))
        out = self.http.send(h11.Response(status_code=response.status, headers=headers))
        if body and response.body:
            out += self.http.send(h11.Data(data=response.body))
        out += self.http.send(h11.EndOfMessage())
        self.transport.write(out)

    def _fail(self, status: int, why: str) -> None:
        """Answer a request h11 could not parse (when a response can still be sent), close."""
        if self.http.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            with contextlib.suppress(h11.LocalProtocolError):
                self._send(json_response({"error": why}, status, {"Connection": "close"}))
        self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(self.server.idle_timeout,
                                                           self._close)


class HttpServer:
    """Serves ``handler`` on one TCP address; :meth:`close` drops every connection."""

    def __init__(self, handler: Handler, *, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host``:``port`` (0: any free port); return the bound port."""
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Connection(self), host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and close open connections (responses are written already)."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn._close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
