"""``doctor``'s steps on the local side and what every step shares.

The local endpoint is checked end to end (its owner and mode, then ``GET /_ping`` through the
client, the server and the engine), the observability endpoints at the ports
:func:`~container_desktop_relay.observability.ports.endpoint_ports` plans; :class:`Failed`
carries what a step found and its fix. The SSH-side steps are methods of
:class:`~container_desktop_relay.commands.doctor.Doctor`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import sys
from typing import Any

from container_desktop_relay.config import Config
from container_desktop_relay.endpoints import Endpoint
from container_desktop_relay.observability.ports import endpoint_ports, query_host
from container_desktop_relay.runtime.state import SERVER_UNAVAILABLE

__all__ = ["PING", "Failed", "check_endpoint", "check_observability", "mode_problem",
           "ping_pipe", "ping_stream", "reason_of"]

PING = b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n"


class Failed(Exception):
    """A check failed: ``detail`` is what was found, ``fix`` what to do about it."""

    def __init__(self, detail: str, fix: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fix = fix


async def ping_stream(reader: Any, writer: Any, timeout: float) -> str:
    """Send ``GET /_ping`` on an open stream; return "" when the answer is 200 ``OK``.

    Reads one HTTP response (headers, then Content-Length bytes or up to EOF), so a peer that
    keeps the connection open is fine; one that does not answer HTTP is told apart at once.

    Returns:
        A short description of the wrong answer otherwise.
    """
    writer.write(PING)
    data = b""
    async with asyncio.timeout(timeout):
        while b"\r\n\r\n" not in data and len(data) < 65536:
            chunk = await reader.read(65536)
            if not chunk:
                break
            data += chunk
            if len(data) >= 5 and not data.startswith(b"HTTP/"):
                return f"answered {data[:40].decode('latin-1')!r}, not HTTP,"
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next((int(v) for k, _, v in (ln.partition(":") for ln in lines[1:])
                       if k.strip().lower() == "content-length" and v.strip().isdigit()), None)
        while head and (length is None or len(body) < length) and len(body) < 65536:
            chunk = await reader.read(65536)
            if not chunk:
                break
            body += chunk
    if not data:
        return "closed the connection without an answer"
    status = lines[0]
    if status.split(" ")[1:2] == ["200"] and body.strip() == b"OK":
        return ""
    return f"answered {status!r} {body[:40]!r} instead of 200 OK"


def mode_problem(path: str) -> str:
    """What is wrong with the owner or mode of the socket ``path`` ("" when nothing is)."""
    st = os.stat(path)
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"is owned by uid {st.st_uid}, not by you (uid {os.getuid()})"
    mode = stat.S_IMODE(st.st_mode)
    if os.name == "posix" and mode & 0o077:
        return f"has mode {mode:04o}; it must be 0600"
    return ""


def reason_of(exc: BaseException) -> str:
    """A short reason for a failed network step."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


async def check_endpoint(endpoint: Endpoint, start: str, timeout: float) -> str:
    """``endpoint`` is the client's (a socket of yours, mode 0600) and answers GET /_ping end
    to end; ``start`` is the fix that starts the client."""
    if endpoint.scheme == "npipe":
        if sys.platform != "win32":
            raise Failed(f"{endpoint.url} is a Windows named pipe; this is not Windows",
                         "check a Unix socket instead: --listen unix:///path/relay.sock")
        return await ping_pipe(endpoint.address, start, timeout)
    path = endpoint.address
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise Failed(f"{path} does not exist (no client is running)", start) from None
    if not stat.S_ISSOCK(st.st_mode):
        raise Failed(f"{path} is not a socket", f"remove {path}, then {start}")
    if sys.platform == "win32":
        raise Failed(f"{path} is a Unix socket; the Windows build checks named pipes",
                     "check the pipe instead: --listen npipe:////./pipe/NAME")
    try:
        reader, writer = await asyncio.open_unix_connection(path)
    except ConnectionRefusedError:
        raise Failed(f"{path} is a stale socket file: nothing listens on it",
                     f"{start} (it replaces the stale file)") from None
    except OSError as exc:
        raise Failed(f"cannot connect to {path}: {reason_of(exc)}", start) from None
    try:
        wrong = await ping_stream(reader, writer, timeout)
    finally:
        writer.close()
    problem = mode_problem(path)
    if problem:
        raise Failed(f"{path} {problem}",
                     f"chmod 600 {path} (a current client creates it 0600), or restart "
                     "the client as the owner")
    if wrong:
        raise Failed(f"{path} {wrong} to GET /_ping end to end",
                     "see the client's log (connection_closed events) and the checks "
                     "above")
    return f"{path} is yours, mode 0600, and answers GET /_ping end to end"

