"""The client's lifecycle under Wine, started as the desktop app starts it: the parent watch
(``--watch-process-termination --parent-process-pid``), the tid file, a clean stop."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from winharness import (
    HERE,
    Process,
    Targets,
    Wine,
    child_pid,
    client_args,
    scaled,
    winpath,
)

from helpers import Keys, RelayServer, wait_for

CLIENT = winpath(HERE / "win_client.py")


def start_client(wine: Wine, keys: Keys, home: Path, server: RelayServer, targets: Targets,
                 name: str, *extra: str) -> tuple[Process, Path]:
    """The client on pipe ``name`` with a --tid-path; returns it once the tid file exists."""
    tid = home / f"{name}.tid"
    args = client_args(keys, home, server.port, targets.path, f"npipe:////./pipe/{name}",
                       "--tid-path", winpath(tid), *extra)
    client = Process.start(wine.command(args, scaled(600)), env=wine.env)
    try:
        client.err.wait_for(lambda ln: '"tid_file_written"' in ln, scaled(180), "tid file")
    except BaseException:
        client.stop()
        raise
    assert tid.exists()
    return client, tid


def watch_started(client: Process) -> dict[str, str]:
    """The client's parent_watch_started event (logged before it turned ready)."""
    lines = [ln for ln in client.err.seen if '"parent_watch_started"' in ln]
    assert len(lines) == 1, client.err.seen
    return dict(json.loads(lines[0]))


def test_client_exits_when_its_windows_parent_is_killed(
        wine: Wine, session_keys: Keys, workdir: Path, server: RelayServer,
        targets: Targets) -> None:
    """Watching a Windows process by handle: once it is killed the client exits within 5 s,
    status 0, no traceback, the pipe name is free at once and no tid file is left."""
    home = workdir / "watch"
    home.mkdir(exist_ok=True)
    parent = Process.start(wine.command([CLIENT, "sleeper", "-"], scaled(600)), env=wine.env)
    client = None
    try:
        parent_pid = json.loads(parent.out.wait_for(lambda ln: ln.startswith("{"), scaled(60),
                                                    "the parent's pid"))["pid"]
        name = f"cdr-watch-{os.getpid()}"
        client, tid = start_client(wine, session_keys, home, server, targets, name,
                                   "--watch-process-termination",
                                   "--parent-process-pid", str(parent_pid))
        started = watch_started(client)
        assert (started["method"], started["parent"].split(" (")[0]) == (
            "handle", f"windows pid {parent_pid}")
        os.killpg(parent.popen.pid, signal.SIGKILL)
        client.err.wait_for(lambda ln: '"parent_gone"' in ln, scaled(5), "parent_gone")
        assert client.popen.wait(timeout=scaled(5)) == 0
        assert not tid.exists()
        assert not any("Traceback" in ln for ln in client.err.seen), client.err.seen
        assert wine.run_json([CLIENT, "serve", rf"\\.\pipe\{name}"]) == {"instances": 1}
    finally:
        if client is not None:
            client.stop()
        parent.stop()


def test_client_started_by_a_windows_program_watches_it_without_a_pid(
        wine: Wine, session_keys: Keys, workdir: Path, server: RelayServer,
        targets: Targets) -> None:
    """Without --parent-process-pid the client watches the Windows process that started it
    (found in a Toolhelp snapshot: os.getppid() needs an API Wine lacks) and exits once that
    one is killed."""
    home = workdir / "watch-ppid"
    home.mkdir(exist_ok=True)
    name = f"cdr-ppid-{os.getpid()}"
    tid = home / f"{name}.tid"
    args = client_args(session_keys, home, server.port, targets.path,
                       f"npipe:////./pipe/{name}", "--tid-path", winpath(tid),
                       "--watch-process-termination")
    launcher = Process.start(wine.command([CLIENT, "launch", "-", *args], scaled(600)),
                             env=wine.env)
    try:
        pids = json.loads(launcher.out.wait_for(lambda ln: ln.startswith("{"), scaled(60),
                                                "the launcher's pids"))
        launcher.err.wait_for(lambda ln: '"tid_file_written"' in ln, scaled(180), "tid file")
        started = watch_started(launcher)
        assert (started["method"], started["parent"].split(" (")[0]) == (
            "handle", f"windows pid {pids['pid']}")
        launcher_wine = child_pid(launcher.popen.pid, scaled(10))
        os.kill(launcher_wine, signal.SIGKILL)  # the launcher alone, not the client
        launcher.err.wait_for(lambda ln: '"parent_gone"' in ln, scaled(5), "parent_gone")
        launcher.err.wait_for(lambda ln: '"shutdown_complete"' in ln, scaled(5),
                              "shutdown_complete")
        wait_for(lambda: not tid.exists(), scaled(5), "the tid file to go")
        assert wine.run_json([CLIENT, "serve", rf"\\.\pipe\{name}"]) == {"instances": 1}
    finally:
        launcher.stop()


def test_sigint_stops_the_client_cleanly(
        wine: Wine, session_keys: Keys, workdir: Path, server: RelayServer,
        targets: Targets) -> None:
    """SIGINT: exit status 0, no traceback, tid file removed."""
    home = workdir / "sigint"
    home.mkdir(exist_ok=True)
    client, tid = start_client(wine, session_keys, home, server, targets,
                               f"cdr-sigint-{os.getpid()}")
    try:
        os.killpg(client.popen.pid, signal.SIGINT)
        assert client.popen.wait(timeout=scaled(30)) == 0
        client.err.join(scaled(10))
        assert any('"shutdown_complete"' in ln for ln in client.err.seen), client.err.seen
        assert not any("Traceback" in ln for ln in client.err.seen), client.err.seen
        assert not tid.exists()
    finally:
        client.stop()


def test_a_watch_that_cannot_work_stops_the_client_cleanly(
        wine: Wine, session_keys: Keys, workdir: Path, server: RelayServer,
        targets: Targets) -> None:
    """Started from Linux (no Windows parent: PID 0 in the snapshot) without
    --parent-process-pid, the watch cannot work: parent_watch_failed is logged with the hint,
    and the client stops with status 0, no traceback, no tid file (a stale one is gone)."""
    home = workdir / "watch-fail"
    home.mkdir(exist_ok=True)
    name = f"cdr-watchfail-{os.getpid()}"
    tid = home / f"{name}.tid"
    tid.write_text("4242:4243")  # left by a killed relay
    args = client_args(session_keys, home, server.port, targets.path,
                       f"npipe:////./pipe/{name}", "--tid-path", winpath(tid),
                       "--watch-process-termination")
    client = Process.start(wine.command(args, scaled(300)), env=wine.env)
    try:
        assert client.popen.wait(timeout=scaled(60)) == 0
        client.err.join(scaled(10))
        failed = [json.loads(ln) for ln in client.err.seen if '"parent_watch_failed"' in ln]
        assert len(failed) == 1 and "pass --parent-process-pid" in failed[0]["error"]
        assert any('"shutdown_complete"' in ln for ln in client.err.seen), client.err.seen
        assert not any("Traceback" in ln for ln in client.err.seen), client.err.seen
        assert not tid.exists()
    finally:
        client.stop()
