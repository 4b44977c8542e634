"""Windows paths as a WSL distribution sees them, translated the way ``wslpath -u`` does."""

from __future__ import annotations

import configparser
import ntpath
import sys

__all__ = ["DEFAULT_ROOT", "automount_root", "parse_automount_root", "to_wsl_path"]

#: Where WSL mounts the Windows drives unless the distribution's /etc/wsl.conf says otherwise.
DEFAULT_ROOT = "/mnt/"
_DISTRO_SHARES = ("wsl$", "wsl.localhost")


def parse_automount_root(text: str) -> str:
    """The ``[automount] root`` of a wsl.conf text, normalised to end in ``/``; the default
    (``/mnt/``) when it is absent or unusable."""
    parser = configparser.ConfigParser(interpolation=None, strict=False,
                                       inline_comment_prefixes=("#", ";"))
    try:
        parser.read_string(text)
    except configparser.Error:
        return DEFAULT_ROOT
    root = parser.get("automount", "root", fallback="").strip().strip('"').strip()
    if not root.startswith("/"):
        return DEFAULT_ROOT
    return root.rstrip("/") + "/"


def automount_root(distribution: str) -> str:
    """The automount root of ``distribution``, read on Windows from its /etc/wsl.conf through
    ``\\\\wsl.localhost``; ``/mnt/`` when it cannot be read (or elsewhere)."""
    if sys.platform != "win32" or not distribution:
        return DEFAULT_ROOT
    try:
        with open(f"\\\\wsl.localhost\\{distribution}\\etc\\wsl.conf", encoding="utf-8",
                  errors="replace") as conf:
            return parse_automount_root(conf.read())
    except OSError:
        return DEFAULT_ROOT


def _strip_device_prefix(path: str) -> str:
    """Drop a device prefix: ``\\\\?\\C:\\x`` → ``C:\\x``, ``\\\\?\\UNC\\srv\\s`` →
    ``\\\\srv\\s`` (``\\\\.\\`` alike)."""
    for prefix in ("\\\\?\\", "\\\\.\\", "//?/", "//./"):
        if path.startswith(prefix):
            rest = path[len(prefix):]
            if rest[:4].upper() in ("UNC\\", "UNC/"):
                return "\\\\" + rest[4:]
            return rest
    return path


def to_wsl_path(path: str, *, distribution: str = "", root: str = DEFAULT_ROOT) -> str:
    """The Linux path ``distribution`` gives a Windows path, as ``wslpath -u`` there does.

    ``C:\\Users\\u\\id_rsa`` becomes ``/mnt/c/Users/u/id_rsa`` (``root`` is the automount root,
    ``/mnt/`` unless /etc/wsl.conf moves it); ``\\\\?\\`` and ``\\\\.\\`` prefixes are dropped;
    ``\\\\wsl.localhost\\D\\home\\u`` and ``\\\\wsl$\\D\\home\\u`` become ``/home/u`` when ``D``
    is ``distribution`` (case-insensitive); a Linux path (``/home/u``) is returned unchanged.

    Raises:
        ValueError: a relative Windows path, a path inside another distribution, or a UNC
            share WSL cannot map.
    """
    if path.startswith("/") and "\\" not in path and not path.startswith(("//?/", "//./")):
        return path
    path = _strip_device_prefix(path)
    drive, rest = ntpath.splitdrive(path)
    rest = rest.replace("\\", "/")
    if len(drive) == 2 and drive[1] == ":" and drive[0].isalpha():
        if not rest.startswith("/"):
            raise ValueError(f"{path!r} is not an absolute Windows path")
        base = (root.rstrip("/") + "/") if root.startswith("/") else DEFAULT_ROOT
        return f"{base}{drive[0].lower()}{rest.rstrip('/')}"
    unc = drive.replace("\\", "/").lstrip("/").split("/")
    if len(unc) == 2 and unc[0].lower() in _DISTRO_SHARES:
        if distribution and unc[1].lower() != distribution.lower():
            raise ValueError(
                f"{path!r} is inside the distribution {unc[1]!r}, not {distribution!r} "
                "where the server runs"
            )
        return rest.rstrip("/") or "/"
    raise ValueError(f"{path!r} cannot be translated to a WSL path")
