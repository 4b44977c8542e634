"""Recognising WSL's Windows-drive mounts, where key-file mode checks cannot apply."""

from __future__ import annotations

import pytest

from container_desktop_relay.ssh.mounts import (
    mount_of,
    on_windows_drive,
    parse_mountinfo,
    windows_drive_rule,
)

WSL2 = """\
60 65 8:32 / / rw,relatime - ext4 /dev/sdc rw,discard,errors=remount-ro,data=ordered
92 60 0:54 / /mnt/c rw,noatime - 9p drvfs rw,dirsync,aname=drvfs;path=C:\\;uid=1000;gid=1000
93 60 0:55 / /mnt/d rw,noatime - 9p drvfs rw,metadata,aname=drvfs;path=D:\\
94 60 0:56 / /mnt/wsl rw,relatime shared:1 - tmpfs none rw
95 60 0:57 / /mnt/my\\040share rw - 9p drvfs rw,aname=drvfs;path=\\\\srv\\share
"""

# Real lines as WSL published them. Where the source showed /proc/mounts or `mount` output,
# the same source, type and options are set in mountinfo's layout (fields 1-6 made up).
TABLE = [
    # (where it was published, mountinfo line, (point, rule or None, synthesized modes))
    ("WSL 1 (hostpath test fixture)",
     r"24 20 0:23 / /mnt/c rw,noatime - drvfs C: rw,uid=1000",
     ("/mnt/c", "drvfs (WSL 1)", True)),
    ("WSL 1 with metadata (`mount -l`: D: on /mnt/d type drvfs (rw,relatime,metadata,case=off))",
     r"25 20 0:24 / /mnt/d rw,relatime - drvfs D: rw,metadata,case=off",
     ("/mnt/d", "drvfs (WSL 1)", False)),
    ("WSL 2, 9p over fd, source C:\\ (lamyj/wsl-path-converter#4, /proc/mounts)",
     r"131 82 0:69 / /mnt/c rw,dirsync,noatime - 9p C:\134 rw,dirsync,aname=drvfs;path=C:\;"
     r"uid=1000;gid=1000;symlinkroot=/mnt/,mmap,access=client,msize=65536,trans=fd,rfd=8,wfd=8",
     ("/mnt/c", "9p with aname=drvfs (WSL 2)", True)),
    ("WSL 2, metadata inside the aname string (Docker Desktop bind mount)",
     r"477 468 0:68 /Users/ASUS/AppData/Local/Temp/gld-mnt /root/download_lib rw,noatime - 9p "
     r"C:\134 rw,aname=drvfs;path=C:\;uid=0;gid=0;metadata;symlinkroot=/mnt/host/,cache=5,"
     r"access=client,msize=65536,trans=fd,rfd=5,wfd=5",
     ("/root/download_lib", "9p with aname=drvfs (WSL 2)", False)),
    ("WSL 2, 9p over virtio, source drvfs (WSL2-Linux-Kernel bisect, `mount`)",
     r"80 60 0:50 / /mnt/c rw,noatime,dirsync - 9p drvfs rw,dirsync,aname=drvfs;path=C:\;"
     r"uid=1000;gid=1000;symlinkroot=/mnt/,mmap,access=client,msize=262144,trans=virtio",
     ("/mnt/c", "9p with aname=drvfs (WSL 2)", True)),
    ("WSL 2, unescaped spaces in the path (microsoft/WSL#10056, /proc/mounts)",
     r"81 60 0:51 / /Docker/host rw,noatime - 9p drvfs rw,dirsync,aname=drvfs;"
     r"path=C:\Program Files\Docker\Docker\resources;symlinkroot=/mnt/,mmap,access=client,"
     r"msize=262144,trans=virtio",
     ("/Docker/host", "9p with aname=drvfs (WSL 2)", True)),
    ("constructed: metadata after a path with an unescaped space",
     r"81 60 0:51 / /mnt/p rw,noatime - 9p C:\134 rw,aname=drvfs;path=C:\Program Files;"
     r"metadata;uid=1000,cache=5",
     ("/mnt/p", "9p with aname=drvfs (WSL 2)", False)),
    ("WSL 2, elevated virtio share: source drvfsa (LX_INIT_DRVFS_ADMIN_VIRTIO_TAG), no aname",
     r"82 60 0:52 / /mnt/e rw,noatime - 9p drvfsa rw,msize=262144,trans=virtio",
     ("/mnt/e", "9p from the drvfsa share (WSL 2, virtio)", True)),
    ("WSL 2 virtiofs=true (microsoft/WSL#14301: drvfsC0 on /mnt/c type virtiofs (rw,noatime))",
     r"83 60 0:53 / /mnt/c rw,noatime - virtiofs drvfsC0 rw",
     ("/mnt/c", "virtiofs DrvFs share (WSL 2)", True)),
    ("WSL 2 virtiofs with a GUID tag (microsoft/WSL#14073)",
     r"84 60 0:54 / /mnt/f rw,noatime - virtiofs 3f2504e0-4f89-11d3-9a0c-0305e82c3301 rw",
     ("/mnt/f", "virtiofs DrvFs share (WSL 2)", True)),
    ("WSL 2 driver store: 9p but not a drive (microsoft/WSL#7152)",
     r"83 86 0:37 / /usr/lib/wsl/drivers ro,nosuid,nodev,noatime - 9p drivers ro,"
     r"aname=drivers;fmask=222;dmask=222,cache=0x5,access=client,msize=65536,trans=fd,rfd=8,wfd=8",
     ("/usr/lib/wsl/drivers", None, False)),
    ("WSL 2 root file system",
     r"60 65 8:32 / / rw,relatime - ext4 /dev/sdc rw,discard,errors=remount-ro,data=ordered",
     ("/", None, False)),
    ("virtiofs that is not DrvFs (WSLg)",
     r"85 60 0:55 / /mnt/wslg/x rw - virtiofs wslg rw",
     ("/mnt/wslg/x", None, False)),
]


