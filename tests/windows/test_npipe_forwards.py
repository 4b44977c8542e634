"""One Windows client (under Wine) serving two named pipes, each forwarded to its own Unix
socket over one SSH connection."""

from __future__ import annotations

import json
import os
from pathlib import Path

from winharness import HERE, Process, Targets, Wine, scaled, winpath

from helpers import Keys, RelayServer, wait_for

CLIENT = winpath(HERE / "win_client.py")
MIB = 1024 * 1024


def test_two_named_pipes_over_one_ssh_connection(wine: Wine, session_keys: Keys,
                                                 workdir: Path) -> None:
    """Two --forward npipe:// endpoints: 8 MiB into each at once arrive byte-exact at each
    pipe's own target, over one SSH login, and the tid file is written."""
    base = workdir / "fw"
    base.mkdir()
    targets = [Targets(base / name) for name in ("t1", "t2")]
    for t in targets:
        t.directory.mkdir()
        t.start()
    server = RelayServer(session_keys, base)
    tid = base / "client.tid"
    pipes = [f"cdr-fw{n}-{os.getpid()}" for n in (1, 2)]
    args = ["-m", "container_desktop_relay", "client",
            "--ssh-connection", f"ssh://relay@127.0.0.1:{server.port}",
            "--forward", f"npipe:////./pipe/{pipes[0]}={targets[0].path}",
            "--forward", f"npipe:////./pipe/{pipes[1]}={targets[1].path}",
            "--identity-path", winpath(session_keys.identity),
            "--known-hosts-path", winpath(base / "known_hosts"),
            "--tid-path", winpath(tid), "--log-level", "info"]
    client = Process.start(wine.command(args, scaled(1800)), env=wine.env)
    uploads: list[Process] = []
    try:
        client.err.wait_for(lambda ln: '"client_ready"' in ln, scaled(180), "client_ready")
        wait_for(tid.exists, scaled(30), "tid file")
        for pipe in pipes:
            uploads.append(Process.start(wine.command(
                [CLIENT, "upload", rf"\\.\pipe\{pipe}", str(8 * MIB)], scaled(300)),
                env=wine.env))
        for up, t in zip(uploads, targets, strict=True):
            line = up.out.wait_for(lambda ln: ln.startswith("{"), scaled(300), "upload result")
            result = json.loads(line)
            assert result["reply"] == f"{result['sha']} {8 * MIB}"
            wait_for(lambda t=t: len(t.done("sink")) == 1, scaled(30), "sink record")
        assert server.proc.log().count('"ssh_authenticated"') == 1
    finally:
        for proc in (*uploads, client):
            proc.stop()
        server.stop()
        for t in targets:
            t.stop()
