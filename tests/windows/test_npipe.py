"""The relay client as a Windows program under Wine: Windows pipe clients → named pipe → client
→ SSH → the Linux server → Unix socket."""

from __future__ import annotations

import json
from pathlib import Path

from winharness import (
    HERE,
    PipeClient,
    Process,
    Targets,
    Wine,
    client_args,
    ensure_dist,
    scaled,
    start_pipe_client,
    winpath,
)

from helpers import Keys, Podman, Proc, RelayServer, free_port, wait_for

CLIENT = winpath(HERE / "win_client.py")
MIB = 1024 * 1024


def test_upload_16mib_byte_exact_and_client_half_close(
        wine: Wine, pipe_client: PipeClient) -> None:
    """16 MiB written into the pipe arrive intact; the pipe client's CloseWrite reaches the
    target as EOF while the target's reply still flows back."""
    result = wine.run_json([CLIENT, "upload", pipe_client.pipe, str(16 * MIB)])
    assert result["reply"] == f"{result['sha']} {16 * MIB}"


def test_download_16mib_byte_exact_and_target_half_close(
        wine: Wine, pipe_client: PipeClient, targets: Targets) -> None:
    """16 MiB from the target arrive intact; its half-close reads as EOF (a zero-length
    message) in the pipe client, which can still write afterwards."""
    before = len(targets.done("source"))
    result = wine.run_json([CLIENT, "download", pipe_client.pipe, str(16 * MIB)])
    wait_for(lambda: len(targets.done("source")) > before, scaled(30), "source record")
    record = targets.done("source")[-1]
    assert (result["size"], result["sha"]) == (record.sent, record.sent_sha)
    assert record.after_eof == b"written after EOF"


def test_client_that_closes_without_half_close_is_delivered_then_ended(
        wine: Wine, pipe_client: PipeClient, targets: Targets) -> None:
    """A pipe client that writes and closes its handle (no CloseWrite): the target gets every
    byte and EOF, as after a half-close; the answer, which nobody can read, ends the
    connection with that reason (a half-closed client would get it and end with "done")."""
    before = len(targets.done("sink"))
    result = wine.run_json([CLIENT, "abandon", pipe_client.pipe, "12345"])
    wait_for(lambda: len(targets.done("sink")) > before, scaled(30), "the request at the sink")
    record = targets.done("sink")[-1]
    assert (record.received, record.received_sha) == (12345, result["shas"][0])
    line = pipe_client.process.err.wait_for(
        lambda ln: '"connection_closed"' in ln and f'"bytes_up": {result["sent"]},' in ln,
        scaled(30), "connection_closed of the abandoned connection")
    assert json.loads(line)["reason"] == (
        "client error: the pipe client closed its handle; the answer cannot be delivered")


def test_20_of_20_write_then_close_requests_reach_the_target(
        wine: Wine, pipe_client: PipeClient, targets: Targets) -> None:
    """20 clients at once write a request and close the handle at once (most before their SSH
    channel is even open): all 20 requests reach the target whole (sha256)."""
    before = len(targets.done("sink"))
    result = wine.run_json([CLIENT, "abandon", pipe_client.pipe, "65536", "20"])
    wait_for(lambda: len(targets.done("sink")) >= before + 20, scaled(60), "20 requests")
    got = sorted((r.received, r.received_sha) for r in targets.done("sink")[before:])
    assert got == sorted((65536, sha) for sha in result["shas"])


def test_write_then_close_while_the_link_is_down_is_delivered_once_it_returns(
        wine: Wine, session_keys: Keys, workdir: Path, targets: Targets) -> None:
    """Clients that write and close their handle while the SSH link is down (so long before
    their channel can open): once the server is back, all their requests reach the target
    whole. (Closing the connection at the client's close would drop every one of them.)"""
    home = workdir / "linkdown"
    (home / "a").mkdir(parents=True, exist_ok=True)
    (home / "b").mkdir(exist_ok=True)
    port = free_port()
    server = RelayServer(session_keys, home / "a", port=port)
    client = start_pipe_client(wine, session_keys, home, port, targets.path, "linkdown",
                               "--ssh-timeout", "120s")
    restarted = None
    try:
        server.stop()
        client.process.err.wait_for(lambda ln: '"ssh_link_down"' in ln, scaled(30),
                                    "ssh_link_down")
        before = len(targets.done("sink"))
        result = wine.run_json([CLIENT, "abandon", client.pipe, "4096", "5"])
        wait_for(lambda: sum('"connection_waiting_for_link"' in ln
                             for ln in client.process.err.seen) == 5, scaled(30),
                 "the 5 connections waiting for the link")
        restarted = RelayServer(session_keys, home / "b", port=port)
        wait_for(lambda: len(targets.done("sink")) >= before + 5, scaled(60),
                 "the 5 requests at the sink")
        got = sorted((r.received, r.received_sha) for r in targets.done("sink")[before:])
        assert got == sorted((4096, sha) for sha in result["shas"])
    finally:
        client.stop()
        if restarted is not None:
            restarted.stop()
        server.stop()


