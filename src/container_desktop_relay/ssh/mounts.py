"""Whether a path lives on a Windows drive mounted into WSL, where POSIX mode bits are fake.

WSL mounts Windows drives (``/mnt/c`` …) with DrvFs, which /proc/self/mountinfo has shown in
every one of these forms (see tests/unit/test_mounts.py for the real lines):

* WSL 1: file system ``drvfs``, source ``C:``;
* WSL 2 over a 9p file descriptor: ``9p``, source ``C:\\`` (older builds: ``drvfs``), super
  options ``aname=drvfs;path=C:\\;uid=…;metadata;…`` (the DrvFs options ride inside the
  ``aname`` string, separated by ``;``);
* WSL 2 over virtio 9p: ``9p``, source ``drvfs`` or ``drvfsa`` (the elevated server);
* WSL 2 with virtiofs: ``virtiofs``, source a tag ``drvfsC0``/``drvfsaC0`` or a GUID.

Unless the mount has the ``metadata`` option, every file there shows a synthesized mode (0777
by default) and access is decided by Windows ACLs, so OpenSSH-style mode checks would refuse
every key the Windows side wrote.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass

from container_desktop_relay.runtime.watch import is_wsl

__all__ = ["Mount", "mount_of", "on_windows_drive", "parse_mountinfo", "read_mountinfo",
           "windows_drive_rule"]

_GUID = re.compile(r"\{?[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\}?", re.I)
_VIRTIO_TAGS = ("drvfs", "drvfsa")


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of /proc/self/mountinfo."""

    point: str
    fstype: str
    source: str
    #: mount and super options, with the ``;``-separated DrvFs options inside ``aname=`` too
    options: frozenset[str]

    @property
    def drvfs_form(self) -> str | None:
        """Which published WSL form marks this as a Windows drive (None: it is not one)."""
        fstype, source = self.fstype, self.source.lower()
        if fstype == "drvfs":
            return "drvfs (WSL 1)"
        if fstype in ("9p", "v9fs"):
            if "aname=drvfs" in self.options:
                return "9p with aname=drvfs (WSL 2)"
            if source in _VIRTIO_TAGS:
                return f"9p from the {source} share (WSL 2, virtio)"
            return None
        if fstype == "virtiofs" and (source.startswith(_VIRTIO_TAGS) or _GUID.fullmatch(source)):
            return "virtiofs DrvFs share (WSL 2)"
        return None

    @property
    def metadata(self) -> bool:
        """Whether the mount keeps real POSIX metadata (the ``metadata`` DrvFs option)."""
        return "metadata" in self.options

    @property
    def windows_drive(self) -> bool:
        """A DrvFs mount whose mode bits are synthesized (no ``metadata`` option)."""
        return self.drvfs_form is not None and not self.metadata


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


def _options(*fields: str) -> frozenset[str]:
    """Comma-separated options; the ``;``-separated 9p ``aname=`` string is split too."""
    found: set[str] = set()
    for text in fields:
        for option in text.split(","):
            found.add(option)
            if ";" in option:
                found.update(option.split(";"))
    return frozenset(found)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts listed in /proc/self/mountinfo ``text`` (malformed lines skipped).

    DrvFs does not escape spaces inside its super options (``path=C:\\Program Files``), so
    everything after the source is taken as the options.
    """
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split(maxsplit=2)
        if not sep or len(fields) < 6 or len(tail) < 3:
            continue
        mounts.append(Mount(_unescape(fields[4]), tail[0], _unescape(tail[1]),
                            _options(fields[5], tail[2])))
    return mounts


def mount_of(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount that holds ``path`` (the longest mount point that contains it)."""

    def holds(point: str) -> bool:
        return point == "/" or path == point or path.startswith(point + "/")

    held = [m for m in mounts if holds(m.point.rstrip("/") or "/")]
    # the last of equally deep mounts is the one on top (an over-mount)
    return max(reversed(held), key=lambda m: len(m.point.rstrip("/")), default=None)


def read_mountinfo() -> str:
    """This process's /proc/self/mountinfo ("" when it cannot be read)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def _mount_of_path(path: str | os.PathLike[str]) -> Mount | None:
    if sys.platform != "linux" or not is_wsl():
        return None
    return mount_of(os.path.realpath(path), parse_mountinfo(read_mountinfo()))


def on_windows_drive(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is on a Windows drive mounted into WSL without POSIX metadata."""
    mount = _mount_of_path(path)
    return mount is not None and mount.windows_drive


def windows_drive_rule(path: str | os.PathLike[str]) -> str:
    """One line saying which rule decides whether ``path``'s mode bits are checked."""
    if sys.platform != "linux" or not is_wsl():
        return "not WSL: POSIX modes are checked"
    mount = _mount_of_path(path)
    if mount is None:
        return "mount not found in /proc/self/mountinfo: POSIX modes are checked"
    where = f"on {mount.point} ({mount.fstype} {mount.source})"
    form = mount.drvfs_form
    if form is None:
        return f"{where}, not a Windows drive: POSIX modes are checked"
    if mount.metadata:
        return f"{where}, Windows drive by rule {form} with metadata: POSIX modes are checked"
    return (f"{where}, Windows drive by rule {form} without metadata: modes are synthesized, "
            "so Windows ACLs rule and mode checks are skipped")
