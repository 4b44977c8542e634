"""The command registry and the shared parser: Go's -flag, own flags only, one-line refusals."""

from __future__ import annotations

import argparse
import importlib
import json

import pytest

from container_desktop_relay.cli import main
from container_desktop_relay.commands import registry
from container_desktop_relay.commands.args import ArgumentError, Parser, go_flags
from container_desktop_relay.commands.registry import COMMANDS, find, parse_config
from helpers import REPO

#: what each command needs besides flags to parse at all
OPERANDS = {"docker-context": ["ctx"], "completion": ["bash"]}


def test_every_command_is_declared_once_with_a_runnable_entry() -> None:
    """Names are unique, summaries one line, and each entry point names a real function."""
    names = [c.name for c in COMMANDS]
    assert len(names) == len(set(names)) >= 10
    for command in COMMANDS:
        assert command.summary and "\n" not in command.summary, command.name
        module, function = command.entry.split(":")
        assert callable(getattr(importlib.import_module(module), function)), command.entry
        assert isinstance(command.parser(), Parser)


def test_usage_lists_the_registry() -> None:
    """`PROG --help` lists each registered command with its summary (no second list)."""
    text = registry.usage()
    for command in COMMANDS:
        assert f"  {command.name} " in text and command.summary in text


@pytest.mark.parametrize(("argv", "expected"), [
    (["-port", "1"], ["--port", "1"]),
    (["-port=1"], ["--port=1"]),
    (["-help"], ["--help"]),
    (["-h"], ["-h"]),
    (["--port", "1"], ["--port", "1"]),
    (["--parent-process-pid", "-1"], ["--parent-process-pid", "-1"]),
    (["-x"], ["-x"]),
    (["--", "-port"], ["--", "-port"]),
    (["-a b"], ["-a b"]),
])
def test_go_flags(argv: list[str], expected: list[str]) -> None:
    """Go's -flag becomes --flag; one-letter flags, numbers and words after -- stay."""
    assert go_flags(argv) == expected


def _flag_cases() -> list[tuple[str, str, bool]]:
    return [(command.name, flag, action.nargs == 0)
            for command in COMMANDS
            for action in command.parser().actions
            for flag in action.option_strings if flag.startswith("--") and flag != "--help"]


def _outcome(command: str, argv: list[str]) -> object:
    try:
        return vars(find(command).parser().parse_args([*OPERANDS.get(command, []), *argv]))
    except ArgumentError as exc:
        return str(exc)


@pytest.mark.parametrize(("command", "flag", "bare"), _flag_cases())
def test_every_flag_of_every_command_takes_go_spellings(command: str, flag: str,
                                                        bare: bool) -> None:
    """-flag v and -flag=v parse exactly as --flag v and --flag=v, for every flag."""
    value = [] if bare else ["1"]
    assert _outcome(command, ["-" + flag[2:], *value]) == _outcome(command, [flag, *value])
    if not bare:
        assert _outcome(command, [f"-{flag[2:]}=1"]) == _outcome(command, [f"{flag}=1"])


@pytest.mark.parametrize("command", [c.name for c in COMMANDS])
@pytest.mark.parametrize("spelling", ["-h", "--help", "-help"])
def test_help_in_every_spelling(command: str, spelling: str,
                                capsys: pytest.CaptureFixture[str]) -> None:
    """-h, --help and Go's -help print the command's help and exit 0."""
    with pytest.raises(SystemExit) as done:
        find(command).parser().parse_args([spelling])
    assert done.value.code == 0
    assert f"container-desktop-relay {command}" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["-max-conn", "0"], ["--max-conn", "0"], ["--max-conn=0"],
                                  ["-max-connection=0"]])
def test_flags_are_never_abbreviated(argv: list[str]) -> None:
    """A prefix of a flag is refused in every spelling, naming the real flag."""
    with pytest.raises(ArgumentError, match="unrecognized arguments: --max-conn") as err:
        parse_config("server", argv, environ={})
    assert "did you mean --max-connections?" in str(err.value)


