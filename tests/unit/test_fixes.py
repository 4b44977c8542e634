"""Each common failure names its fix: the pure message builders of fixes.py."""

from __future__ import annotations

import json

from container_desktop_relay.config import Config
from container_desktop_relay.fixes import gave_up, port_in_use, spawn_command, status_not_served
from container_desktop_relay.log import fatal_line

ERROR = "cannot connect to 127.0.0.1:20022: Connect call failed"


def test_gave_up_says_which_server_to_start() -> None:
    """A client that gave up on a local server names the command that starts it."""
    assert gave_up(ERROR, 5, host="127.0.0.1", port=20022) == (
        f"{ERROR} (gave up after 5 attempts): is the server running? start it on this machine "
        "first: container-desktop-relay server --port 20022, or point --ssh-connection at the "
        "host and port it listens on")


def test_gave_up_on_a_remote_server_binds_all_addresses() -> None:
    """A server on another host must listen beyond loopback: the command says --host 0.0.0.0."""
    text = gave_up("cannot connect to box:2222: timed out", 1, host="box", port=2222)
    assert "(gave up after 1 attempt)" in text
    assert "start it on box first: container-desktop-relay server --host 0.0.0.0 --port 2222" \
        in text


def test_gave_up_with_a_spawned_server_that_exits_says_what_failed() -> None:
    """A spawned server that exits: its status, where its output is, and how to run it."""
    command = spawn_command(Config(distribution="Ubuntu", relay_program_path="/opt/r/relay",
                                   port=41234))
    assert command == ["wsl.exe", "--distribution", "Ubuntu", "--exec", "/opt/r/relay",
                       "server", "--port", "41234"]
    text = gave_up(ERROR, 3, host="localhost", port=41234, spawn_command=command,
                   exit_codes=[1, 2], exits=2)
    assert text == (
        f"{ERROR} (gave up after 3 attempts); the spawned server exited with status 2 (2 times) "
        "(its output is logged as server_output): run it by hand to see why: wsl.exe "
        "--distribution Ubuntu --exec /opt/r/relay server --port 41234; check --distribution "
        "and --relay-program-path")


def test_gave_up_with_a_spawned_server_still_running() -> None:
    """A spawned server that runs but does not answer: say so, and where to look."""
    text = gave_up(ERROR, 5, host="127.0.0.1", port=20022, spawn_command=["wsl.exe", "x"])
    assert text.endswith("; the spawned server is running but does not accept SSH on port "
                         "20022: see its server_output lines in this log, or run it by hand: "
                         "wsl.exe x")


def test_port_in_use_names_holder_and_flag() -> None:
    """The holder when known, and always the flag that moves this relay elsewhere."""
    assert port_in_use("--port", "pid 42 (sshd)") == (
        "(held by pid 42 (sshd); stop that process or choose another port with --port)")
    assert port_in_use("--metrics-port", None) == (
        "(stop that process or choose another port with --metrics-port)")


def test_status_not_served_by_a_client_says_how_to_turn_them_on() -> None:
    """A client has no endpoints by default: the line says so and names both flags."""
    text = status_not_served("http://127.0.0.1:20081/health", "connection refused",
                             role="client", ssh_port=20022, derived=True)
    assert text.startswith("not served: no relay answers at http://127.0.0.1:20081/health: "
                           "connection refused (a client serves /health, /ready and /metrics "
                           "only when started with --health-check-enabled and "
                           "--metrics-enabled: they are off by default")


def test_status_not_served_by_a_server_is_unchanged() -> None:
    """For a server: the derived-port explanation, or the bare line for an explicit port."""
    url = "http://127.0.0.1:20080/health"
    assert status_not_served(url, "connection refused", role="server", ssh_port=20022,
                             derived=False) == f"no relay answers at {url}: connection refused"
    assert "whose default port was taken" in status_not_served(
        url, "connection refused", role="server", ssh_port=20022, derived=True)


def test_fatal_line_is_one_json_event() -> None:
    """The last line of a failed run: level error, event fatal, the message, the status."""
    line = fatal_line('invalid port=0 from --port: "x"\\y', 2, created=0.25)
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "1970-01-01T00:00:00.250Z", "level": "error",
        "logger": "container_desktop_relay", "event": "fatal",
        "message": 'invalid port=0 from --port: "x"\\y', "exit_status": 2}
