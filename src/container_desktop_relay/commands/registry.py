"""Every command in one table: its name, one-line summary, flags and entry point.

The flags are declared here, with nothing heavy imported, so ``--help``, a refused flag and the
completion scripts never load a command's implementation; the entry point (``module:function``,
called with the parsed flags) is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from container_desktop_relay._version import PROG
from container_desktop_relay.commands.args import (
    ArgumentError,
    Parser,
    add_config_flags,
    config_from,
    platform_role,
    role_phrase,
)
from container_desktop_relay.config import Config, config_fields

__all__ = [
    "BENCH_CHAINS",
    "COMMANDS",
    "SHELLS",
    "Command",
    "bare",
    "find",
    "parse_config",
    "usage",
]

SHELLS = ("bash", "zsh", "fish")
BENCH_CHAINS = ("direct", "openssh", "relay")
#: the keys keygen reads: where the key pair and authorized_keys are, and how much to log
KEYGEN_KEYS = ("identity_path", "authorized_keys_path", "log_level")


@dataclass(frozen=True, slots=True)
class Command:
    """One command: what ``PROG --help`` lists, what its parser takes, what runs it."""

    name: str
    summary: str  #: one line in ``PROG --help``
    description: str  #: the head of ``PROG NAME --help``
    flags: Callable[[Parser], None]  #: adds the command's flags (and nothing heavy)
    entry: str  #: ``module:function`` taking the parsed flags, returning the exit status
    label: str = ""  #: how refusals name it ("the server"); default: the name

    def parser(self, prog: str | None = None) -> Parser:
        """A fresh parser of this command's flags (``prog`` overrides ``PROG NAME``)."""
        parser = Parser(prog or f"{PROG} {self.name}", self.description,
                        explain=lambda flag: _explain(self, flag))
        self.flags(parser)
        return parser

    def run(self, argv: Sequence[str], prog: str | None = None) -> int:
        """Parse ``argv`` and call the entry point.

        Raises:
            RelayError: bad flags (exit 2), or whatever the command raises.
        """
        args = self.parser(prog).parse_args(list(argv))
        module, function = self.entry.split(":")
        run: Callable[[argparse.Namespace], int] = getattr(
            importlib.import_module(module), function)
        return run(args)


def _role_flags(role: str) -> Callable[[Parser], None]:
    return lambda parser: add_config_flags(parser, (role,))


def _keygen_flags(parser: Parser) -> None:
    add_config_flags(parser, keys=KEYGEN_KEYS)
    parser.add_argument("--print-public", dest="print_public", action="store_true",
                        help="print the identity's public key as one OpenSSH authorized_keys "
                             "line (ssh-rsa AAAA... comment) and create nothing; "
                             "--identity-path may name a copied id_rsa.pub")


def _status_flags(parser: Parser) -> None:
    parser.add_argument("--host", dest="health_check_host", metavar="ADDRESS",
                        help="address the endpoints listen on (default: health_check_host, "
                             "127.0.0.1)")
    parser.add_argument("--port", metavar="N",
                        help="the relay's SSH port (the server's own, the one a client connects "
                             "to); the default endpoint ports derive from it (default: 20022)")
    parser.add_argument("--health-check-port", metavar="N",
                        help="port of /health and /ready (default: SSH port + 58 for a server, "
                             "+ 59 for a client: 20080, 20081)")
    parser.add_argument("--metrics-port", metavar="N",
                        help="port of /metrics (default: SSH port + 68 for a server, + 69 for "
                             "a client: 20090, 20091)")
    parser.add_argument("--config", metavar="FILE", dest="config_file", path=True,
                        help="the relay's JSON config file (ports and host are read from it)")
    parser.add_argument("--role", choices=("server", "client"),
                        help="whose default ports to use (default: this platform's role)")
    parser.add_argument("--timeout", default="3s", metavar="DURATION",
                        help="how long to wait for each answer (default: 3s)")
    parser.add_argument("--json", action="store_true",
                        help="print the answers as one JSON object")


def _doctor_flags(parser: Parser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--timeout", metavar="DURATION", default="5s",
                        help="bound on each network step (default: 5s)")
    add_config_flags(parser, ("client",))


def _docker_context_flags(parser: Parser) -> None:
    parser.add_argument("names", metavar="NAME", nargs="+",
                        help="the Docker context name; with several --forward, one name per "
                             "forward, or one name that becomes NAME-1, NAME-2, ...")
    parser.add_argument("--create", action="store_true",
                        help="run docker context create (or update, when NAME exists)")
    add_config_flags(parser, ("client",))


def _install_service_flags(parser: Parser) -> None:
    parser.add_argument("--user", action="store_true",
                        help="the user unit (systemctl --user) instead of the system unit")
    parser.add_argument("--print", action="store_true", dest="print_only",
                        help="print the unit instead of writing it")
    parser.add_argument("--unit-dir", metavar="DIR", path=True,
                        help="directory to write the unit to (default: /etc/systemd/system, "
                             "or ~/.config/systemd/user with --user)")


def _completion_flags(parser: Parser) -> None:
    parser.add_argument("shell", choices=SHELLS, metavar="SHELL",
                        help=f"the shell to complete for: {', '.join(SHELLS)}")


