"""The relay's client role as a real process, and a stand-in wsl.exe for the spawn path."""

from __future__ import annotations

import contextlib
import stat
import sys
from pathlib import Path
from typing import TypeVar

import pytest

from helpers import Keys, Proc, relay_cmd, relay_env, wait_for

T = TypeVar("T")

WSL_STANDIN = """#!/bin/sh
# Stand-in for Windows' wsl.exe: `wsl.exe --distribution D --exec PROGRAM ARGS...` runs
# PROGRAM ARGS... here, recording the distribution it was asked for.
[ "$1" = "--distribution" ] || { echo "wsl.exe stand-in: expected --distribution" >&2; exit 2; }
echo "$2" > "$(dirname "$0")/distribution"
shift 2
[ "$1" = "--exec" ] || { echo "wsl.exe stand-in: expected --exec" >&2; exit 2; }
shift
exec "$@"
"""


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def install_wsl_standin(directory: Path) -> tuple[Path, Path]:
    """A ``wsl.exe`` stand-in in ``directory`` and a relay program it can run.

    Returns (bin directory to put first on PATH, relay program path).
    """
    bindir = directory / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    _executable(bindir / "wsl.exe", WSL_STANDIN)
    program = _executable(
        directory / "relay-linux",
        f'#!/bin/sh\nexec {sys.executable} -m container_desktop_relay "$@"\n',
    )
    return bindir, program


class ClientProc:
    """The relay client on a Unix socket, pointed at ``ssh://tester@127.0.0.1:PORT/REMOTE``."""

    def __init__(
        self,
        keys: Keys,
        workdir: Path,
        port: int,
        remote: str,
        *extra: str,
        name: str = "client",
        user: str = "tester",
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> None:
        self.socket = workdir / f"{name}.sock"
        self.tid = workdir / f"{name}.tid"
        self.known_hosts = workdir / "known_hosts"
        args = [
            "client",
            "--listen",
            f"unix://{self.socket}",
            "--ssh-connection",
            f"ssh://{user}@127.0.0.1:{port}{remote}",
            "--identity-path",
            str(keys.identity),
            "--known-hosts-path",
            str(self.known_hosts),
            "--tid-path",
            str(self.tid),
            "--log-level",
            "debug",
            *extra,
        ]
        #: the client's own flags (without the ``client`` command), e.g. to hand to doctor
        self.args = args[1:]
        self.proc = Proc(relay_cmd(*args), workdir / f"{name}.log", env=env or relay_env())
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.proc.stop()
                raise

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait for the tid file (written only once the client is ready)."""
        try:
            wait_for(
                lambda: self.tid.exists() or not self.proc.alive(),
                timeout,
                "client readiness (tid file)",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; client log tail:\n{self.log()[-3000:]}") from None
        assert self.proc.alive(), f"client exited:\n{self.proc.log()}"

    def log(self) -> str:
        return self.proc.log()

    def stop(self) -> int | None:
        return self.proc.stop()


def owned(request: pytest.FixtureRequest, thing: T) -> T:
    """Register ``thing`` (anything with ``stop()``) to be stopped when the test ends, whatever
    happens; returns it."""

    def stop() -> None:
        with contextlib.suppress(Exception):
            thing.stop()  # type: ignore[attr-defined]

    request.addfinalizer(stop)
    return thing


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid``."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


__all__ = ["ClientProc", "child_pids", "install_wsl_standin", "owned", "pid_alive"]
