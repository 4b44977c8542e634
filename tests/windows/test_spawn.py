"""The client under Wine spawns its server through wsl.exe (a stand-in), as the desktop app
has it do: kill-on-close job, respawn after the server dies, nothing left after a crash."""

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
    WslAgent,
    build_wsl_exe,
    child_pid,
    client_args,
    ensure_dist,
    free_port,
    scaled,
    winpath,
)

from helpers import Keys, wait_for

CLIENT = winpath(HERE / "win_client.py")
MIB = 1024 * 1024


def test_spawn_through_wsl_exe_respawn_and_no_orphans(
        wine: Wine, session_keys: Keys, workdir: Path, targets: Targets) -> None:
    """--distribution/--relay-program-path: wsl.exe runs the dist server; a killed server is
    respawned; a killed client takes wsl.exe (job object) and so the server with it."""
    home = workdir / "spawn"
    bindir = home / "bin"
    build_wsl_exe(bindir / "wsl.exe", wine.python)
    agent = WslAgent(env={"HOME": str(home), "PATH": "/usr/bin:/bin"})
    agent.start()
    port = free_port()
    name = f"cdr-spawn-{os.getpid()}"
    args = client_args(session_keys, home, port, targets.path, f"npipe:////./pipe/{name}",
                       "--distribution", "TestDistro", "--relay-program-path",
                       str(ensure_dist()), "--host", "127.0.0.1", "--port", str(port),
                       "--authorized-keys-path", winpath(session_keys.authorized_keys))
    env = dict(wine.env, WINEPATH=winpath(bindir), CDR_WSL_AGENT_PORT=str(agent.port))
    client = Process.start(wine.command(args, scaled(900)), env=env)
    try:
        client_linux_pid = child_pid(client.popen.pid, scaled(10))
        # The server watches a process that stays alive (this one), so that only the job
        # object can end wsl.exe when the client crashes.
        agent.parent_pid = os.getpid()
        client.err.wait_for(lambda ln: '"client_ready"' in ln, scaled(180), "client_ready")
        assert [s.distribution for s in agent.spawned] == ["TestDistro"]
        assert agent.spawned[0].argv[:2] == [str(ensure_dist()), "server"]
        pipe = rf"\\.\pipe\{name}"
        up = wine.run_json([CLIENT, "upload", pipe, str(MIB)])
        assert up["reply"] == f"{up['sha']} {MIB}"

        first = agent.spawned[0].proc
        os.killpg(first.pid, signal.SIGKILL)
        client.err.wait_for(lambda ln: '"server_exited"' in ln, scaled(60), "server_exited")
        wait_for(lambda: len(agent.spawned) == 2, scaled(60), "respawn through wsl.exe")
        client.err.wait_for(lambda ln: '"ssh_link_up"' in ln, scaled(60), "link to respawn")
        up = wine.run_json([CLIENT, "upload", pipe, str(MIB)])
        assert up["reply"] == f"{up['sha']} {MIB}"

        second = agent.spawned[1]
        os.kill(client_linux_pid, signal.SIGKILL)  # the client crashes: no cleanup runs
        wait_for(lambda: second.standin_gone, scaled(30), "wsl.exe to die with the client")
        wait_for(lambda: second.proc.returncode is not None, scaled(30), "server to stop")
    finally:
        client.stop()
        agent.stop()


def test_wsl_exe_that_fails_at_once_is_backed_off_readable_and_unavailable(
        wine: Wine, session_keys: Keys, workdir: Path, targets: Targets) -> None:
    """A wsl.exe that writes UTF-16LE and exits 1 at once: its message is logged as text
    (and it ran with WSL_UTF8=1), respawns wait longer each time, and after three such exits
    the client reports server_unavailable."""
    home = workdir / "spawn-fail"
    bindir = home / "bin"
    build_wsl_exe(bindir / "wsl.exe", wine.python)
    port = free_port()
    args = client_args(session_keys, home, port, targets.path,
                       f"npipe:////./pipe/cdr-spawnfail-{os.getpid()}",
                       "--distribution", "Nope", "--relay-program-path", "/opt/relay",
                       "--host", "127.0.0.1", "--port", str(port), "--max-retries", "30",
                       "--authorized-keys-path", winpath(session_keys.authorized_keys))
    env = dict(wine.env, WINEPATH=winpath(bindir), CDR_WSL_STANDIN_FAIL="1")
    client = Process.start(wine.command(args, scaled(300)), env=env)
    try:
        client.err.wait_for(lambda ln: '"server_unavailable"' in ln, scaled(120),
                            "server_unavailable")
        client.err.wait_for(lambda ln: '"server_respawn_scheduled"' in ln
                            and '"attempt": 3' in ln, scaled(10), "the third respawn")
        events = [json.loads(ln) for ln in client.err.seen if ln.startswith("{")]
        outputs = [e["line"] for e in events if e["event"] == "server_output"]
        assert outputs[:3] == ["There is no distribution with the supplied name. "
                               "(WSL_UTF8=1)"] * 3
        exits = [e for e in events if e["event"] == "server_exited"]
        assert [(e["exit_code"], e["failures_in_a_row"]) for e in exits[:3]] == [
            (1, 1), (1, 2), (1, 3)]
        delays = [e["delay_s"] for e in events if e["event"] == "server_respawn_scheduled"]
        assert delays[0] <= 0.1 and delays[1] > 0.1 and delays[2] > 0.2, delays
    finally:
        client.stop()
