"""One client, several forwards: each local endpoint reaches its own remote socket over one link."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from helpers import (
    EchoTarget,
    Keys,
    Proc,
    RelayServer,
    exchange,
    fatal,
    relay_cmd,
    relay_env,
    run_relay,
    sha,
    stopping,
    wait_for,
)
from obs_helpers import bound_ports, get_json

pytestmark = pytest.mark.e2e

MiB = 1 << 20


def start_client(keys: Keys, tmp: Path, *args: str) -> Proc:
    """The client role with ``args`` (its forwards), its identity and known_hosts in ``tmp``."""
    argv = relay_cmd("client", "--identity-path", str(keys.identity),
                     "--known-hosts-path", str(tmp / "known_hosts"),
                     "--tid-path", str(tmp / "client.tid"), "--log-level", "debug", *args)
    return Proc(argv, tmp / "client.log", env=relay_env())


def log_events(proc: Proc, event: str) -> list[dict[str, object]]:
    """The JSON log records of ``proc`` whose event is ``event``."""
    return [json.loads(line) for line in proc.log().splitlines()
            if f'"{event}"' in line and line.startswith("{")]


def both_at_once(paths: list[Path], payload: bytes) -> list[tuple[int, str]]:
    """Echo ``payload`` through every path concurrently; the (length, sha256) of each."""
    results: list[tuple[int, str] | BaseException] = [AssertionError("not run")] * len(paths)

    def run(i: int) -> None:
        try:
            results[i] = exchange(paths[i], payload)
        except BaseException as exc:  # reported below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


def check_two_forwards(server: RelayServer, client: Proc, tmp: Path,
                       echoes: list[EchoTarget]) -> None:
    """Both forwards carry 8 MiB at once, byte-exact, each to its own target, over one login."""
    wait_for(lambda: (tmp / "client.tid").exists() or not client.alive(), 30, "tid file")
    assert client.alive(), client.log()
    ready = log_events(client, "client_ready")
    assert len(ready) == 1 and len(ready[0]["forwards"]) == 2  # type: ignore[arg-type]
    assert ready[0]["remote"] == f"ssh://tester@127.0.0.1:{server.port}"
    before = [e.connections for e in echoes]
    payload = os.urandom(8 * MiB)
    locals_ = [tmp / "a.sock", tmp / "b.sock"]
    assert both_at_once(locals_, payload) == [(len(payload), sha(payload))] * 2
    assert [e.connections - b for e, b in zip(echoes, before, strict=True)] == [1, 1]
    assert len(log_events(server.proc, "ssh_authenticated")) == 1
    closed = wait_for(lambda: len(log_events(client, "connection_closed")) == 2
                      and log_events(client, "connection_closed"), 10, "close logs")
    assert sorted(str(c["endpoint"]) for c in closed) == [f"unix://{p}" for p in locals_]
    assert all(c["bytes_up"] == c["bytes_down"] == 8 * MiB for c in closed)


def test_two_forwards_from_flags(relay_server: RelayServer, keys: Keys, tmp: Path) -> None:
    """--forward twice: two local sockets, two remote sockets, one SSH connection, tid file."""
    echoes = [EchoTarget(tmp / "e1.sock"), EchoTarget(tmp / "e2.sock")]
    client = start_client(keys, tmp, "--ssh-connection",
                          f"ssh://tester@127.0.0.1:{relay_server.port}",
                          "--forward", f"unix://{tmp / 'a.sock'}={echoes[0].path}",
                          "--forward", f"unix://{tmp / 'b.sock'}={echoes[1].path}")
    with stopping(client, *echoes):
        check_two_forwards(relay_server, client, tmp, echoes)


def test_two_forwards_from_config_file(relay_server: RelayServer, keys: Keys,
                                       tmp: Path) -> None:
    """The same two forwards from a JSON config file's ``forward`` array."""
    echoes = [EchoTarget(tmp / "e1.sock"), EchoTarget(tmp / "e2.sock")]
    config = tmp / "client.json"
    config.write_text(json.dumps({
        "ssh_connection": f"ssh://tester@127.0.0.1:{relay_server.port}",
        "forward": [f"unix://{tmp / 'a.sock'}={echoes[0].path}",
                    f"unix://{tmp / 'b.sock'}={echoes[1].path}"],
    }))
    client = start_client(keys, tmp, "--config", str(config))
    with stopping(client, *echoes):
        check_two_forwards(relay_server, client, tmp, echoes)


def test_missing_remote_socket_is_named_and_others_work(relay_server: RelayServer, keys: Keys,
                                                        echo: EchoTarget, tmp: Path) -> None:
    """A forward whose remote socket is missing is logged by name and keeps the client not
    ready (no tid file); the other forward carries data; once the socket appears, ready."""
    missing = tmp / "later.sock"
    client = start_client(keys, tmp, "--ssh-connection",
                          f"ssh://tester@127.0.0.1:{relay_server.port}",
                          "--forward", f"unix://{tmp / 'a.sock'}={echo.path}",
                          "--forward", f"unix://{tmp / 'b.sock'}={missing}",
                          "--health-check-enabled", "--health-check-port", "0")
    late: list[EchoTarget] = []
    try:
        failed = wait_for(lambda: log_events(client, "probe_failed") or not client.alive(), 30,
                          "probe_failed")
        assert client.alive(), client.log()
        assert failed[0]["forward"] == f"unix://{tmp / 'b.sock'}"
        assert failed[0]["socket_path"] == str(missing)
        assert not (tmp / "client.tid").exists()
        code, ready = get_json(bound_ports(client)["health_port"], "/ready")
        assert code == 503 and ready["reason"].startswith(
            f"remote socket unreachable: unix://{tmp / 'b.sock'} ({missing}): ")
        assert str(echo.path) not in ready["reason"]
        payload = b"x" * MiB
        assert exchange(tmp / "a.sock", payload) == (len(payload), sha(payload))
        late.append(EchoTarget(missing))
        wait_for(lambda: (tmp / "client.tid").exists(), 30, "tid file once all probes pass")
        assert exchange(tmp / "b.sock", payload) == (len(payload), sha(payload))
    finally:
        client.stop()
        for target in late:
            target.close()


@pytest.mark.parametrize(("forwards", "why"), [
    (["unix:///tmp/a.sock"], "no LOCAL=REMOTE"),
    (["unix:///tmp/a.sock=run/e.sock"], "must be absolute"),
    (["unix:///tmp/a.sock=/run/../e.sock"], "must be normalized, like '/e.sock'"),
    (["unix:///tmp/a.sock=/e1.sock", "unix:///tmp/a.sock=/e2.sock"],
     "its local endpoint is already used by forward=unix:///tmp/a.sock=/e1.sock"),
    (["tcp://x=/e.sock"], "invalid endpoint 'tcp://x'"),
])
def test_bad_forward_is_one_line_exit_2(forwards: list[str], why: str) -> None:
    """Malformed, relative, non-normalized or duplicate forwards: exit 2, one line."""
    args = [arg for fwd in forwards for arg in ("--forward", fwd)]
    result = run_relay("client", "--ssh-connection", "ssh://u@127.0.0.1:1", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    message = fatal(result.stderr, 2)
    assert message.startswith("invalid forward=") and why in message
