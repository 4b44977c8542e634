"""Parse the client's ``--ssh-connection ssh://user@host:port/remote/socket/path``, and the
rule every remote socket path obeys whatever the server's configuration (server and client share
it, so a path the server would refuse stops the client at start)."""

from __future__ import annotations

import getpass
import posixpath
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from container_desktop_relay.errors import ConfigError

__all__ = ["DEFAULT_REMOTE_SOCKET", "SSHTarget", "explicit_port", "has_socket_path",
           "parse_ssh_url", "socket_path_problem"]

DEFAULT_REMOTE_SOCKET = "/var/run/docker.sock"
#: A Windows drive path, as a URL carries it (``/C:\Users\me\docker.sock``) or bare (``C:/x``).
_DRIVE = re.compile(r"/?([A-Za-z]):(?:[\\/](.*))?")


@dataclass(frozen=True, slots=True)
class SSHTarget:
    """Where the client connects and which remote socket its channels open."""

    user: str
    host: str
    port: int
    socket_path: str

    def __str__(self) -> str:
        """The URL; without a socket path (a client with --forward) it names the server only."""
        return f"ssh://{self.user}@{self.host}:{self.port}{self.socket_path}"


def socket_path_problem(path: str) -> str | None:
    """Why the server refuses the socket path ``path`` whatever its configuration (None when
    it does not); what is allowed is part of the answer.

    A socket path holds no NUL byte, is a Linux path (no backslash, no drive letter), absolute
    and normalized (no ``.`` or ``..`` component, no ``//``, no trailing ``/``). The server
    applies this rule (then its ``--allow-socket`` globs) to every channel; the client applies
    it to its remote paths at start. Pure: no I/O.
    """
    if "\x00" in path:
        return "socket path contains a NUL byte"
    shown = f"'{path}'" if path.isprintable() else repr(path)
    drive = _DRIVE.fullmatch(path)
    if drive is not None or "\\" in path:
        like = "with '/' between its components"
        if drive is not None:
            linux = posixpath.normpath(f"/mnt/{drive.group(1).lower()}/"
                                       + (drive.group(2) or "").replace("\\", "/"))
            like = f"like '{linux}' (WSL's usual name for it)"
        return (f"socket path {shown} is a Windows path: it must be the Linux path on the "
                f"server, {like}")
    if not path.startswith("/"):
        return (f"socket path {shown} is not absolute: it must be absolute, like "
                f"{'/' + posixpath.normpath(path).lstrip('/')!r}")
    if posixpath.normpath(path) != path or path.startswith("//"):
        return (f"socket path {shown} is not normalized (no '.', '..' or '//' allowed): it "
                f"must be normalized, like {'/' + posixpath.normpath(path).lstrip('/')!r}")
    return None


def parse_ssh_url(text: str, *, default_port: int) -> SSHTarget:
    """Parse an ``ssh://`` URL; user defaults to the login name, port to ``default_port`` (the
    client passes its ``--port``), path to /var/run/docker.sock.

    Raises:
        ConfigError: not an ssh:// URL, bad port, empty host, or a socket path the server
            refuses by rule (:func:`socket_path_problem`).
    """
    allowed = "must look like ssh://user@host:port/remote/socket/path"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ConfigError(f"invalid ssh_connection={text}: bad port; {allowed}") from None
    if parts.scheme != "ssh" or not parts.hostname:
        raise ConfigError(f"invalid ssh_connection={text}: {allowed}")
    if parts.query or parts.fragment:
        raise ConfigError(f"invalid ssh_connection={text}: no query or fragment allowed; {allowed}")
    user = unquote(parts.username) if parts.username else getpass.getuser()
    path = unquote(parts.path) or DEFAULT_REMOTE_SOCKET
    if problem := socket_path_problem(path):
        raise ConfigError(f"invalid ssh_connection={text}: {problem}; the server would refuse "
                          "it on every connection")
    if port == 0:
        raise ConfigError(f"invalid ssh_connection={text}: port must be 1-65535")
    return SSHTarget(user=user, host=parts.hostname, port=port or default_port, socket_path=path)


def explicit_port(text: str) -> int | None:
    """The port the ``ssh://`` URL ``text`` names (None when it names none, or is malformed)."""
    try:
        return urlsplit(text).port
    except ValueError:
        return None


def has_socket_path(text: str) -> bool:
    """Whether the ``ssh://`` URL ``text`` names a remote socket path (anything after the port)."""
    try:
        return bool(urlsplit(text).path)
    except ValueError:
        return False
