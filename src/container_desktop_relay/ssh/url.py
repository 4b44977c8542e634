"""Parse the client's ``--ssh-connection ssh://user@host:port/remote/socket/path``."""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from container_desktop_relay.errors import ConfigError

__all__ = ["DEFAULT_REMOTE_SOCKET", "SSHTarget", "has_socket_path", "parse_ssh_url"]

DEFAULT_REMOTE_SOCKET = "/var/run/docker.sock"


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


def parse_ssh_url(text: str, *, default_port: int = 22) -> SSHTarget:
    """Parse an ``ssh://`` URL; user defaults to the login name, path to /var/run/docker.sock.

    Raises:
        ConfigError: not an ssh:// URL, bad port, or empty host.
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
    if not path.startswith("/"):
        raise ConfigError(f"invalid ssh_connection={text}: socket path must be absolute")
    if port == 0:
        raise ConfigError(f"invalid ssh_connection={text}: port must be 1-65535")
    return SSHTarget(user=user, host=parts.hostname, port=port or default_port, socket_path=path)


def has_socket_path(text: str) -> bool:
    """Whether the ``ssh://`` URL ``text`` names a remote socket path (anything after the port)."""
    try:
        return bool(urlsplit(text).path)
    except ValueError:
        return False
