"""Argument helpers every command shares: the parser, Go's ``-flag`` spellings, config flags."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn

from container_desktop_relay.config import Config, Option, config_fields, load_config
from container_desktop_relay.durations import format_duration
from container_desktop_relay.errors import RelayError

__all__ = [
    "ArgumentError",
    "Parser",
    "add_config_flags",
    "config_from",
    "go_flags",
    "platform_role",
    "role_phrase",
]

ROLES = ("server", "client")


class ArgumentError(RelayError):
    """A command-line syntax error (unknown flag, missing value, unknown command)."""

    exit_code = 2


def platform_role() -> str:
    """The role the bare form runs and ``status`` asks by default: the client on Windows."""
    return "client" if sys.platform == "win32" else "server"


def go_flags(argv: Sequence[str]) -> list[str]:
    """``argv`` with Go's spellings made argparse's: ``-flag v`` and ``-flag=v`` become
    ``--flag v`` and ``--flag=v`` (``-help`` too). One-letter flags (``-h``), negative numbers,
    words holding a space and everything after ``--`` are left as they are."""
    out: list[str] = []
    rest = False
    for word in argv:
        if word == "--":
            rest = True
        elif (not rest and len(word) > 2 and word[0] == "-" and word[1].isalpha()
              and " " not in word):
            word = "-" + word
        out.append(word)
    return out


#: ``explain(flag)``: why ``flag`` (``--name``) is refused here (it is another command's), or
#: None when no command knows it.
Explain = Callable[[str], str | None]


class Parser(argparse.ArgumentParser):
    """argparse for one command: takes Go's ``-flag`` spellings, never abbreviates, and reports a
    bad command line as one :class:`ArgumentError` line instead of printing usage and exiting.

    Every flag added through :meth:`add_argument` or :meth:`add_to` is remembered, so
    :meth:`flags` can say which flags the command has and :attr:`path_actions` which take a
    file name (for shell completion).
    """

    def __init__(self, prog: str, description: str, *, explain: Explain | None = None) -> None:
        self.actions: list[argparse.Action] = []
        self.path_actions: list[argparse.Action] = []
        self.explain = explain
        self.sections: dict[str, Any] = {}
        super().__init__(prog=prog, description=description, allow_abbrev=False)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        """``ArgumentParser.add_argument``, remembered (``path=True``: completes as a file)."""
        return self.add_to(None, *args, **kwargs)

    def add_to(self, section: str | None, *args: Any, path: bool = False,
               **kwargs: Any) -> argparse.Action:
        """Add a flag under the help heading ``section`` (None: the parser's own) and remember
        it; ``path=True`` marks a flag that takes a file name."""
        if section is None:
            action = super().add_argument(*args, **kwargs)
        else:
            if section not in self.sections:
                self.sections[section] = self.add_argument_group(section)
            action = self.sections[section].add_argument(*args, **kwargs)
        self.actions.append(action)
        if path:
            self.path_actions.append(action)
        return action

    def flags(self) -> list[str]:
        """Every flag spelling this parser accepts (``--port``, ``-h``...)."""
        return [name for action in self.actions for name in action.option_strings]

    def operands(self) -> list[str]:
        """The names of the arguments that are not flags (``NAME``, ``SHELL``)."""
        return [str(action.metavar or action.dest).upper() for action in self.actions
                if not action.option_strings]

    def error(self, message: str) -> NoReturn:
        raise ArgumentError(f"{message} (see {self.prog} --help)")

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None,
                         ) -> tuple[argparse.Namespace, list[str]]:
        """argparse's, after :func:`go_flags`."""
        argv = sys.argv[1:] if args is None else args
        return super().parse_known_args(go_flags(argv), namespace)

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        """Parse, or raise one line naming the first flag this command does not take.

        Raises:
            ArgumentError: an unknown flag (with the closest one of this command), a flag of
                another command (naming it), a missing or malformed value.
        """
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(self._refusal(extras))
        return parsed

    def _refusal(self, extras: list[str]) -> str:
        flag = next((w.split("=", 1)[0] for w in extras if w.startswith("--")), None)
        if flag is None:
            return "unrecognized arguments: " + " ".join(extras)
        reason = self.explain(flag) if self.explain else None
        if reason:
            return reason
        # compared without the dashes, which every flag shares (--bogus is not --host)
        names = {f.lstrip("-"): f for f in self.flags() if f.startswith("--")}
        close = [names[n] for n in difflib.get_close_matches(flag.lstrip("-"), names, n=1,
                                                            cutoff=0.6)]
        return (f"unrecognized arguments: {' '.join(extras)}"
                + (f"; did you mean {close[0]}?" if close else ""))


def role_phrase(roles: Iterable[str]) -> str:
    """``server``, ``client`` or ``server and client``."""
    return " and ".join(roles)


def _shown_default(field: dataclasses.Field[Any], opt: Option) -> str:
    """The default as the docs spell it: ``10s``, ``false``; empty when there is none."""
    default: Any = field.default
    if field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    if default in ("", None, []):
        return ""
    if opt.kind == "bool":
        return "true" if default else "false"
    if opt.kind == "duration":
        return format_duration(default)
    return str(default)


def add_config_flags(parser: Parser, roles: Sequence[str] = ROLES,
                     keys: Sequence[str] | None = None) -> None:
    """Add ``--config`` and one flag per configuration key that one of ``roles`` reads (only
    ``keys``, when given), grouped as settings of both roles, of the server, of the client."""
    parser.add_to(None, "--config", metavar="FILE", dest="config_file", path=True,
                  help="JSON config file with the snake_case keys below")
    for f, opt in config_fields():
        if not set(opt.roles) & set(roles) or (keys is not None and f.name not in keys):
            continue
        group = ("common" if len(opt.roles) > 1 else opt.roles[0]) + " settings"
        env = f"CDR_{f.name.upper()}" + (f", {opt.env}" if opt.env else "")
        default = _shown_default(f, opt)
        help_text = f"{opt.help}{f' (default: {default})' if default else ''} [env {env}]"
        flag = "--" + f.name.replace("_", "-")
        if opt.kind == "bool":
            parser.add_to(group, flag, dest=f.name, nargs="?", const="true", default=None,
                          metavar="BOOL", help=help_text)
        elif opt.kind == "list":
            parser.add_to(group, flag, dest=f.name, action="append", default=None,
                          metavar=opt.metavar or "VALUE", help=help_text)
        else:
            metavar = {"int": "N", "duration": "DURATION", "path": "PATH"}.get(opt.kind, "VALUE")
            if opt.choices:
                metavar = "{" + ",".join(opt.choices) + "}"
            parser.add_to(group, flag, dest=f.name, default=None, metavar=metavar,
                          help=help_text, path=opt.kind == "path")


def config_from(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Config:
    """The validated :class:`Config` from a parser of :func:`add_config_flags` (other flags of
    the command must be taken out of ``args`` first).

    Raises:
        ConfigError: a bad value, file or variable (exit 2).
    """
    values = dict(vars(args))
    config_path = values.pop("config_file", None)
    return load_config(values, config_path=config_path, environ=environ)
