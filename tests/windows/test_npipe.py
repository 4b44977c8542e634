"""The named-pipe endpoint under Wine: Windows pipe clients → relay → Linux server → Unix socket."""

from __future__ import annotations

import time

from conftest import Keys, PipeRelay, start_pipe_relay, start_server
from winharness import HERE, Targets, Wine, ensure_dist, scaled, winpath

CLIENT = winpath(HERE / "win_client.py")
MIB = 1024 * 1024


def wait_records(targets: Targets, kind: str, count: int, timeout: float) -> list:
    """The target records of ``kind`` once ``count`` of them saw EOF (deadline ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        done = [r for r in targets.records if r.kind == kind and r.eof]
        if len(done) >= count or time.monotonic() > deadline:
            return done
        time.sleep(0.05)


def test_upload_16mib_byte_exact_and_client_half_close(
        wine: Wine, pipe_relay: PipeRelay, targets: Targets) -> None:
    """16 MiB written into the pipe arrive intact; the client's CloseWrite reaches the target
    as EOF while the reply still flows back."""
    result = wine.run_json([CLIENT, "upload", pipe_relay.pipes["sink"], str(16 * MIB)])
    assert result["reply"] == f"{result['sha']} {16 * MIB}"


def test_download_16mib_byte_exact_and_target_half_close(
        wine: Wine, pipe_relay: PipeRelay, targets: Targets) -> None:
    """16 MiB from the target arrive intact; its half-close reads as EOF in the pipe client,
    which can still write afterwards."""
    before = len([r for r in targets.records if r.kind == "source"])
    result = wine.run_json([CLIENT, "download", pipe_relay.pipes["source"], str(16 * MIB)])
    records = wait_records(targets, "source", before + 1, scaled(30))
    record = records[-1]
    assert (result["size"], result["sha"]) == (record.sent, record.sent_sha)
    assert record.after_eof == b"written after EOF"


def test_300_concurrent_connections_never_busy(
        wine: Wine, pipe_relay: PipeRelay, targets: Targets) -> None:
    """300 clients connecting at once all get an instance (no ERROR_PIPE_BUSY) and echo."""
    result = wine.run_json([CLIENT, "burst", pipe_relay.pipes["echo"], "300", "4096"],
                           timeout=300)
    assert result == {**result, "ok": 300, "busy": 0, "errors": []}


def test_pipe_name_in_use_is_refused(wine: Wine, pipe_relay: PipeRelay) -> None:
    """A second process cannot serve (or join) a pipe name the relay serves."""
    name = pipe_relay.pipes["echo"]
    result = wine.run_json([CLIENT, "conflict", name])
    assert result["refused"] == f"named pipe {name} already exists (owned by another process)"


def test_dacl_read_back_is_the_intended_sddl(wine: Wine, pipe_relay: PipeRelay) -> None:
    """The pipe's stored DACL, read by pywin32 in another process, is SYSTEM+Admins+user."""
    result = wine.run_json([CLIENT, "info", pipe_relay.pipes["echo"]])
    sid = result["user_sid"]
    assert sid.startswith("S-1-5-21-")
    expected = f"D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;{sid})"
    assert result["dacl"] == expected
    assert set(pipe_relay.ready["dacl"].values()) == {expected}
    assert result["message_type"] is True


def test_chain_with_the_dist_executable_as_server(
        wine: Wine, keys: Keys, targets: Targets) -> None:
    """Pipe → relay → the PyInstaller server (make dist) → Unix socket, byte-exact both ways."""
    server, port = start_server([str(ensure_dist())], keys, env={"HOME": str(keys.identity.parent)})
    relay = start_pipe_relay(wine, keys, port, targets, "dist")
    try:
        up = wine.run_json([CLIENT, "upload", relay.pipes["sink"], str(4 * MIB)])
        assert up["reply"] == f"{up['sha']} {4 * MIB}"
        before = len([r for r in targets.records if r.kind == "source"])
        down = wine.run_json([CLIENT, "download", relay.pipes["source"], str(4 * MIB)])
        record = wait_records(targets, "source", before + 1, scaled(30))[-1]
        assert (down["size"], down["sha"]) == (record.sent, record.sent_sha)
    finally:
        relay.process.stop()
        server.stop()
