"""Local endpoints of the client: parse ``unix://`` / ``npipe://`` URLs and listen by scheme.

The listener for a scheme is chosen here and nowhere else. ``unix://`` is served by
:mod:`.unix` on every platform whose event loop supports Unix sockets; ``npipe://`` by
``endpoints/npipe.py``, which exists only for Windows and is imported only there.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote

from container_desktop_relay.errors import ConfigError, ListenError, UnusableEndpoint

__all__ = ["Endpoint", "Listener", "open_listener", "parse_endpoint", "require_available"]

#: Linux's sun_path holds 108 bytes including the terminating NUL.
MAX_UNIX_PATH = 107
_PIPE_PREFIX = "\\\\.\\pipe\\"
_ALLOWED = "must be unix:///absolute/path.sock or npipe:////./pipe/NAME"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A parsed local endpoint: its scheme, its OS-level address, and the URL it came from."""

    scheme: str  # "unix" | "npipe"
    address: str  # /path/relay.sock, or \\.\pipe\NAME
    url: str

    def __str__(self) -> str:
        return self.url


class Listener(Protocol):
    """A started listener; closing it stops accepting and releases its address."""

    def close(self) -> None:
        """Stop accepting and release the address (remove the socket file)."""


def parse_endpoint(url: str) -> Endpoint:
    """Parse a ``--listen`` / ``--named-pipe`` URL.

    Raises:
        ConfigError: an unknown scheme, a relative or over-long socket path, a bad pipe name.
    """
    text = url.strip()
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("unix", "npipe"):
        raise ConfigError(f"invalid endpoint {url!r}: {_ALLOWED}")
    if "?" in rest or "#" in rest:
        raise ConfigError(f"invalid endpoint {url!r}: no query or fragment allowed; {_ALLOWED}")
    if scheme == "unix":
        path = unquote(rest)
        if not path.startswith("/"):
            raise ConfigError(
                f"invalid endpoint {url!r}: the socket path must be absolute "
                "(unix:///path/relay.sock has three slashes)"
            )
        if "\x00" in path:
            raise ConfigError(f"invalid endpoint {url!r}: the socket path contains a NUL byte")
        if len(path.encode()) > MAX_UNIX_PATH:
            raise ConfigError(
                f"invalid endpoint {url!r}: the socket path is {len(path.encode())} bytes, "
                f"longer than the {MAX_UNIX_PATH} a Unix socket address can hold"
            )
        return Endpoint("unix", path, text)
    return Endpoint("npipe", _pipe_name(url, unquote(rest)), text)


def _pipe_name(url: str, rest: str) -> str:
    """``//./pipe/NAME`` (or with backslashes) as ``\\\\.\\pipe\\NAME``."""
    name = rest.replace("/", "\\")
    if not name.lower().startswith(_PIPE_PREFIX):
        raise ConfigError(f"invalid endpoint {url!r}: a named pipe is npipe:////./pipe/NAME")
    leaf = name[len(_PIPE_PREFIX):]
    if not leaf or len(name) > 256:
        raise ConfigError(
            f"invalid endpoint {url!r}: the pipe name must be 1 to "
            f"{256 - len(_PIPE_PREFIX)} characters"
        )
    return _PIPE_PREFIX + leaf


def require_available(endpoint: Endpoint) -> None:
    """Refuse an endpoint whose kind this platform lacks (a named pipe off Windows).

    Raises:
        UnusableEndpoint: exit status 2, naming the ``--listen`` that works here.
    """
    if endpoint.scheme == "npipe" and sys.platform != "win32":
        raise UnusableEndpoint(
            f"cannot listen on {endpoint}: named pipes exist only on Windows; "
            "use --listen unix:///path/relay.sock here"
        )
    if endpoint.scheme == "unix" and sys.platform == "win32":
        raise UnusableEndpoint(
            f"cannot listen on {endpoint}: the Windows build listens on named pipes only; "
            "use --listen npipe:////./pipe/NAME"
        )


async def open_listener(
    endpoint: Endpoint,
    protocol_factory: Callable[[], asyncio.Protocol],
    *,
    buffer_size: int,
) -> Listener:
    """Listen on ``endpoint``; each accepted connection gets a protocol from the factory.

    Raises:
        ListenError: the address is owned by a live listener, cannot be bound, or the
            scheme is not available on this platform (:class:`UnusableEndpoint`, exit 2).
    """
    require_available(endpoint)
    if endpoint.scheme == "unix":
        from container_desktop_relay.endpoints.unix import start_unix_listener

        return await start_unix_listener(endpoint.address, protocol_factory,
                                          buffer_size=buffer_size)
    if sys.platform == "win32":
        from container_desktop_relay.endpoints.npipe import start_npipe_listener

        return await start_npipe_listener(endpoint.address, protocol_factory,
                                          buffer_size=buffer_size)
    raise ListenError(f"cannot listen on {endpoint}: no listener for this scheme here")
