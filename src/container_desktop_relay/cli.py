"""Command line: parse flags (``--flag v``, ``--flag=v``, Go's ``-flag v``), build Config, run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from container_desktop_relay._version import __version__
from container_desktop_relay.config import Config, config_fields, load_config
from container_desktop_relay.errors import RelayError
from container_desktop_relay.log import setup_logging

__all__ = ["COMMANDS", "build_parser", "main", "parse_config"]

PROG = "container-desktop-relay"


class ArgumentError(RelayError):
    """A command-line syntax error (unknown flag, missing value)."""

    exit_code = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports one line and raises instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise ArgumentError(f"{message} (see {self.prog} --help)")


def _bool_flag(text: str) -> str:
    return text


def add_config_flags(parser: argparse.ArgumentParser, roles: Sequence[str]) -> None:
    """Add one flag per configuration key (every key, grouped by role) to ``parser``."""
    groups = {
        "common": parser.add_argument_group("common settings"),
        "server": parser.add_argument_group("server settings"),
        "client": parser.add_argument_group("client settings"),
    }
    parser.add_argument("--config", "-config", metavar="FILE", dest="config_file",
                        help="JSON config file with the snake_case keys below")
    for f, opt in config_fields():
        dashed = f.name.replace("_", "-")
        group = groups["common" if len(opt.roles) > 1 else opt.roles[0]]
        env = f"CDR_{f.name.upper()}" + (f", {opt.env}" if opt.env else "")
        default = f.default_factory() if callable(f.default_factory) else f.default
        shown = "" if default in ("", None, []) else f" (default: {default})"
        help_text = f"{opt.help}{shown} [env {env}]"
        names = [f"--{dashed}", f"-{dashed}"]
        if opt.kind == "bool":
            group.add_argument(*names, dest=f.name, nargs="?", const="true", default=None,
                               metavar="BOOL", help=help_text)
        elif opt.kind == "list":
            group.add_argument(*names, dest=f.name, action="append", default=None,
                               metavar=opt.metavar or "VALUE", help=help_text)
        else:
            metavar = {"int": "N", "duration": "DURATION", "path": "PATH"}.get(opt.kind, "VALUE")
            if opt.choices:
                metavar = "{" + ",".join(opt.choices) + "}"
            group.add_argument(*names, dest=f.name, default=None, metavar=metavar,
                               help=help_text)
    del roles


def _new_parser(prog: str, description: str) -> _Parser:
    return _Parser(prog=prog, description=description, allow_abbrev=False)


def build_parser(command: str) -> _Parser:
    """The parser for ``command`` (server, client, keygen, or the bare form)."""
    descriptions = {
        "server": "Run the server role: accept SSH and forward direct-streamlocal channels to "
                  "Unix sockets.",
        "client": "Run the client role: accept local connections and carry each over one SSH "
                  "connection to the server.",
        "keygen": "Create the RSA 4096 key pair (if missing) and authorize it; never "
                  "overwrites.",
    }
    parser = _new_parser(f"{PROG} {command}".strip(), descriptions.get(command, ""))
    add_config_flags(parser, ("server", "client"))
    return parser


def parse_config(command: str, argv: Sequence[str],
                 environ: dict[str, str] | None = None) -> Config:
    """Parse ``argv`` for ``command`` into a validated :class:`Config`.

    Raises:
        ConfigError / ArgumentError: exit status 2, one line.
    """
    parser = build_parser(command)
    namespace = parser.parse_args(list(argv))
    values = vars(namespace)
    config_path = values.pop("config_file", None)
    return load_config(values, config_path=config_path, environ=environ)


def _platform_role() -> str:
    return "client" if sys.platform == "win32" else "server"


def _run_keygen(config: Config) -> int:
    from container_desktop_relay.ssh.keys import ensure_key_pair

    result = ensure_key_pair(config.path("identity_path"), config.path("authorized_keys_path"))
    verb = "created" if result.created else "kept existing"
    print(f"{verb} private key {result.private_path} (public key {result.public_path}); "
          f"{'added to' if result.authorized_added else 'already in'} "
          f"{config.path('authorized_keys_path')}")
    return 0


def _run_role(role: str, config: Config) -> int:
    if config.generate_key_pair:
        from container_desktop_relay.ssh.keys import ensure_key_pair

        ensure_key_pair(config.path("identity_path"), config.path("authorized_keys_path"))
    from container_desktop_relay.runtime import roles

    return roles.run_server(config) if role == "server" else roles.run_client(config)


def _config_command(role: str) -> Callable[[Sequence[str]], int]:
    def run(argv: Sequence[str]) -> int:
        config = parse_config(role if role != "bare" else "", argv)
        setup_logging(config.log_level)
        if role == "keygen":
            return _run_keygen(config)
        return _run_role(_platform_role() if role == "bare" else role, config)

    return run


def run_bench_command(argv: Sequence[str]) -> int:
    """``bench``: the benchmark (imported on use; see container_desktop_relay.commands.bench)."""
    from container_desktop_relay.commands.bench.command import run_bench_command as run

    return run(argv)


def _status(argv: Sequence[str]) -> int:
    from container_desktop_relay.commands import status

    return status.main(argv)


def _config_docs(argv: Sequence[str]) -> int:
    from container_desktop_relay.commands.configdocs import render

    _new_parser(f"{PROG} config-docs", "Print the configuration reference (Markdown).")\
        .parse_args(list(argv))
    sys.stdout.write(render())
    return 0


def _install_service(argv: Sequence[str]) -> int:
    from container_desktop_relay.commands import service

    return service.run(argv)


def _completion(argv: Sequence[str]) -> int:
    from container_desktop_relay.commands import completion

    return completion.run(argv)


def _doctor(argv: Sequence[str]) -> int:
    from container_desktop_relay.commands import doctor

    return doctor.main(argv)


def _docker_context(argv: Sequence[str]) -> int:
    from container_desktop_relay.commands import dockerctx

    return dockerctx.main(argv)


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "server": _config_command("server"),
    "client": _config_command("client"),
    "keygen": _config_command("keygen"),
    "status": _status,
    "bench": run_bench_command,
    "config-docs": _config_docs,
    "install-service": _install_service,
    "completion": _completion,
    "doctor": _doctor,
    "docker-context": _docker_context,
}


def _usage() -> str:
    roles = {
        "server": "run the server role (inside Linux/WSL)",
        "client": "run the client role (desktop side: Unix socket or named pipe)",
        "keygen": "create and authorize the RSA 4096 key pair",
    }
    lines = {**roles, **{n: _EXTRA_HELP.get(n, "") for n in COMMANDS if n not in roles}}
    width = max(map(len, lines)) + 2
    return (
        f"usage: {PROG} [COMMAND] [FLAGS]\n\ncommands:\n"
        + "".join(f"  {name:<{width}} {text}\n" for name, text in lines.items())
        + f"\nWithout a command, runs the platform's role ({_platform_role()} here) with the "
        f"given flags.\n'{PROG} COMMAND --help' lists every flag.\n"
    )


_EXTRA_HELP: dict[str, str] = {
    "status": "query a running relay's /health, /ready and /metrics (exit 0/1/2)",
    "bench": "compare throughput, latency and memory with OpenSSH and the bare socket",
    "config-docs": "print the configuration reference (docs/configuration.md)",
    "install-service": "write the systemd unit for the server role ([--user] [--print])",
    "completion": "print the shell completion script (bash, zsh or fish)",
    "doctor": "check keys, server, channel and endpoints step by step (ok/FAIL + fix)",
    "docker-context": "print or --create the Docker context for the client's endpoint",
}


def version_line() -> str:
    """``PROG VERSION (Python X, asyncssh Y, cryptography Z)``: what this build carries."""
    from importlib.metadata import version

    return (f"{PROG} {__version__} (Python {sys.version.split()[0]}, asyncssh "
            f"{version('asyncssh')}, cryptography {version('cryptography')})")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns the exit status (0 ok, 1 failure, 2 bad usage or configuration)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help", "help"):
        print(_usage(), end="")
        return 0
    if args and args[0] in ("--version", "-version", "version"):
        print(version_line())
        return 0
    try:
        if args and args[0] in COMMANDS:
            return COMMANDS[args[0]](args[1:])
        if args and not args[0].startswith("-"):
            raise ArgumentError(
                f"{PROG}: unknown command {args[0]!r}; commands are "
                + ", ".join(COMMANDS) + f" (see {PROG} --help)"
            )
        return _config_command("bare")(args)
    except RelayError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
