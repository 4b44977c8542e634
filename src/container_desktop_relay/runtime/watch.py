"""Parent-process watching: a Windows process by handle, a Windows PID from WSL, a local PID.

* On Windows the watched process is opened with ``SYNCHRONIZE`` and its handle is waited on
  (no polling, no signals: ``os.kill(pid, 0)`` there would send a Ctrl+C). Without a given PID
  the parent comes from a Toolhelp snapshot (``os.getppid()`` needs an API Wine lacks).
* Inside WSL a Windows PID is polled through ``tasklist.exe``.
* Elsewhere a local PID is waited on through a pidfd (Linux), else polled with ``kill(pid, 0)``.

A watch that cannot work (the process cannot be opened, the watcher itself fails) is logged
and reported like a vanished parent, so the relay stops cleanly instead of running unwatched.
"""

from __future__ import annotations

import asyncio
import ntpath
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from container_desktop_relay.log import get_logger

__all__ = [
    "HandleWait",
    "LocalPidProbe",
    "ParentProbe",
    "ProbeError",
    "TasklistProbe",
    "is_wsl",
    "select_probe",
    "watch_parent",
    "watch_process",
    "watched_parent",
]

log = get_logger(__name__)


class ProbeError(Exception):
    """The liveness check itself failed (not: the process is gone)."""


class ParentProbe(Protocol):
    """Answers whether the watched process is still alive."""

    description: str

    async def alive(self) -> bool:
        """True while the process lives; raises :class:`ProbeError` when it cannot tell."""
        ...


def is_wsl() -> bool:
    """Whether this Linux runs inside WSL (Windows interop available)."""
    if sys.platform != "linux":
        return False
    if Path("/proc/sys/fs/binfmt_misc/WSLInterop").exists():
        return True
    try:
        return "microsoft" in Path("/proc/version").read_text().lower()
    except OSError:
        return False


def watched_parent(own_pid: int, parent_of: Callable[[int], int],
                   name_of: Callable[[int], str], *, frozen: bool, exe: str) -> int:
    """The PID "my parent" means: the process that started this one, except that in a
    one-file build (PyInstaller, ``frozen``) this process is the child of the bootloader, a
    process of the same executable that only waits for it; then it is the bootloader's parent.
    """
    parent = parent_of(own_pid)
    if frozen and parent > 0 and name_of(parent).lower() == ntpath.basename(exe).lower():
        return parent_of(parent)
    return parent


class HandleWait:
    """A Windows process waited on through a ``SYNCHRONIZE`` handle (Windows only).

    PID -1 means "my parent", found in a Toolhelp snapshot. The handle is opened at once, so
    a parent that is already gone is reported by :meth:`wait_gone` returning immediately.
    """

    def __init__(self, pid: int) -> None:
        from container_desktop_relay.runtime import winproc

        self._winproc = winproc
        self.pid = pid if pid > 0 else watched_parent(
            os.getpid(), winproc.parent_pid, winproc.process_name,
            frozen=bool(getattr(sys, "frozen", False)), exe=sys.executable)
        if self.pid <= 0:  # started by no Windows process (under Wine: from a Linux shell)
            raise ProbeError("this process has no parent process to watch; "
                             "pass --parent-process-pid")
        name = winproc.process_name(self.pid)
        self.description = f"windows pid {self.pid}" + (f" ({name})" if name else "")
        try:
            self.handle: int | None = winproc.open_for_wait(self.pid)
        except winproc.ProcessGone:
            self.handle = None

    async def wait_gone(self) -> None:
        """Return once the process has exited (at once if it was gone at start)."""
        if self.handle is None:
            return
        loop: Any = asyncio.get_running_loop()
        try:
            await loop._proactor.wait_for_handle(self.handle)
        finally:
            self._winproc.close_handle(self.handle)
            self.handle = None


class LocalPidProbe:
    """A local process by PID; PID -1 means "my parent at start-up" (gone when reparented)."""

    def __init__(self, pid: int) -> None:
        self.original_ppid = os.getppid()
        self.pid = pid if pid > 0 else self.original_ppid
        self.follow_parent = pid <= 0
        self.description = f"local pid {self.pid}"

    async def wait_gone(self) -> bool:
        """Wait through a pidfd until the process exits; False when no pidfd is available
        (not Linux, an old kernel), so the caller polls :meth:`alive` instead."""
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd_open is None:
            return False
        try:
            fd = pidfd_open(self.pid)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        loop = asyncio.get_running_loop()
        gone = loop.create_future()
        try:
            loop.add_reader(fd, lambda: None if gone.done() else gone.set_result(None))
        except (NotImplementedError, OSError):
            os.close(fd)
            return False
        try:
            await gone
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        return True

    async def alive(self) -> bool:
        if self.follow_parent and os.getppid() != self.original_ppid:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