async def ping_pipe(address: str, start: str, timeout: float) -> str:
    """Open the named pipe as a client (proactor loop) and ping through it."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    protocol = asyncio.StreamReaderProtocol(reader)
    create = getattr(loop, "create_pipe_connection", None)
    if create is None:
        raise Failed("this event loop cannot open named pipes",
                     "run doctor with the default (proactor) event loop on Windows")
    try:
        transport, _ = await create(lambda: protocol, address)
    except FileNotFoundError:
        raise Failed(f"{address} does not exist (no client is running)", start) from None
    except OSError as exc:
        if getattr(exc, "winerror", None) == 231:  # ERROR_PIPE_BUSY
            raise Failed(f"{address}: All pipe instances are busy",
                         "the client is not accepting: see its log, restart it") from None
        raise Failed(f"cannot open {address}: {reason_of(exc)}", start) from None
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    try:
        wrong = await ping_stream(reader, writer, timeout)
    finally:
        writer.close()
    if wrong:
        raise Failed(f"{address} {wrong} to GET /_ping end to end",
                     "see the client's log (connection_closed events) and the checks "
                     "above")
    return f"{address} answers GET /_ping end to end"


async def check_observability(cfg: Config, timeout: float) -> str:
    """The client's endpoints answer; a default port taken by something else only means
    they are not served (the client relays on), so that is no failure."""
    host = query_host(cfg.health_check_host)
    ports = endpoint_ports(cfg, "client")
    wanted = ports.urls()  # (port, path, set explicitly)
    if not wanted:
        return "not enabled for the client (--health-check-enabled, --metrics-enabled)"
    unknown = sorted({path for port, path, _ in wanted if port == 0})
    checked = [(host, port, path, explicit) for port, path, explicit in wanted if port != 0]
    answered, unserved = await _get_all(checked, ports.ssh_port, timeout)
    parts = []
    if answered:
        parts.append(", ".join(answered) + " answer 200")
    if unserved:
        parts.append(", ".join(unserved) + " not served (default port taken: the client "
                     "logs observability_port_in_use and relays on)")
    if unknown:
        parts.append(f"{', '.join(unknown)} not checked: port 0 means any free port, pass "
                     "the bound one (log event observability_listening) as "
                     "--health-check-port / --metrics-port")
    return "; ".join(parts) if parts else "nothing to check"

async def _get_all(urls: list[tuple[str, int, str, bool]], ssh_port: int,
                   timeout: float) -> tuple[list[str], list[str]]:
    """GET each (host, port, path): (URLs that answered 200, default-port ones that are not
    served). /ready comes first: it names the relay, so its port's other paths follow it.

    Raises:
        Failed: an explicitly set port does not answer (or answers for another relay), or
            an endpoint answers with an error status.
    """
    import aiohttp

    answered: list[str] = []
    unserved: list[str] = []
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        elsewhere: set[int] = set()  # default ports held by someone else
        for host, port, path, explicit in urls:
            url = f"http://{host}:{port}{path}"
            if port in elsewhere:
                unserved.append(url)
                continue
            body: Any = None
            try:
                async with session.get(url) as response:
                    status = response.status
                    with contextlib.suppress(ValueError, aiohttp.ClientError):
                        body = await response.json(content_type=None)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                if not explicit:
                    elsewhere.add(port)
                    unserved.append(url)
                    continue
                raise Failed(f"{url} does not answer: {reason_of(exc)}",
                             "check --health-check-port/--metrics-port match the running "
                             "client, and that it was started with them enabled") from None
            other = body.get("ssh_port") if isinstance(body, dict) else None
            if isinstance(other, int) and other != ssh_port:
                if not explicit:
                    elsewhere.add(port)
                    unserved.append(url)
                    continue
                raise Failed(f"{url} answers for the relay on SSH port {other}, not "
                             f"{ssh_port}",
                             "give this client its own --health-check-port / "
                             "--metrics-port, or leave them unset")
            reason = body.get("reason") if isinstance(body, dict) else None
            if status != 200 and isinstance(body, dict) and body.get("state") == (
                    SERVER_UNAVAILABLE):
                raise Failed(f"{url} answered {status}: {reason}",
                             "the server the client spawns through wsl.exe exits at once: "
                             "its messages are logged as server_output; check that "
                             "--distribution names an installed distribution (wsl -l -v) "
                             "and that --relay-program-path runs there")
            if status != 200:
                raise Failed(f"{url} answered {status}"
                             + (f" ({reason})" if reason else ""),
                             "/ready is 503 while the SSH link is down and /health 503 "
                             "when degraded: see the client's log and the checks above")
            answered.append(url)
    return answered, unserved
