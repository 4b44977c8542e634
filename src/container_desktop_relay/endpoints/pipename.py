"""Named-pipe names and the pipe's access policy as text; pure functions, usable on any platform."""

from __future__ import annotations

from container_desktop_relay.errors import ListenError

__all__ = ["PIPE_PREFIX", "pipe_path", "pipe_sddl"]

PIPE_PREFIX = "\\\\.\\pipe\\"


def pipe_path(address: str) -> str:
    r"""The Win32 path (``\\.\pipe\NAME``) of a pipe given as ``npipe:////./pipe/NAME`` or a path.

    Raises:
        ListenError: the address names no pipe, or a pipe on another machine.
    """
    text = address
    if text.lower().startswith("npipe:"):
        text = text[len("npipe:"):]
    text = text.replace("/", "\\")
    if not text.startswith("\\\\") or text.lower()[:9] != PIPE_PREFIX:
        if text.startswith("\\\\") and not text.startswith("\\\\.\\"):
            raise ListenError(
                f"named pipe {address!r} is on another machine; a relay can only create "
                "pipes on this one (\\\\.\\pipe\\NAME)"
            )
        raise ListenError(
            f"{address!r} is not a named pipe: use npipe:////./pipe/NAME or \\\\.\\pipe\\NAME"
        )
    name = text[len(PIPE_PREFIX):]
    if not name or len(text) > 256:
        raise ListenError(f"named pipe {address!r} has an empty or too long name (max 256)")
    return PIPE_PREFIX + name


def pipe_sddl(user_sid: str) -> str:
    """The pipe's security descriptor: protected DACL, full access for SYSTEM, Admins, the user.

    The same policy as Podman's win-sshproxy (gvisor-tap-vsock); no other account may open it.
    """
    return f"D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;{user_sid})"
