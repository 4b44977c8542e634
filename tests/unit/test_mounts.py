"""Recognising WSL's Windows-drive mounts, where key-file mode checks cannot apply."""

from __future__ import annotations

from container_desktop_relay.mounts import mount_of, on_windows_drive, parse_mountinfo

WSL2 = """\
60 65 8:32 / / rw,relatime - ext4 /dev/sdc rw,discard,errors=remount-ro,data=ordered
92 60 0:54 / /mnt/c rw,noatime - 9p drvfs rw,dirsync,aname=drvfs;path=C:\\;uid=1000;gid=1000
93 60 0:55 / /mnt/d rw,noatime - 9p drvfs rw,metadata,aname=drvfs;path=D:\\
94 60 0:56 / /mnt/wsl rw,relatime shared:1 - tmpfs none rw
95 60 0:57 / /mnt/my\\040share rw - 9p drvfs rw,aname=drvfs;path=\\\\srv\\share
"""
WSL1 = "5 1 0:5 / /mnt/c rw,noatime - drvfs C:\\134 rw,case=off\n"


def test_parse_and_classify() -> None:
    """9p/drvfs mounts without metadata are Windows drives; others are not."""
    mounts = {m.point: m for m in parse_mountinfo(WSL2 + "garbage line\n")}
    assert set(mounts) == {"/", "/mnt/c", "/mnt/d", "/mnt/wsl", "/mnt/my share"}
    assert mounts["/mnt/c"].windows_drive
    assert not mounts["/mnt/d"].windows_drive  # metadata: real POSIX modes
    assert not mounts["/"].windows_drive and not mounts["/mnt/wsl"].windows_drive
    assert parse_mountinfo(WSL1)[0].windows_drive


def test_longest_mount_point_wins() -> None:
    """A path belongs to the deepest mount containing it, not to a name prefix."""
    mounts = parse_mountinfo(WSL2)
    assert mount_of("/mnt/c/Users/u/.ssh/id_rsa", mounts).point == "/mnt/c"  # type: ignore[union-attr]
    assert mount_of("/mnt/cx/file", mounts).point == "/"  # type: ignore[union-attr]
    assert mount_of("/home/u/.ssh/id_rsa", mounts).point == "/"  # type: ignore[union-attr]


def test_not_wsl_here() -> None:
    """Outside WSL nothing counts as a Windows drive (the mode checks stay on)."""
    assert on_windows_drive("/tmp") is False
