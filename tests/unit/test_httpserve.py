"""httpserve: keep-alive and pipelining, HEAD, malformed requests, idle connections, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from container_desktop_relay.observability.httpserve import (
    HttpServer,
    Request,
    Response,
    json_response,
)


def _handler(request: Request) -> Response:
    if request.path == "/boom":
        raise RuntimeError("handler bug")
    return json_response({"path": request.path, "q": request.query,
                          "accept": request.headers.get("accept", "")})


@pytest_asyncio.fixture
async def server() -> AsyncIterator[tuple[HttpServer, int]]:
    srv = HttpServer(_handler, idle_timeout=0.5)
    port = await srv.start("127.0.0.1", 0)
    try:
        yield srv, port
    finally:
        await srv.close()


async def _exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw``, read until the server closes (bounded by a deadline)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


@pytest.mark.asyncio
async def test_pipelined_requests_then_close(server: tuple[HttpServer, int]) -> None:
    """Two pipelined requests on one connection both answer; Connection: close ends it."""
    _, port = server
    raw = (b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\nAccept: text/plain\r\n\r\n"
           b"GET /b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    out = await _exchange(port, raw)
    assert out.count(b"HTTP/1.1 200 ") == 2
    assert b'"path": "/a", "q": {"x": "1"}, "accept": "text/plain"' in out
    assert b'"path": "/b"' in out


@pytest.mark.asyncio
async def test_head_has_headers_but_no_body(server: tuple[HttpServer, int]) -> None:
    _, port = server
    out = await _exchange(port, b"HEAD /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: " in head and body == b""


@pytest.mark.asyncio
@pytest.mark.parametrize("raw", [
    b"NOT HTTP AT ALL\r\n\r\n",
    b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
    b"GET /x HTTP/1.1\r\nX-Big: " + b"a" * 40000,  # a head that never ends: not buffered on
], ids=["garbage", "bad-header", "endless-head"])
async def test_malformed_requests_get_4xx_and_close(server: tuple[HttpServer, int],
                                                    raw: bytes) -> None:
    _, port = server
    out = await _exchange(port, raw)
    assert out.startswith(b"HTTP/1.1 4"), out[:80]
    assert b'"error"' in out


@pytest.mark.asyncio
async def test_handler_failure_is_500_and_server_keeps_serving(
        server: tuple[HttpServer, int]) -> None:
    _, port = server
    out = await _exchange(port, b"GET /boom HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 500 ")
    out = await _exchange(port, b"GET /ok HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 ")


@pytest.mark.asyncio
async def test_idle_connection_is_closed(server: tuple[HttpServer, int]) -> None:
    """A client that connects and sends nothing (or half a request) is dropped."""
    srv, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /slow HTTP/1.1\r\n")
    try:
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()
    assert not srv.connections or all(c.transport is None or c.transport.is_closing()
                                      for c in srv.connections)


@pytest.mark.asyncio
async def test_close_drops_open_connections() -> None:
    srv = HttpServer(_handler)
    port = await srv.start("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
    await srv.close()
    try:
        await asyncio.wait_for(reader.read(), 5)  # rest of the body, then EOF
        assert reader.at_eof()
    finally:
        writer.close()
