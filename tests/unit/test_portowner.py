"""Naming the process that holds a TCP port, from a /proc tree (fake here, real on Linux)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from container_desktop_relay.runtime.portowner import (
    describe_holder,
    listening_inodes,
    tcp_port_holder,
)

# /proc/net/tcp: port 0x4E56 = 20054; one listener (st 0A), one established connection (01).
TABLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:4E56 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1
   1: 0100007F:4E56 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4343 1
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1
"""


def _fake_proc(tmp_path: Path, *, readable: bool = True) -> Path:
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    (proc / "net" / "tcp").write_text(TABLE)
    fd = proc / "321" / "fd"
    fd.mkdir(parents=True)
    (fd / "3").symlink_to("pipe:[1]")
    if readable:
        (fd / "4").symlink_to("socket:[4242]")
    (proc / "321" / "cmdline").write_bytes(b"/usr/bin/python3\0-m\0relay\0server\0")
    (proc / "321" / "comm").write_text("python3\n")
    return proc


def test_listening_inodes_only_listeners_on_the_port() -> None:
    """Only LISTEN rows (0A) on the port count; the connection on it does not."""
    assert listening_inodes(TABLE, 20054) == {"4242"}
    assert listening_inodes(TABLE, 22) == {"777"}
    assert listening_inodes(TABLE, 80) == set()


def test_describe_holder_shortens() -> None:
    """Program base name and arguments; a long command line is cut; no cmdline: the name."""
    assert describe_holder(7, b"/usr/sbin/sshd\0-D\0", "sshd") == "pid 7 (sshd -D)"
    assert describe_holder(7, b"", "kthread\n") == "pid 7 (kthread)"
    long = describe_holder(7, b"x\0" + b"a" * 200, "")
    assert long.startswith("pid 7 (x aaa") and long.endswith("...)") and len(long) < 100


def test_holder_found_in_a_fake_proc(tmp_path: Path) -> None:
    """The fd link to socket:[inode] names the process."""
    assert tcp_port_holder(20054, _fake_proc(tmp_path)) == "pid 321 (python3 -m relay server)"


def test_holder_of_another_user_and_nothing(tmp_path: Path) -> None:
    """A listener whose process cannot be seen is "another user's"; no listener: None."""
    proc = _fake_proc(tmp_path, readable=False)
    assert tcp_port_holder(20054, proc).startswith("a process of another user")
    assert tcp_port_holder(80, proc) is None
    assert tcp_port_holder(20054, tmp_path / "missing") is None


def test_holder_of_a_real_listener_is_this_process() -> None:
    """A port this test listens on is named with this process's pid (Linux's /proc)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        holder = tcp_port_holder(sock.getsockname()[1])
    assert holder is not None and holder.startswith(f"pid {os.getpid()} (")
