"""Disk-side faults: unwritable known_hosts or tid-path directory, missing or unsafe key files.

Each gives a clear one-line error (or, for known_hosts, a clear logged error while the relay
keeps working) and never overwrites or truncates what is there.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from helpers import (
    EchoTarget,
    Keys,
    Proc,
    RelayServer,
    exchange,
    record,
    relay_cmd,
    relay_env,
    run_relay,
    sha,
    stopping,
    wait_for,
)

pytestmark = pytest.mark.e2e


def client_args(keys: Keys, port: int, remote: str, tmp: Path, *extra: str) -> list[str]:
    return ["client", "--listen", f"unix://{tmp}/c.sock", "--ssh-connection",
            f"ssh://tester@127.0.0.1:{port}{remote}", "--identity-path", str(keys.identity),
            "--known-hosts-path", str(tmp / "known_hosts"), "--log-level", "error",
            "--max-retries", "1", *extra]


def test_unwritable_tid_directory_exit_2(relay_server: RelayServer, keys: Keys, tmp: Path,
                                         echo: EchoTarget) -> None:
    """A --tid-path whose directory cannot hold files stops the client at once, exit 2."""
    blocker = tmp / "not-a-dir"
    blocker.write_text("keep me")
    result = run_relay(*client_args(keys, relay_server.port, str(echo.path), tmp,
                                    "--tid-path", str(blocker / "relay.tid")))
    assert result.returncode == 2, result.stderr
    assert "invalid tid_path=" in result.stderr and "cannot create files" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert blocker.read_text() == "keep me"
    assert not (tmp / "c.sock").exists()
    record("disk", "tid-path directory not writable", 1, "exit 2, one line, nothing created")


def test_unusable_known_hosts_is_a_clear_error(relay_server: RelayServer, keys: Keys,
                                               echo: EchoTarget, tmp: Path) -> None:
    """A known_hosts that cannot be read stops the client with one line naming it; the file
    in the way is untouched. (A readable but unwritable one is covered in test_hostkeys:
    the first-use key is then trusted once and the failure logged.)"""
    blocker = tmp / "file"
    original = b"# not a directory, and not to be touched\n"
    blocker.write_bytes(original)
    result = run_relay(*client_args(keys, relay_server.port, str(echo.path), tmp,
                                    "--known-hosts-path", str(blocker / "known_hosts")))
    assert result.returncode == 2, result.stderr
    assert f"cannot read known hosts {blocker / 'known_hosts'}" in result.stderr
    assert blocker.read_bytes() == original
    record("disk", "known_hosts unusable", 1, "exit 2, one line naming the file; untouched")


def test_missing_and_unsafe_key_files_exit_2(relay_server: RelayServer, keys: Keys,
                                             echo: EchoTarget, tmp: Path) -> None:
    """Client: a missing identity and an identity readable by others are refused, exit 2,
    and the key file is left as it was."""
    missing = run_relay(*client_args(keys, relay_server.port, str(echo.path), tmp,
                                     "--identity-path", str(tmp / "nope")))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    before = keys.identity.read_bytes()
    keys.identity.chmod(0o644)
    unsafe = run_relay(*client_args(keys, relay_server.port, str(echo.path), tmp))
    assert unsafe.returncode == 2 and "chmod 600" in unsafe.stderr
    assert keys.identity.read_bytes() == before
    record("disk", "identity key missing / readable by others", 2,
           "exit 2, one line naming the file and the fix; key untouched")


# Runs the relay with RLIMIT_FSIZE at the size of the file named first: appending to it then
# fails with EFBIG (Python ignores SIGXFSZ), which is how a known_hosts that can be read but not
# written behaves for a root user, whom file modes do not stop.
FSIZE_WRAPPER = """
import os, resource, sys
limit = os.path.getsize(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
os.execv(sys.argv[2], sys.argv[2:])
"""


def test_unwritable_known_hosts_is_logged_and_the_key_trusted_once(
        relay_server: RelayServer, keys: Keys, echo: EchoTarget, tmp: Path) -> None:
    """A known_hosts that can be read but not appended to: the client logs
    host_key_not_recorded naming the file, carries the connection, and leaves the file as it
    was (docs/reliability.md)."""
    known_hosts = tmp / "known_hosts"
    original = b"".join(b"# padding line %06d of a user's known_hosts\n" % i
                        for i in range(8000))  # ~350 KB: room for the client's own log
    known_hosts.write_bytes(original)
    argv = [sys.executable, "-c", FSIZE_WRAPPER, str(known_hosts),
            *relay_cmd(*client_args(keys, relay_server.port, str(echo.path), tmp))]
    argv[argv.index("--log-level") + 1] = "info"
    client = Proc(argv, tmp / "client.log", env=relay_env())
    with stopping(client):
        event = wait_for(lambda: _event(client, "host_key_not_recorded") or not client.alive(),
                         30, "host_key_not_recorded")
        assert client.alive(), client.log()
        assert str(known_hosts) in event["error"]
        wait_for(lambda: (tmp / "c.sock").exists(), 30, "the client socket")
        payload = os.urandom(200_000)
        assert exchange(tmp / "c.sock", payload) == (len(payload), sha(payload))
    assert known_hosts.read_bytes() == original
    record("disk", "known_hosts readable, not writable", 1,
           "host_key_not_recorded logged, connection carried, file untouched")


def _event(proc: Proc, name: str) -> dict[str, object] | None:
    """The first JSON log record of ``proc`` whose event is ``name``."""
    for line in proc.log().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == name:
                return record  # type: ignore[no-any-return]
    return None
