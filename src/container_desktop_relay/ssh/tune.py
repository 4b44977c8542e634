"""The relay's face of the asyncssh layer: ciphers, window sizes, transport limits, patches.

The patches themselves live in :mod:`container_desktop_relay.ssh.patches` (correctness fixes and
speed paths, each guarded by fingerprints of the asyncssh functions it replaces). Everything
here works whichever of them are active: sizes and shortcuts that only pay with a patch fall
back to asyncssh's own behaviour without it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncssh

from container_desktop_relay.ssh import patches as sshfix
from container_desktop_relay.ssh.patches.lifecycle import Corked, OpenCallback
from container_desktop_relay.ssh.patches.lifecycle import open_unix_channel as _open_unix_channel

__all__ = [
    "CHANNEL_WINDOW",
    "DEFAULT_PACKET_SIZE",
    "DEFAULT_WINDOW",
    "MAX_PACKET_SIZE",
    "TRANSPORT_HIGH_WATER",
    "Corked",
    "OpenCallback",
    "apply",
    "channel_window",
    "cpu_has_aes",
    "max_packet_size",
    "open_unix_channel",
    "preferred_ciphers",
    "report",
    "tune_transport",
]

#: Channel window and packet size with the speed paths: 4 MiB / 128 KiB. 256 KiB packets
#: exceed the Unix socket send buffer and measured slower. Both ends must create channels
#: with the larger ``max_pktsize``: asyncssh accepts packets up to max(256 KiB, its
#: channels' size + 1 KiB).
CHANNEL_WINDOW = 4 * 1024 * 1024
MAX_PACKET_SIZE = 128 * 1024
#: asyncssh's own defaults, used when the patches the larger sizes rely on are not active.
DEFAULT_WINDOW = 2 * 1024 * 1024
DEFAULT_PACKET_SIZE = 32768
TRANSPORT_HIGH_WATER = 1024 * 1024
TRANSPORT_LOW_WATER = 256 * 1024


def apply(mode: str = "all") -> dict[str, Any]:
    """Install the asyncssh patches ``mode`` selects (``all``, ``correctness``, ``none``)."""
    return sshfix.apply(mode)


def report() -> dict[str, Any]:
    """Which asyncssh patches are active, for ``status``, /health and ``doctor``."""
    return sshfix.report()


def _large_windows() -> bool:
    # A 4 MiB window pays only with the copy-free receive path, and stays bounded only with
    # credit on delivery (else every pause/resume cycle admits another window).
    return sshfix.active("receive-path") and sshfix.active("window-credit")


def channel_window() -> int:
    """The receive window new channels get."""
    return CHANNEL_WINDOW if _large_windows() else DEFAULT_WINDOW


def max_packet_size() -> int:
    """The largest data packet new channels accept."""
    return MAX_PACKET_SIZE if _large_windows() else DEFAULT_PACKET_SIZE


def open_unix_channel(conn: asyncssh.SSHClientConnection, path: str,
                      session_factory: Callable[[], Any], on_open: OpenCallback) -> Any:
    """Open a ``direct-streamlocal@openssh.com`` channel to ``path``; ``on_open`` runs once.

    See :func:`container_desktop_relay.ssh.patches.lifecycle.open_unix_channel`; without the
    ``task-free-open`` patch asyncssh's ``create_unix_connection`` runs in a task.
    """
    return _open_unix_channel(conn, path, session_factory, on_open, window=channel_window(),
                              max_pktsize=max_packet_size(),
                              fast=sshfix.active("task-free-open"))


def cpu_has_aes() -> bool:
    """Whether the CPU has AES instructions (Linux: /proc/cpuinfo; elsewhere assume x86-64 does)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return " aes" in line
    except OSError:
        pass
    return True


def preferred_ciphers() -> list[str]:
    """Cipher order: AES-GCM first where the CPU accelerates AES, else ChaCha20-Poly1305 first."""
    gcm = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]
    chacha = ["chacha20-poly1305@openssh.com"]
    ctr = ["aes128-ctr", "aes192-ctr", "aes256-ctr"]
    return (gcm + chacha if cpu_has_aes() else chacha + gcm) + ctr


def tune_transport(conn: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection) -> None:
    """Give the SSH TCP transport the write-buffer limits the connection-level pause expects.

    Without ``congestion-pause`` asyncssh ignores the transport's pause: nothing to tune.
    """
    if not sshfix.active("congestion-pause"):
        return
    transport = getattr(conn, "_transport", None)
    if transport is not None:
        transport.set_write_buffer_limits(high=TRANSPORT_HIGH_WATER, low=TRANSPORT_LOW_WATER)
