"""Command line: find the command in the registry, let it parse and run, map errors to exits."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from container_desktop_relay._version import PROG, __version__
from container_desktop_relay.commands import registry
from container_desktop_relay.errors import RelayError
from container_desktop_relay.log import fatal_line

__all__ = ["main", "version_line"]


def version_line() -> str:
    """``PROG VERSION (Python X, asyncssh Y, cryptography Z)``: what this build carries."""
    from importlib.metadata import version

    return (f"{PROG} {__version__} (Python {sys.version.split()[0]}, asyncssh "
            f"{version('asyncssh')}, cryptography {version('cryptography')})")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns the exit status (0 ok, 1 failure, 2 bad usage or configuration)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help", "-help", "help"):
        print(registry.usage(), end="")
        return 0
    if args and args[0] in ("--version", "-version", "version"):
        print(version_line())
        return 0
    try:
        if args and not args[0].startswith("-"):
            return registry.find(args[0]).run(args[1:])
        return registry.bare().run(args, prog=PROG)
    except RelayError as exc:
        print(fatal_line(str(exc), exc.exit_code), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