class TasklistProbe:
    """A Windows process by PID, through WSL interop's ``tasklist.exe``."""

    def __init__(self, pid: int, command: str = "tasklist.exe", timeout: float = 10.0) -> None:
        self.pid = pid
        self.command = command
        self.timeout = timeout
        self.description = f"windows pid {pid} via {command}"

    async def alive(self) -> bool:
        try:
            proc = await asyncio.create_subprocess_exec(
                self.command, "/FI", f"PID eq {self.pid}", "/NH", "/FO", "CSV",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise ProbeError(f"cannot run {self.command}: {exc.strerror or exc}") from None
        try:
            async with asyncio.timeout(self.timeout):
                out, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise ProbeError(f"{self.command} did not answer within {self.timeout:g}s") from None
        if proc.returncode != 0:
            detail = err.decode(errors="replace").strip() or f"exit status {proc.returncode}"
            raise ProbeError(f"{self.command} failed: {detail}")
        text = out.decode(errors="replace")
        # CSV rows look like "image.exe","1234","Console","1","10,000 K"
        return f'"{self.pid}"' in text


def select_probe(pid: int) -> ParentProbe | HandleWait:
    """The right watch here: a handle on Windows, tasklist.exe for a given PID under WSL,
    else a local PID.

    Raises:
        OSError: on Windows, the parent cannot be found or opened.
    """
    if sys.platform == "win32":
        return HandleWait(pid)
    if pid > 0 and is_wsl() and shutil.which("tasklist.exe"):
        return TasklistProbe(pid)
    return LocalPidProbe(pid)


async def watch_process(pid: int, interval: float, on_end: Callable[[str], None]) -> None:
    """Watch process ``pid`` (-1: the parent) with the right probe here; once it is gone,
    call ``on_end("parent process exited")``. If the watch itself fails (the process cannot
    be found or opened, the probe breaks), log ``parent_watch_failed`` and call
    ``on_end("parent watch failed")``: the relay stops rather than run unwatched. Never
    raises (except cancellation).
    """
    try:
        probe = select_probe(pid)
        await watch_parent(probe, interval, lambda: on_end("parent process exited"))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.error("parent_watch_failed", extra={"parent_pid": pid, "error": str(exc)
                                                or type(exc).__name__})
        on_end("parent watch failed")


async def watch_parent(
    probe: ParentProbe | HandleWait, interval: float, on_gone: Callable[[], None]
) -> None:
    """Wait until the process of ``probe`` is gone, then call ``on_gone`` once.

    A :class:`HandleWait` (and a local PID with a pidfd) is waited on; other probes are
    polled every ``interval`` seconds. A probe that fails is logged (once when it starts
    failing, once when it recovers) and never treated as "gone".
    """
    waits = isinstance(probe, HandleWait) or (
        isinstance(probe, LocalPidProbe) and not probe.follow_parent
        and hasattr(os, "pidfd_open"))
    method = ("handle" if isinstance(probe, HandleWait) else "pidfd") if waits else "poll"
    log.info("parent_watch_started", extra={"parent": probe.description, "method": method,
                                            "poll_interval_s": None if waits else interval})
    if waits:
        assert isinstance(probe, (HandleWait, LocalPidProbe))
        if await probe.wait_gone() is not False:
            log.info("parent_gone", extra={"parent": probe.description})
            on_gone()
            return
    assert not isinstance(probe, HandleWait)
    failing = False
    while True:
        try:
            alive = await probe.alive()
        except ProbeError as exc:
            if not failing:
                log.error("parent_watch_failing", extra={"parent": probe.description,
                                                         "error": str(exc)})
            failing = True
        else:
            if failing:
                log.info("parent_watch_recovered", extra={"parent": probe.description})
                failing = False
            if not alive:
                log.info("parent_gone", extra={"parent": probe.description})
                on_gone()
                return
        await asyncio.sleep(interval)
