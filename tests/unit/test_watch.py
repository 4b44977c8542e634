"""Parent watching: local PIDs, tasklist.exe under WSL, failing probes logged not ignored."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
from pathlib import Path

import pytest

from container_desktop_relay.runtime.watch import (
    LocalPidProbe,
    ProbeError,
    TasklistProbe,
    watch_parent,
    watch_process,
    watched_parent,
)


def fake_tasklist(tmp_path: Path, body: str) -> str:
    path = tmp_path / "tasklist.exe"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_local_pid_probe() -> None:
    """A live PID is alive; a reaped one is not."""
    child = subprocess.Popen(["sleep", "30"])
    probe = LocalPidProbe(child.pid)
    assert asyncio.run(probe.alive())
    child.kill()
    child.wait()
    assert not asyncio.run(probe.alive())
    assert asyncio.run(LocalPidProbe(-1).alive())


def test_tasklist_probe_parses_csv(tmp_path: Path) -> None:
    """tasklist.exe CSV output with the PID means alive; the 'no tasks' line means gone."""
    alive = fake_tasklist(tmp_path, 'echo \'"Docker Desktop.exe","4242","Console","1","10 K"\'\n')
    assert asyncio.run(TasklistProbe(4242, alive).alive())
    gone = fake_tasklist(tmp_path, 'echo "INFO: No tasks are running which match the criteria."\n')
    assert not asyncio.run(TasklistProbe(4242, gone).alive())
    # a PID that merely contains the digits is not a match
    other = fake_tasklist(tmp_path, 'echo \'"x.exe","42420","Console","1","1 K"\'\n')
    assert not asyncio.run(TasklistProbe(4242, other).alive())


def test_tasklist_failures_raise(tmp_path: Path) -> None:
    """A failing or missing tasklist.exe raises ProbeError (never 'gone')."""
    failing = fake_tasklist(tmp_path, "echo boom >&2; exit 3\n")
    with pytest.raises(ProbeError, match="boom"):
        asyncio.run(TasklistProbe(1, failing).alive())
    with pytest.raises(ProbeError, match="cannot run"):
        asyncio.run(TasklistProbe(1, str(tmp_path / "missing.exe")).alive())


def test_watch_logs_failures_once_and_fires_when_gone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing probe is logged once and not treated as gone; a gone parent fires once."""
    state = tmp_path / "n"
    state.write_text("0")
    script = fake_tasklist(
        tmp_path,
        f'n=$(cat {state}); echo $((n+1)) > {state}\n'
        'if [ "$n" -lt 3 ]; then echo fail >&2; exit 1; fi\n'
        'if [ "$n" -lt 5 ]; then echo \'"a.exe","7","C","1","1 K"\'; exit 0; fi\n'
        'echo "INFO: No tasks"\n',
    )
    fired: list[int] = []
    caplog.set_level(logging.INFO, logger="container_desktop_relay")

    async def run() -> None:
        async with asyncio.timeout(20):
            await watch_parent(TasklistProbe(7, script), 0.01, lambda: fired.append(1))

    asyncio.run(run())
    events = [r.getMessage() for r in caplog.records]
    assert fired == [1]
    assert events.count("parent_watch_failing") == 1
    assert events.count("parent_watch_recovered") == 1
    assert events[-1] == "parent_gone"
    assert os.path.exists(script)


def test_local_pid_is_waited_on_without_polling(caplog: pytest.LogCaptureFixture) -> None:
    """A given local PID is watched through a pidfd: the watch fires once the child exits,
    though the poll interval is an hour."""
    caplog.set_level(logging.INFO, logger="container_desktop_relay")
    child = subprocess.Popen(["sleep", "30"])
    ended: list[str] = []

    async def run() -> None:
        task = asyncio.create_task(watch_process(child.pid, 3600.0, ended.append))
        await asyncio.sleep(0)
        assert not task.done()
        child.kill()
        async with asyncio.timeout(10):
            await task

    try:
        asyncio.run(run())
    finally:
        child.kill()
        child.wait()
    assert ended == ["parent process exited"]
    started = [r for r in caplog.records if r.getMessage() == "parent_watch_started"]
    assert [getattr(r, "method", None) for r in started] == ["pidfd"]


def test_a_failing_watch_is_logged_and_ends_the_relay(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A watcher that breaks (as os.kill(pid, 0) did under Wine) is logged once and asks for
    shutdown instead of dying silently or raising at exit."""
    def broken(pid: int) -> LocalPidProbe:
        raise OSError(12, "The access code is invalid")

    monkeypatch.setattr("container_desktop_relay.runtime.watch.select_probe", broken)
    caplog.set_level(logging.INFO, logger="container_desktop_relay")
    ended: list[str] = []
    asyncio.run(watch_process(4242, 0.01, ended.append))
    assert ended == ["parent watch failed"]
    failed = [r for r in caplog.records if r.getMessage() == "parent_watch_failed"]
    assert len(failed) == 1 and "access code is invalid" in getattr(failed[0], "error", "")


@pytest.mark.parametrize(
    ("frozen", "exe", "parent_name", "expected"),
    [
        # python.exe -m container_desktop_relay, started by a python.exe launcher: not frozen,
        # so the launcher is the parent although it runs the same image
        (False, "C:\\Python312\\python.exe", "python.exe", 10),
        # the one-file .exe: its bootloader (same image, any case) started this process
        (True, "C:\\Relay\\Container-Desktop-Relay.exe", "container-desktop-relay.exe", 5),
        # a frozen build started by the app itself (a one-folder build)
        (True, "C:\\Relay\\container-desktop-relay.exe", "Container Desktop.exe", 10),
    ],
)
def test_watched_parent_skips_a_one_file_bootloader(
        frozen: bool, exe: str, parent_name: str, expected: int) -> None:
    """Without a PID the parent is watched; in a one-file build the parent is the bootloader,
    which lives exactly as long as the relay, so its parent (the app) is watched instead."""
    parents = {42: 10, 10: 5, 5: 1}
    names = {10: parent_name, 5: "Container Desktop.exe"}
    assert watched_parent(42, parents.__getitem__, lambda pid: names.get(pid, ""),
                          frozen=frozen, exe=exe) == expected
