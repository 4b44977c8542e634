"""The readiness file: pid:tid without newline, atomic, removed only if still ours."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from container_desktop_relay.tidfile import remove_tid_file, tid_text, write_tid_file


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
