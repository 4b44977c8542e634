"""Which local process listens on a TCP port, for "port in use" messages (Linux; best effort).

The kernel lists listening sockets with their inodes in ``/proc/net/tcp`` and ``tcp6``; the
process holding one has a ``/proc/PID/fd`` link to ``socket:[INODE]``. Another user's processes
cannot be inspected without privileges, so the answer may be "a process of another user"; on
other systems, or when anything cannot be read, it is None. It never raises.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["describe_holder", "listening_inodes", "tcp_port_holder"]

_LISTEN = "0A"
_MAX_COMMAND = 80


def listening_inodes(table: str, port: int) -> set[str]:
    """The inodes of the sockets listening on ``port`` in a ``/proc/net/tcp``-format text."""
    inodes = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != _LISTEN:
            continue
        _, _, hex_port = fields[1].rpartition(":")
        try:
            if int(hex_port, 16) == port and fields[9] != "0":
                inodes.add(fields[9])
        except ValueError:
            continue
    return inodes


def describe_holder(pid: int, cmdline: bytes, comm: str) -> str:
    """``pid 42 (python3 -m relay server)``: the command line, shortened, else its name."""
    words = [w.decode("utf-8", "replace") for w in cmdline.split(b"\0") if w]
    command = " ".join([os.path.basename(words[0]), *words[1:]]) if words else comm.strip()
    if len(command) > _MAX_COMMAND:
        command = command[:_MAX_COMMAND - 3] + "..."
    return f"pid {pid} ({command})" if command else f"pid {pid}"


def tcp_port_holder(port: int, proc: Path = Path("/proc")) -> str | None:
    """Who listens on TCP ``port`` here: ``pid N (command)``, ``a process of another user``,
    or None when that cannot be told (not Linux, nothing found, nothing readable)."""
    inodes: set[str] = set()
    for name in ("tcp", "tcp6"):
        try:
            inodes |= listening_inodes((proc / "net" / name).read_text(), port)
        except (OSError, UnicodeDecodeError):
            continue
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    try:
        pids = sorted(int(p) for p in os.listdir(proc) if p.isdigit())
    except OSError:
        return None
    for pid in pids:
        fd_dir = proc / str(pid) / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd_dir / fd) not in wanted:
                    continue
            except OSError:
                continue
            try:
                cmdline = (proc / str(pid) / "cmdline").read_bytes()
                comm = (proc / str(pid) / "comm").read_text(errors="replace")
            except OSError:
                cmdline, comm = b"", ""
            return describe_holder(pid, cmdline, comm)
    return "a process of another user (sudo ss -ltnp names it)"
