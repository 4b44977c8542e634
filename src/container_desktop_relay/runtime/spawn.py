"""Spawn the relay server inside a WSL distribution through ``wsl.exe``, and keep it alive.

The child never outlives the client: on Windows it is put in a kill-on-close Job object
(``winjob``); on POSIX it leads its own process group, which is terminated on exit. The server
also watches this process (``--watch-process-termination --parent-process-pid``), which covers
a client that is killed outright.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from container_desktop_relay.config import Config
from container_desktop_relay.core.backoff import Backoff, worth_logging
from container_desktop_relay.durations import format_duration
from container_desktop_relay.errors import ConfigError, TunnelUnavailable
from container_desktop_relay.log import get_logger
from container_desktop_relay.runtime.wslpath import DEFAULT_ROOT, automount_root, to_wsl_path

__all__ = ["ServerProcess", "decode_output", "server_command"]

log = get_logger(__name__)
WSL = "wsl.exe"
#: The event the server logs once it accepts SSH connections.
LISTENING_EVENT = "server_listening"
STOP_GRACE = 3.0
CREATE_SUSPENDED = 0x00000004
CREATE_NO_WINDOW = 0x08000000
_KILL = getattr(signal, "SIGKILL", signal.SIGTERM)
#: Exit statuses remembered (the newest); ``exits`` counts them all.
EXIT_HISTORY = 20
#: A server that exits within this many seconds without listening failed "at once".
IMMEDIATE_EXIT = 5.0
#: Failed-at-once exits in a row after which the server is reported unavailable.
UNAVAILABLE_AFTER = 3
_LEVELS = {"trace": 5, "debug": 10, "info": 20, "warn": 30, "warning": 30, "error": 40}


def server_command(config: Config, *, own_pid: int, wsl: str = WSL,
                   translate: bool = True, root: str = DEFAULT_ROOT) -> list[str]:
    """The ``wsl.exe --distribution D --exec P server ...`` command line for ``config``
    (``root``: the distribution's automount root, for translating Windows paths).

    Raises:
        ConfigError: a key path cannot be expressed as a WSL path.
    """
    def linux(key: str) -> str:
        path = str(config.path(key))
        if not translate:
            return path
        try:
            return to_wsl_path(path, distribution=config.distribution, root=root)
        except ValueError as exc:
            raise ConfigError(f"invalid {key}={path}: {exc}") from None

    return [
        wsl, "--distribution", config.distribution, "--exec", config.relay_program_path,
        "server",
        "--host", config.host,
        "--port", str(config.ssh_port("client")),  # the port the client connects to
        "--buffer-size", str(config.buffer_size),
        "--poll-interval", format_duration(config.poll_interval),
        "--identity-path", linux("identity_path"),
        "--authorized-keys-path", linux("authorized_keys_path"),
        "--log-level", config.log_level,
        "--parent-process-pid", str(own_pid),
        "--watch-process-termination",
    ]


def decode_output(raw: bytes) -> str:
    """One line of wsl.exe's output as text: UTF-8, or the UTF-16LE that wsl.exe writes its own
    messages in when ``WSL_UTF8`` is not honoured (older WSL builds). A UTF-16LE line split at
    ``\n`` starts with the ``\x00`` that completed the previous line's newline."""
    if b"\x00" in raw:
        body = raw[1:] if raw.startswith(b"\x00") else raw
        if len(body) % 2:
            body += b"\x00"
        return body.decode("utf-16-le", errors="replace").lstrip("\ufeff").rstrip("\r\n\x00")
    return raw.decode("utf-8", errors="replace").rstrip("\r\n")


def _relog(stream: str, raw: bytes, level_cap: int | None = None) -> None:
    """Log one line of the child's output, at the child's own level when it logged JSON
    (at debug when ``level_cap`` is 10: a server that keeps failing is not logged each time)."""
    text = decode_output(raw)
    if not text:
        return
    level = 20
    fields: dict[str, Any] = {"stream": stream, "line": text}
    with contextlib.suppress(ValueError):
        record = json.loads(text)
        if isinstance(record, dict):
            level = _LEVELS.get(str(record.get("level", "info")), 20)
            fields = {"stream": stream, "server": record}
    if level_cap is not None:
        level = min(level, level_cap)
    log.log(level, "server_output", extra=fields)


class ServerProcess:
    """The spawned server: started once, respawned after it dies, stopped with the client."""

    def __init__(self, config: Config, *, backoff: Backoff | None = None,
                 on_unavailable: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.backoff = backoff or Backoff()
        self.on_unavailable = on_unavailable
        #: servers in a row that exited at once, without listening
        self.failures = 0
        #: why the server is unavailable (set after UNAVAILABLE_AFTER failures), else None
        self.unavailable: str | None = None
        #: how many spawned servers ended in all
        self.exits = 0
        self.proc: asyncio.subprocess.Process | None = None
        self.listening = asyncio.Event()
        self.exited = asyncio.Event()
        self.exit_code: int | None = None
        #: exit statuses of the latest spawned servers that ended (kept across respawns)
        self.exit_codes: deque[int] = deque(maxlen=EXIT_HISTORY)
        self.spawns = 0
        self._job: Any = None
        self._root: str | None = None  # the distribution's automount root, read once
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._supervisor: asyncio.Task[None] | None = None

    def command(self) -> list[str]:
        """The command line used to spawn the server.

        Raises:
            TunnelUnavailable: wsl.exe is not on PATH.
        """
        wsl = shutil.which(WSL)
        if wsl is None:
            raise TunnelUnavailable(
                f"cannot spawn the server: {WSL} is not on PATH (is WSL installed?)"
            )
        if self._root is None:
            self._root = automount_root(self.config.distribution)
        return server_command(self.config, own_pid=os.getpid(), wsl=wsl, root=self._root)

    async def start(self) -> None:
        """Spawn the server and keep respawning it when it dies, until :meth:`stop`.

        Raises:
            TunnelUnavailable: the first spawn fails (wsl.exe missing or not executable).
        """
        await self._spawn(self.command())
        self._supervisor = asyncio.create_task(self._supervise(), name="server-supervisor")

    async def _spawn(self, argv: Sequence[str]) -> None:
        self.listening.clear()
        self.exited.clear()
        kwargs: dict[str, Any] = {}
        if sys.platform == "win32":
            # Suspended until it is in the kill-on-close job: nothing it starts can escape.
            kwargs["creationflags"] = CREATE_NO_WINDOW | CREATE_SUSPENDED
        else:
            kwargs["start_new_session"] = True
        try:
            # WSL_UTF8=1: wsl.exe writes its own messages (a distribution that does not
            # start) in UTF-8 instead of UTF-16LE.
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=dict(os.environ, WSL_UTF8="1"), **kwargs,
            )
        except OSError as exc:
            raise TunnelUnavailable(
                f"cannot spawn the server with {argv[0]}: {exc.strerror or exc}"
            ) from None
        if sys.platform == "win32":
            await self._join_job_and_resume(proc, argv[0])
        self.proc = proc
        self.spawns += 1
        self.exit_code = None
        log.log(self._level(logging.INFO), "server_spawned",
                extra={"pid": proc.pid, "argv": list(argv), "spawn": self.spawns})
        for name, stream in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            assert stream is not None
            task = asyncio.create_task(self._pipe(name, stream), name=f"server-{name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _join_job_and_resume(self, proc: asyncio.subprocess.Process, exe: str) -> None:
        """Put the suspended ``proc`` in a new kill-on-close job, then let it run.

        Raises:
            TunnelUnavailable: it cannot be resumed (it is killed).
        """
        from container_desktop_relay.runtime import winjob, winproc

        if self._job is not None:  # the previous child's job; that child is gone
            with contextlib.suppress(Exception):
                self._job.close()
            self._job = None
        try:
            self._job = winjob.assign_kill_on_close(proc.pid)
        except OSError as exc:  # the server still watches our PID and exits without us
            log.error("server_job_failed", extra={"pid": proc.pid, "error": str(exc)})
        try:
            if winproc.resume_process(proc.pid) == 0:
                raise OSError(f"process {proc.pid} has no thread to resume")
        except OSError as exc:
            with contextlib.suppress(OSError):
                proc.kill()
            await proc.wait()
            raise TunnelUnavailable(
                f"cannot start the server with {exe}: resuming it failed: {exc}") from None

    async def _pipe(self, name: str, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line over the stream limit; asyncio has dropped it
                log.warning("server_output_line_too_long", extra={"stream": name})
                continue
            if not line:
                return
            if LISTENING_EVENT.encode() in line:
                self.listening.set()
                if self.unavailable is not None:
                    self.unavailable = None
                    log.info("server_available", extra={"spawn": self.spawns})
            _relog(name, line, None if self._loud() else logging.DEBUG)

    async def _supervise(self) -> None:
        while True:
            proc = self.proc
            assert proc is not None
            started = time.monotonic()
            code = await proc.wait()
            ran = time.monotonic() - started
            self.exit_code = code
            self.exit_codes.append(code)
            self.exits += 1
            self.exited.set()
            if self._stopping:
                return
            if self.listening.is_set() or ran >= IMMEDIATE_EXIT:
                self.failures = 0
                self.backoff.reset()
            else:
                self.failures += 1
            log.log(self._level(logging.ERROR), "server_exited",
                    extra={"pid": proc.pid, "exit_code": code, "ran_s": round(ran, 3),
                           "failures_in_a_row": self.failures})
            if self.failures >= UNAVAILABLE_AFTER:
                reason = (f"the spawned server exited {self.failures} times in a row right "
                          f"after starting (last exit status {code}; its output is logged "
                          "as server_output)")
                if self.unavailable is None:
                    log.error("server_unavailable", extra={"reason": reason})
                self.unavailable = reason
                if self.on_unavailable is not None:
                    self.on_unavailable(reason)
            delay = self.backoff.next()
            log.log(self._level(logging.INFO), "server_respawn_scheduled",
                    extra={"delay_s": round(delay, 3), "attempt": self.failures})
            await asyncio.sleep(delay)
            if self._stopping:
                return
            try:
                await self._spawn(self.command())
            except TunnelUnavailable as exc:
                log.error("server_respawn_failed", extra={"error": str(exc)})

    def _loud(self) -> bool:
        """Whether this round of a failing server is logged (the first three, then one in
        30, as the SSH link's reconnects); a server that works is always logged."""
        return worth_logging(self.failures)

    def _level(self, level: int) -> int:
        return level if self._loud() else logging.DEBUG

    async def wait_listening(self, timeout: float) -> bool:
        """Wait until the server says it listens, it exits, or ``timeout``; True if listening."""
        waits = [asyncio.ensure_future(self.listening.wait()),
                 asyncio.ensure_future(self.exited.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        return self.listening.is_set()

    def terminate(self) -> None:
        """Ask the server (and its process group) to stop; no respawn afterwards."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        self._signal(proc, signal.SIGTERM)

    def _signal(self, proc: asyncio.subprocess.Process, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            if sys.platform == "win32":
                proc.kill()
            else:
                os.killpg(proc.pid, sig)

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Terminate the server, wait up to ``grace`` seconds, then kill it."""
        self.terminate()
        proc = self.proc
        if proc is not None:
            try:
                async with asyncio.timeout(grace):
                    await proc.wait()
            except TimeoutError:
                log.warning("server_killed", extra={"pid": proc.pid, "grace_s": grace})
                self._signal(proc, _KILL)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(grace):
                        await proc.wait()
            # The group may hold more than the leader (wsl.exe's own children).
            if sys.platform != "win32":
                self._signal(proc, _KILL)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._job is not None:
            with contextlib.suppress(Exception):
                self._job.close()
            self._job = None
