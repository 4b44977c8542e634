"""The client's forwards: which local endpoint carries connections to which remote socket.

``--forward LOCAL=REMOTE`` (repeatable; ``CDR_FORWARD`` comma-separated; config key ``forward``,
a JSON array) lists them; without it the spec's single form (``--named-pipe`` or ``--listen``
plus the socket path of ``--ssh-connection``) is the one forward. Parsing and checking only,
no I/O.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING

from container_desktop_relay.endpoints import Endpoint, parse_endpoint
from container_desktop_relay.errors import ConfigError
from container_desktop_relay.ssh.url import (
    DEFAULT_REMOTE_SOCKET,
    has_socket_path,
    parse_ssh_url,
    socket_path_problem,
)

if TYPE_CHECKING:
    from container_desktop_relay.config import Config

__all__ = ["Forward", "client_forwards", "parse_forward", "remote_path_problem"]

_ALLOWED = ("must be LOCAL=REMOTE with LOCAL unix:///path or npipe:////./pipe/NAME and REMOTE "
            "an absolute, normalized socket path on the server")


@dataclass(frozen=True, slots=True)
class Forward:
    """One local endpoint and the remote Unix socket its connections are carried to."""

    endpoint: Endpoint
    remote: str

    @property
    def name(self) -> str:
        """How logs, metrics and messages name this forward: its local endpoint URL."""
        return self.endpoint.url

    def __str__(self) -> str:
        return f"{self.endpoint.url}={self.remote}"


def remote_path_problem(path: str) -> str:
    """Why ``path`` is no remote socket path ("" when the server's rule allows it:
    :func:`~container_desktop_relay.ssh.url.socket_path_problem`)."""
    return socket_path_problem(path) or ""


def parse_forward(text: str, source: str = "--forward") -> Forward:
    """Parse one ``LOCAL=REMOTE``; the separator is the first ``=`` before a ``/``.

    Raises:
        ConfigError: one line naming the value, where it came from and what is allowed.
    """
    def bad(why: str) -> ConfigError:
        return ConfigError(f"invalid forward={text} from {source} ({why}): {_ALLOWED}")

    cut = text.find("=/")
    if cut <= 0:
        cut = text.find("=")
        if cut <= 0:
            raise bad("no LOCAL=REMOTE")
    local, remote = text[:cut].strip(), text[cut + 1:].strip()
    try:
        endpoint = parse_endpoint(local)
    except ConfigError as exc:
        raise bad(str(exc)) from None
    problem = remote_path_problem(remote)
    if problem:
        raise bad(problem)
    return Forward(endpoint, remote)


def _key(endpoint: Endpoint) -> tuple[str, str]:
    """Endpoints that name the same address (pipe names ignore case, as Windows does)."""
    if endpoint.scheme == "npipe":
        return endpoint.scheme, endpoint.address.lower()
    return endpoint.scheme, posixpath.normpath(endpoint.address)


def client_forwards(config: Config) -> list[Forward]:
    """Every forward of the client, in the order given.

    Raises:
        ConfigError: a malformed forward, a duplicate local endpoint, a relative or
            non-normalized remote path, or ``--forward`` mixed with the single form.
    """
    if not config.forward:
        remote = (parse_ssh_url(config.ssh_connection, default_port=config.port).socket_path
                  if config.ssh_connection
                  else DEFAULT_REMOTE_SOCKET)
        return [Forward(parse_endpoint(config.listen or config.named_pipe), remote)]
    source = config.source_of("forward") or "--forward"
    single = [key for key in ("listen", "named_pipe") if config.source_of(key) is not None]
    if config.listen and "listen" not in single:
        single.append("listen")
    if single:
        flag = "--" + single[0].replace("_", "-")
        raise ConfigError(f"invalid {single[0]} with forward from {source}: {flag} and "
                          "--forward cannot be combined; give that endpoint as one more "
                          "--forward LOCAL=REMOTE")
    if config.ssh_connection and has_socket_path(config.ssh_connection):
        raise ConfigError(f"invalid ssh_connection={config.ssh_connection} with forward from "
                          f"{source}: each --forward names its remote socket, so "
                          "--ssh-connection must not (use ssh://user@host:port)")
    forwards: list[Forward] = []
    seen: dict[tuple[str, str], str] = {}
    for text in config.forward:
        fwd = parse_forward(text, source)
        key = _key(fwd.endpoint)
        if key in seen:
            raise ConfigError(f"invalid forward={text} from {source} (its local endpoint is "
                              f"already used by forward={seen[key]}): each local endpoint "
                              "may appear once")
        seen[key] = text
        forwards.append(fwd)
    return forwards