def test_backpressure_pipe_reads_pause_while_the_target_stalls(
        wine: Wine, pipe_client: PipeClient, targets: Targets) -> None:
    """While the target reads nothing, the relay stops reading the pipe (the writer blocks
    after a few MiB instead of pushing all 64 MiB into memory); then all arrive intact."""
    size = 64 * MIB
    proc = Process.start(wine.command([CLIENT, "stall", pipe_client.pipe, str(size)],
                                      scaled(600)), env=wine.env)
    try:
        report = json.loads(proc.out.wait_for(lambda ln: ln.startswith("{"), scaled(120),
                                              "stall report"))
        assert "stalled_at" in report, f"all {size} bytes were accepted: {report}"
        print(f"writes blocked after {report['stalled_at']} bytes")
        assert report["stalled_at"] < 16 * MIB
        targets.release()
        result = json.loads(proc.out.wait_for(lambda ln: ln.startswith("{"), scaled(300),
                                              "result"))
        assert result["reply"] == f"{result['sha']} {size}"
    finally:
        proc.stop()


def test_300_concurrent_connections_never_busy(wine: Wine, pipe_client: PipeClient) -> None:
    """300 clients connecting at once all get a pipe instance (no ERROR_PIPE_BUSY) and echo."""
    result = wine.run_json([CLIENT, "burst", pipe_client.pipe, "300", "4096"], timeout=300)
    assert result == {**result, "ok": 300, "busy": 0, "errors": []}


def test_pipe_name_in_use_is_refused(wine: Wine, pipe_client: PipeClient,
                                     session_keys: Keys, workdir: Path,
                                     server: RelayServer, targets: Targets) -> None:
    """A second client cannot serve (or join) the pipe name the first one serves."""
    args = client_args(session_keys, workdir, server.port, targets.path, pipe_client.url)
    done = wine.run(args, timeout=180)
    assert done.returncode != 0
    fatal = [json.loads(ln) for ln in done.stderr.splitlines() if '"fatal"' in ln]
    assert fatal, done.stderr + done.stdout  # parsed: the raw line escapes the pipe's \\
    assert (f"named pipe {pipe_client.pipe} already exists (owned by another process)"
            in fatal[-1]["message"]), done.stderr


def test_dacl_read_back_is_the_intended_sddl(wine: Wine, pipe_client: PipeClient) -> None:
    """The pipe's stored DACL, read with pywin32 by another process, is SYSTEM+Admins+user,
    and the pipe is message-type (what go-winio needs to offer CloseWrite)."""
    result = wine.run_json([CLIENT, "info", pipe_client.pipe])
    sid = result["user_sid"]
    assert sid.startswith("S-1-5-21-")
    assert result["dacl"] == f"D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;{sid})"
    assert result["message_type"] is True


def test_chain_with_the_dist_executable_as_server(
        wine: Wine, session_keys: Keys, workdir: Path, targets: Targets) -> None:
    """Pipe → client → the PyInstaller server (make dist, empty environment) → Unix socket,
    byte-exact both ways."""
    home = workdir / "dist"
    home.mkdir(exist_ok=True)
    port = free_port()
    server = Proc([str(ensure_dist()), "server", "--host", "127.0.0.1", "--port", str(port),
                   "--identity-path", str(session_keys.identity),
                   "--authorized-keys-path", str(session_keys.authorized_keys),
                   "--health-check-enabled=false", "--metrics-enabled=false",
                   "--log-level", "info"], home / "server.log", env={"HOME": str(home)})
    client = None
    try:
        wait_for(lambda: '"server_listening"' in server.log() or not server.alive(),
                 scaled(60), "dist server to listen")
        assert server.alive(), server.log()
        client = start_pipe_client(wine, session_keys, home, port, targets.path, "dist")
        up = wine.run_json([CLIENT, "upload", client.pipe, str(4 * MIB)])
        assert up["reply"] == f"{up['sha']} {4 * MIB}"
        before = len(targets.done("source"))
        down = wine.run_json([CLIENT, "download", client.pipe, str(4 * MIB)])
        wait_for(lambda: len(targets.done("source")) > before, scaled(30), "source record")
        record = targets.done("source")[-1]
        assert (down["size"], down["sha"]) == (record.sent, record.sent_sha)
    finally:
        if client is not None:
            client.stop()
        server.stop()


def test_docker_py_on_windows_reaches_podman(wine: Wine, session_keys: Keys, workdir: Path,
                                             server: RelayServer, podman: Podman) -> None:
    """docker-py's own npipe transport → pipe → client → server → Podman: version, ping, and a
    container run with its output."""
    home = workdir / "podman"
    home.mkdir(exist_ok=True)
    client = start_pipe_client(wine, session_keys, home, server.port, str(podman.socket),
                               "podman")
    try:
        result = wine.run_json([CLIENT, "dockerpy", client.pipe], timeout=300)
    finally:
        client.stop()
    assert result["ping"] is True
    assert result["version"] and "Podman Engine" in result["components"]
    assert result["output"] == "hello from podman\n"
