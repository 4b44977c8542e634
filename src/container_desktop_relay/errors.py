"""User-facing errors: one tree, each with a message fit to print as one line.

    RelayError
     ├── ConfigError          bad flag, env var, config file value (exit 2)
     ├── KeyFileError         missing/unsafe/unparsable key, authorized_keys, known_hosts
     ├── EndpointError
     │    ├── ListenError     cannot listen (address in use, live socket owner)
     │    │    └── UnusableEndpoint  never listenable as configured: also a ConfigError
     │    └── TargetError     cannot reach the target Unix socket
     ├── NotServed            `status`: no relay's endpoints answer where it asked (exit 2)
     └── TunnelError
          ├── HostKeyMismatch server key differs from the pinned one
          ├── HostKeyUnknown  --secure-host-key and no pinned key
          ├── AuthenticationRefused the server refused the client's key
          └── TunnelUnavailable SSH link could not be established
"""

from __future__ import annotations

__all__ = [
    "SERVER_DRAINING",
    "AuthenticationRefused",
    "ConfigError",
    "EndpointError",
    "HostKeyMismatch",
    "HostKeyUnknown",
    "KeyFileError",
    "ListenError",
    "NotServed",
    "RelayError",
    "TargetError",
    "TunnelError",
    "TunnelUnavailable",
    "UnusableEndpoint",
]


#: The reason a draining server gives when it refuses a channel; a client relay that reads it
#: stops being ready and retries the connection on its next link instead of failing it.
SERVER_DRAINING = "server is shutting down"

class RelayError(Exception):
    """Root of every error this program reports to its user."""

    exit_code = 1


class ConfigError(RelayError):
    """A configuration value (flag, environment, file) is invalid."""

    exit_code = 2


class KeyFileError(RelayError):
    """A key or key-list file is missing, unsafe or unparsable."""

    exit_code = 2


class EndpointError(RelayError):
    """A local endpoint (socket, pipe, port) cannot be used."""


class ListenError(EndpointError):
    """Listening on a socket, pipe or port failed."""


class UnusableEndpoint(ListenError, ConfigError):
    """The configured endpoint can never be listened on here (its directory does not exist, a
    named pipe off Windows): an input mistake, exit 2, unlike a port someone else holds."""

    exit_code = 2


class TargetError(EndpointError):
    """The forwarded-to Unix socket cannot be reached."""


class NotServed(RelayError):
    """``status`` found no endpoints of this relay to ask (nothing answers, or another's)."""

    exit_code = 2


class TunnelError(RelayError):
    """The SSH link cannot be established or was refused."""


class HostKeyMismatch(TunnelError):
    """The server presented a host key that differs from the recorded one."""


class HostKeyUnknown(TunnelError):
    """Strict host-key checking is on and the server's key is not recorded."""


class TunnelUnavailable(TunnelError):
    """The SSH server could not be reached or authentication failed."""


class AuthenticationRefused(TunnelError):
    """The SSH server refused the client's identity key."""
