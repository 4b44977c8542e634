"""Parent-process watching: a Windows PID through WSL's tasklist.exe, or a local PID/parent."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from container_desktop_relay.log import get_logger

__all__ = [
    "LocalPidProbe",
    "ParentProbe",
    "ProbeError",
    "TasklistProbe",
    "is_wsl",
    "select_probe",
    "watch_parent",
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


class LocalPidProbe:
    """A local process by PID; PID -1 means "my parent at start-up" (gone when reparented)."""

    def __init__(self, pid: int) -> None:
        self.original_ppid = os.getppid()
        self.pid = pid if pid > 0 else self.original_ppid
        self.follow_parent = pid <= 0
        self.description = f"local pid {self.pid}"

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


def select_probe(pid: int) -> ParentProbe:
    """The right probe here: tasklist.exe for a given PID under WSL, else a local PID."""
    if pid > 0 and is_wsl() and shutil.which("tasklist.exe"):
        return TasklistProbe(pid)
    return LocalPidProbe(pid)


async def watch_parent(
    probe: ParentProbe, interval: float, on_gone: Callable[[], None]
) -> None:
    """Poll ``probe`` every ``interval`` seconds; call ``on_gone`` once the process is gone.

    A probe that fails is logged (once when it starts failing, once when it recovers) and
    never treated as "gone".
    """
    failing = False
    log.info("parent_watch_started", extra={"parent": probe.description,
                                            "poll_interval_s": interval})
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
