"""Whether a path lives on a Windows drive mounted into WSL, where POSIX mode bits are fake.

WSL mounts Windows drives (``/mnt/c`` …) with DrvFs: ``drvfs`` under WSL 1, ``9p`` with the
source ``drvfs`` under WSL 2. Unless the mount has the ``metadata`` option, every file there
shows a synthesized mode (0777 by default) and access is decided by Windows ACLs, so
OpenSSH-style mode checks would refuse every key the Windows side wrote.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from container_desktop_relay.watch import is_wsl

__all__ = ["Mount", "mount_of", "on_windows_drive", "parse_mountinfo"]


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of /proc/self/mountinfo."""

    point: str
    fstype: str
    source: str
    options: frozenset[str]

    @property
    def windows_drive(self) -> bool:
        """A DrvFs mount whose mode bits are synthesized (no ``metadata`` option)."""
        drvfs = self.fstype == "drvfs" or (self.fstype in ("9p", "v9fs")
                                           and self.source.lower() == "drvfs")
        return drvfs and "metadata" not in self.options


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts listed in /proc/self/mountinfo ``text`` (malformed lines skipped)."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 6 or len(tail) < 3:
            continue
        options = frozenset(fields[5].split(",")) | frozenset(tail[2].split(","))
        mounts.append(Mount(_unescape(fields[4]), tail[0], _unescape(tail[1]), options))
    return mounts


def mount_of(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount that holds ``path`` (the longest mount point that contains it)."""

    def holds(point: str) -> bool:
        return point == "/" or path == point or path.startswith(point + "/")

    held = [m for m in mounts if holds(m.point.rstrip("/") or "/")]
    # the last of equally deep mounts is the one on top (an over-mount)
    return max(reversed(held), key=lambda m: len(m.point.rstrip("/")), default=None)


def on_windows_drive(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is on a Windows drive mounted into WSL without POSIX metadata."""
    if sys.platform != "linux" or not is_wsl():
        return False
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            mounts = parse_mountinfo(fh.read())
    except OSError:
        return False
    mount = mount_of(os.path.realpath(path), mounts)
    return mount is not None and mount.windows_drive