@pytest.mark.parametrize(("where", "line", "want"), TABLE, ids=[t[0][:40] for t in TABLE])
def test_every_published_form(where: str, line: str, want: tuple[str, str | None, bool]) -> None:
    """Each mountinfo form WSL has published is classified by the rule that fits it."""
    (mount,) = parse_mountinfo(line + "\n")
    assert (mount.point, mount.drvfs_form, mount.windows_drive) == want


def test_parse_and_classify() -> None:
    """9p/drvfs mounts without metadata are Windows drives; others are not."""
    mounts = {m.point: m for m in parse_mountinfo(WSL2 + "garbage line\n")}
    assert set(mounts) == {"/", "/mnt/c", "/mnt/d", "/mnt/wsl", "/mnt/my share"}
    assert mounts["/mnt/c"].windows_drive
    assert not mounts["/mnt/d"].windows_drive  # metadata: real POSIX modes
    assert not mounts["/"].windows_drive and not mounts["/mnt/wsl"].windows_drive


def test_rule_line_outside_wsl() -> None:
    """Outside WSL, doctor's line says the POSIX modes are checked."""
    assert windows_drive_rule("/tmp") == "not WSL: POSIX modes are checked"


def test_rule_line_names_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under WSL, the line names the mount, the rule that matched and what follows from it."""
    from container_desktop_relay.ssh import mounts

    monkeypatch.setattr(mounts, "is_wsl", lambda: True)
    monkeypatch.setattr(mounts, "read_mountinfo", lambda: "\n".join(
        [TABLE[-2][1], TABLE[2][1], TABLE[3][1]]))
    assert mounts.windows_drive_rule("/mnt/c/Users/u/.ssh/id_rsa") == (
        "on /mnt/c (9p C:\\), Windows drive by rule 9p with aname=drvfs (WSL 2) without "
        "metadata: modes are synthesized, so Windows ACLs rule and mode checks are skipped")
    assert mounts.on_windows_drive("/mnt/c/Users/u/.ssh/id_rsa")
    assert "with metadata: POSIX modes are checked" in mounts.windows_drive_rule(
        "/root/download_lib/id_rsa")
    assert not mounts.on_windows_drive("/root/download_lib/id_rsa")
    assert mounts.windows_drive_rule("/home/u/.ssh/id_rsa") == (
        "on / (ext4 /dev/sdc), not a Windows drive: POSIX modes are checked")


def test_longest_mount_point_wins() -> None:
    """A path belongs to the deepest mount containing it, not to a name prefix."""
    mounts = parse_mountinfo(WSL2)
    assert mount_of("/mnt/c/Users/u/.ssh/id_rsa", mounts).point == "/mnt/c"  # type: ignore[union-attr]
    assert mount_of("/mnt/cx/file", mounts).point == "/"  # type: ignore[union-attr]
    assert mount_of("/home/u/.ssh/id_rsa", mounts).point == "/"  # type: ignore[union-attr]


def test_not_wsl_here() -> None:
    """Outside WSL nothing counts as a Windows drive (the mode checks stay on)."""
    assert on_windows_drive("/tmp") is False