def _bench_flags(parser: Parser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, one round: under a minute (CI, smoke checks)")
    parser.add_argument("--json", metavar="PATH", path=True,
                        help="write the results as JSON to PATH")
    parser.add_argument("--chains", default=",".join(BENCH_CHAINS),
                        help=f"comma-separated subset of {','.join(BENCH_CHAINS)} "
                             "(default: all)")
    parser.add_argument("--rounds", type=int, metavar="N",
                        help="rounds per chain, chains alternating; medians are reported "
                             "(default: 3, --quick: 1)")
    parser.add_argument("--conns", type=int, metavar="N",
                        help="concurrent connections (default: 1000, --quick: 200)")
    parser.add_argument("--bulk-mib", type=int, metavar="N",
                        help="MiB per bulk direction (default: 512, --quick: 32)")
    parser.add_argument("--startup-runs", type=int, metavar="N",
                        help="starts of sshd and of the relay's server (from this Python and, "
                             "when built, dist/'s Linux relay), timed from exec to the SSH "
                             "banner; medians reported (default: 5, --quick: 3, 0: skip)")


def _no_flags(parser: Parser) -> None:
    del parser


_PKG = "container_desktop_relay.commands"

COMMANDS: tuple[Command, ...] = (
    Command("server", "run the server role (inside Linux/WSL)",
            "Run the server role: accept SSH and forward direct-streamlocal channels to Unix "
            "sockets.", _role_flags("server"), f"{_PKG}.relay:run_server", "the server"),
    Command("client", "run the client role (desktop side: Unix socket or named pipe)",
            "Run the client role: accept local connections and carry each over one SSH "
            "connection to the server.", _role_flags("client"), f"{_PKG}.relay:run_client",
            "the client"),
    Command("keygen", "create and authorize the RSA 4096 key pair",
            "Create the RSA 4096 key pair (if missing) and authorize it; never overwrites.",
            _keygen_flags, f"{_PKG}.relay:run_keygen"),
    Command("status", "query a running relay's /health, /ready and /metrics (exit 0/1/2)",
            "Query a running relay's /health, /ready and /metrics. Exit 0 when healthy and "
            "ready, 1 otherwise, 2 when nothing answers.", _status_flags, f"{_PKG}.status:main"),
    Command("bench", "compare throughput, latency and memory with OpenSSH and the bare socket",
            "Run the same byte-verified workloads through the bare socket (direct), OpenSSH "
            "(sshd + ssh -L) and this relay (client -> server) to one local Unix-socket target; "
            "print a table and optionally write JSON.", _bench_flags,
            f"{_PKG}.bench.command:run_bench_command"),
    Command("config-docs", "print the configuration reference (docs/configuration.md)",
            "Print the configuration reference (Markdown).", _no_flags,
            f"{_PKG}.configdocs:run"),
    Command("install-service", "write the systemd unit for the server role ([--user] [--print])",
            "Write the systemd unit that runs the server role (system unit by default).",
            _install_service_flags, f"{_PKG}.service:run"),
    Command("completion", "print the shell completion script (bash, zsh or fish)",
            "Print the shell completion script for bash, zsh or fish.", _completion_flags,
            f"{_PKG}.completion:run"),
    Command("doctor", "check keys, server, channel and endpoints step by step (ok/FAIL + fix)",
            "Check the client's configuration, keys, server, channel and endpoints in order; "
            "print each step ok/FAIL with the fix.", _doctor_flags, f"{_PKG}.doctor:main"),
    Command("docker-context", "print or --create the Docker context for the client's endpoint",
            "Print (or, with --create, run) the docker command that makes a context for the "
            "client's endpoint (one per --forward); then 'docker context use NAME'.",
            _docker_context_flags, f"{_PKG}.dockerctx:main"),
)

_BY_NAME = {command.name: command for command in COMMANDS}
#: words the program takes in a command's place (cli.main answers them itself)
_TOP_LEVEL = ("help", "version")


def find(name: str) -> Command:
    """The command called ``name``.

    Raises:
        ArgumentError: no such command; names the closest one, or lists them (exit 2).
    """
    if name in _BY_NAME:
        return _BY_NAME[name]
    close = difflib.get_close_matches(name, [*_BY_NAME, *_TOP_LEVEL], n=1, cutoff=0.5)
    hint = (f"did you mean {close[0]!r}?" if close
            else "commands are " + ", ".join(_BY_NAME))
    raise ArgumentError(f"unknown command {name!r}; {hint} (--help lists them)")


def bare() -> Command:
    """What runs without a command: this platform's role (the client on Windows)."""
    return _BY_NAME[platform_role()]


def parse_config(command: str, argv: Sequence[str],
                 environ: dict[str, str] | None = None) -> Config:
    """``argv`` of ``command`` (server, client, keygen; "" for the bare form) as a validated
    :class:`Config`.

    Raises:
        ConfigError / ArgumentError: exit status 2, one line.
    """
    cmd = find(command) if command else bare()
    return config_from(cmd.parser(None if command else PROG).parse_args(list(argv)), environ)


_OPTIONS = {"--" + f.name.replace("_", "-"): opt for f, opt in config_fields()}


def _explain(command: Command, flag: str) -> str | None:
    """Why ``command`` refuses ``flag``: the roles (or the other commands) it belongs to."""
    who = command.label or command.name
    if flag in _OPTIONS:
        return f"{flag} is a {role_phrase(_OPTIONS[flag].roles)} flag; {who} does not use it"
    owners = [c.name for c in COMMANDS if c is not command and flag in c.parser().flags()]
    if not owners:
        return None
    names = owners[0] if len(owners) == 1 else ", ".join(owners[:-1]) + " and " + owners[-1]
    return f"{flag} is a {names} flag; {who} does not use it"


def usage() -> str:
    """``PROG --help``: every command with its summary, and what the bare form runs."""
    width = max(map(len, _BY_NAME)) + 2
    return (
        f"usage: {PROG} [COMMAND] [FLAGS]\n\ncommands:\n"
        + "".join(f"  {c.name:<{width}} {c.summary}\n" for c in COMMANDS)
        + f"\nWithout a command, runs the platform's role ({platform_role()} here) with the "
        f"given flags.\n'{PROG} COMMAND --help' lists its flags; every flag is also accepted "
        "as Go's -flag.\n"
    )
