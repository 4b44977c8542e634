"""The readiness file: pid:tid without newline, atomic, removed only if still ours, and a
stale one removed at start."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from container_desktop_relay.commands.registry import parse_config
from container_desktop_relay.errors import KeyFileError
from container_desktop_relay.runtime.roles import run_client
from container_desktop_relay.runtime.tidfile import (
    remove_stale_tid_file,
    remove_tid_file,
    tid_text,
    write_tid_file,
)


def test_tid_text_is_pid_colon_native_tid() -> None:
    """The text is this process's pid and the calling thread's native id."""
    assert tid_text() == f"{os.getpid()}:{threading.get_native_id()}"


def test_write_then_remove(tmp_path: Path) -> None:
    """The file holds exactly the text (no newline) and is removed by its writer."""
    path = tmp_path / "relay.tid"
    text = write_tid_file(path)
    assert path.read_bytes() == text.encode() and not text.endswith("\n")
    remove_tid_file(path, text)
    assert not path.exists()


def test_someone_elses_file_is_kept(tmp_path: Path) -> None:
    """A file rewritten by another instance is not removed."""
    path = tmp_path / "relay.tid"
    text = write_tid_file(path)
    path.write_text("1:2")
    remove_tid_file(path, text)
    assert path.read_text() == "1:2"
    remove_tid_file(tmp_path / "missing", text)  # a missing file is fine


def test_stale_file_is_removed_at_start(tmp_path: Path) -> None:
    """A file left by a killed relay is removed (and its text returned); none is fine."""
    path = tmp_path / "relay.tid"
    path.write_text("4242:4243")
    assert remove_stale_tid_file(path) == "4242:4243"
    assert not path.exists()
    assert remove_stale_tid_file(path) is None


def test_client_removes_a_stale_file_even_when_its_start_fails(tmp_path: Path) -> None:
    """run_client removes the old file before anything else: a start that fails (here the
    identity key is missing) leaves no stale "ready" behind."""
    path = tmp_path / "relay.tid"
    path.write_text("4242:4243")
    config = parse_config("client", [
        "--listen", f"unix://{tmp_path}/c.sock", "--host", "127.0.0.1", "--port", "1",
        "--identity-path", str(tmp_path / "missing_key"), "--tid-path", str(path),
    ], environ={})
    with pytest.raises(KeyFileError):
        run_client(config)
    assert not path.exists()


def _fail_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)


def test_replacing_goes_through_a_temporary_file_and_rename(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tid file is replaced, never rewritten in place: another link to the old file keeps
    the old text, and a write that fails midway leaves the old file and no temporary file."""
    path = tmp_path / "relay.tid"
    path.write_text("1:2")
    os.link(path, tmp_path / "old-link")
    text = write_tid_file(path)
    assert path.read_text() == text and (tmp_path / "old-link").read_text() == "1:2"
    _fail_fsync(monkeypatch)
    with pytest.raises(OSError, match="No space"):
        write_tid_file(path)
    assert path.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old-link", "relay.tid"]
