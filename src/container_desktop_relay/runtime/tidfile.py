"""The readiness file the desktop app waits for: ``pid:tid`` once the client is ready."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from container_desktop_relay.log import get_logger
from container_desktop_relay.runtime.state import RoleState
from container_desktop_relay.ssh.keys import atomic_write

__all__ = [
    "check_writable",
    "remove_stale_tid_file",
    "remove_tid_file",
    "tid_file_extra",
    "tid_text",
    "write_tid_file",
]

log = get_logger(__name__)


def tid_text() -> str:
    """``pid:tid`` of this process and the calling thread (the event loop's), no newline."""
    return f"{os.getpid()}:{threading.get_native_id()}"


def write_tid_file(path: Path) -> str:
    """Atomically write :func:`tid_text` to ``path``; returns what was written."""
    text = tid_text()
    atomic_write(path, text.encode("ascii"), 0o644)
    return text


def check_writable(path: Path) -> None:
    """Fail at start, clearly, when the readiness file could not be written later.

    Raises:
        ConfigError: the directory is missing or not writable (nothing is created or changed).
    """
    import tempfile

    from container_desktop_relay.errors import ConfigError

    try:
        fd, probe = tempfile.mkstemp(prefix=".tid-probe.", dir=path.parent)
    except OSError as exc:
        raise ConfigError(
            f"invalid tid_path={path}: cannot create files in {path.parent} "
            f"({exc.strerror or exc}); the readiness file could never be written"
        ) from None
    os.close(fd)
    os.unlink(probe)


def remove_stale_tid_file(path: Path) -> str | None:
    """Remove a readiness file left by an earlier run (killed relays cannot remove theirs),
    before anything else, so that nobody reads a dead relay's ``pid:tid`` as "ready".
    Returns what it held, or None when there was none.

    Raises:
        ConfigError: the file exists but cannot be removed (it would look ready).
    """
    from container_desktop_relay.errors import ConfigError

    try:
        if not (path.is_file() or path.is_symlink()):
            return None  # nothing there (a bad directory is check_writable's to report)
        old = path.read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError:
        old = ""
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(
            f"invalid tid_path={path}: a file from an earlier run is there and cannot be "
            f"removed ({exc.strerror or exc}); it would read as ready"
        ) from None
    log.info("tid_file_stale_removed", extra={"path": str(path), "tid": old})
    return old


def remove_tid_file(path: Path, text: str) -> None:
    """Remove ``path`` if it still holds ``text`` (another instance's file is left alone)."""
    with contextlib.suppress(OSError):
        if path.read_text(encoding="ascii") == text:
            path.unlink()


async def _write_when_ready(state: RoleState, path: Path, written: list[str]) -> None:
    while not state.ready:
        await state.changed.wait()
    try:
        written.append(write_tid_file(path))
    except OSError as exc:
        log.error("tid_file_not_written", extra={"path": str(path), "error": str(exc)})
        return
    log.info("tid_file_written", extra={"path": str(path), "tid": written[-1]})


def tid_file_extra(path: Path) -> Callable[[Any, Any], Awaitable[Callable[[], Awaitable[None]]]]:
    """A lifecycle extra: write ``pid:tid`` to ``path`` when the role first turns ready, and
    remove it on exit."""

    async def start(role: Any, shutdown: Any) -> Callable[[], Awaitable[None]]:
        del shutdown
        written: list[str] = []
        task = asyncio.create_task(_write_when_ready(role.state, path, written),
                                   name="tid-file")

        async def cleanup() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            for text in written:
                remove_tid_file(path, text)

        return cleanup

    return start