@pytest.mark.parametrize(("command", "argv", "message"), [
    ("client", ["--allow-socket", "/x"],
     "--allow-socket is a server flag; the client does not use it"),
    ("server", ["--ssh-connection", "ssh://u@h:1/s"],
     "--ssh-connection is a client flag; the server does not use it"),
    ("server", ["-listen=unix:///tmp/x.sock"],
     "--listen is a client flag; the server does not use it"),
    ("keygen", ["--port", "20122"], "--port is a server and client flag; keygen does not use it"),
    ("doctor", ["--allow-socket", "/x"], "--allow-socket is a server flag; doctor does not use it"),
    ("docker-context", ["ctx", "--host-key-path", "/k"],
     "--host-key-path is a server flag; docker-context does not use it"),
    ("status", ["--buffer-size", "9000"],
     "--buffer-size is a server and client flag; status does not use it"),
    ("server", ["--json"], "--json is a status, bench and doctor flag; the server does not"),
    ("client", ["--create"], "--create is a docker-context flag; the client does not use it"),
    ("install-service", ["--identity-path", "/k"],
     "--identity-path is a server and client flag; install-service does not use it"),
])
def test_another_commands_flag_names_its_owner(command: str, argv: list[str],
                                               message: str) -> None:
    """A flag this command does not take is one line naming whose flag it is."""
    with pytest.raises(ArgumentError) as err:
        find(command).parser().parse_args(argv)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert err.value.exit_code == 2


def test_each_command_shows_only_its_own_flags() -> None:
    """server --help has no client flag, client --help no server flag, keygen only keys."""
    def helped(name: str) -> str:
        return find(name).parser().format_help()

    assert "--allow-socket" in helped("server") and "--listen" not in helped("server")
    assert "--listen" in helped("client") and "--allow-socket" not in helped("client")
    keygen = find("keygen").parser().flags()
    assert sorted(keygen) == ["--authorized-keys-path", "--config", "--help",
                              "--identity-path", "--log-level", "--print-public", "-h"]
    for name in ("doctor", "docker-context"):
        assert "--listen" in helped(name) and "--allow-socket" not in helped(name)


def test_both_roles_take_what_both_roles_read() -> None:
    """The client watches its parent too (the Windows app passes its own PID): the flags
    --watch-process-termination, --parent-process-pid and --poll-interval are both roles'."""
    for role in ("server", "client"):
        config = parse_config(role, ["--watch-process-termination", "--parent-process-pid",
                                     "4242", "--poll-interval", "1s"], environ={})
        assert (config.watch_process_termination, config.parent_process_pid,
                config.poll_interval) == (True, 4242, 1.0)


def test_help_shows_defaults_as_the_docs_spell_them() -> None:
    """Durations as Go durations (10s) and booleans as false, never Python's 10.0 / False."""
    text = " ".join(find("server").parser().format_help().split())
    assert "(default: 10s)" in text and "(default: 2s)" in text
    assert "(default: false)" in text
    assert "10.0" not in text and "False" not in text and "True" not in text
    client = " ".join(find("client").parser().format_help().split())
    assert "(default: 5s)" in client and "5.0" not in client


@pytest.mark.parametrize(("name", "hint"), [
    ("stauts", "did you mean 'status'?"),
    ("docker-contxt", "did you mean 'docker-context'?"),
    ("sever", "did you mean 'server'?"),
    ("frobnicate", "commands are server, client, keygen"),
])
def test_unknown_command_suggests_the_closest(name: str, hint: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown command: one JSON fatal line, the closest command, exit 2."""
    assert main([name, "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "container-desktop-relay" not in err, err
    assert json.loads(err)["message"].startswith(f"unknown command {name!r}; {hint}")


def test_bare_form_runs_the_platform_role(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a command the server's flags apply on Linux and the client's on Windows."""
    monkeypatch.setattr(registry, "platform_role", lambda: "server")
    assert parse_config("", ["-allow-socket", "/run/*.sock"], environ={}).allow_socket
    with pytest.raises(ArgumentError, match="--listen is a client flag; the server does"):
        parse_config("", ["--listen", "unix:///tmp/x.sock"], environ={})
    monkeypatch.setattr(registry, "platform_role", lambda: "client")
    assert parse_config("", ["-listen", "unix:///tmp/x.sock"], environ={}).listen


def test_entry_points_take_the_parsed_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """Command.run parses argv with the command's parser and hands the entry the result."""
    seen: list[argparse.Namespace] = []
    monkeypatch.setattr("container_desktop_relay.commands.service.run",
                        lambda args: seen.append(args) or 0)
    assert find("install-service").run(["-user", "-print"]) == 0
    assert (seen[0].user, seen[0].print_only, seen[0].unit_dir) == (True, True, None)


def test_the_frozen_build_carries_every_entry_point() -> None:
    """PyInstaller cannot see a module named in a string: the spec lists commands/ whole (by
    walking src/; tests/dist checks the built folder), and every entry point lives there."""
    spec = (REPO / "packaging" / "container-desktop-relay.spec").read_text(encoding="utf-8")
    assert 'hiddenimports=modules_under("container_desktop_relay.commands")' in spec
    for command in COMMANDS:
        assert command.entry.startswith("container_desktop_relay.commands."), command.entry
