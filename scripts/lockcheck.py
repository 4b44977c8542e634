"""Check that this Python's installed distributions are exactly a lock file's pins.

usage: python scripts/lockcheck.py lock/dev.txt [--ignore NAME ...]
Exit 0 when every pin whose marker applies here is installed at that version and nothing
else is installed (pip, and the names given with --ignore, aside); else one line per
difference and exit 1.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import sys

try:
    from packaging.markers import Marker
    from packaging.utils import canonicalize_name
except ImportError:  # a bare interpreter: pip's vendored copy
    from pip._vendor.packaging.markers import Marker
    from pip._vendor.packaging.utils import canonicalize_name

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def pins(path: str) -> dict[str, str]:
    """name -> version for every pin in ``path`` whose environment marker holds here."""
    found: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            match = PIN.match(line.strip())
            if match is None:
                continue
            name, version, marker = match.groups()
            if marker and not Marker(marker).evaluate():
                continue
            found[canonicalize_name(name)] = version
    return found


def installed() -> dict[str, str]:
    """name -> version of every distribution this interpreter sees."""
    return {canonicalize_name(d.metadata["Name"]): d.version
            for d in importlib.metadata.distributions()}


def differences(lock: dict[str, str], have: dict[str, str], ignore: set[str]) -> list[str]:
    """One line per package that is missing, at another version, or not in the lock."""
    out = []
    for name in sorted(lock.keys() | have.keys()):
        if name in ignore:
            continue
        want, got = lock.get(name), have.get(name)
        if want is None:
            out.append(f"{name} {got} is installed but not in the lock")
        elif got is None:
            out.append(f"{name}=={want} is locked but not installed")
        elif got != want:
            out.append(f"{name} {got} is installed, the lock says {want}")
    return out


def main() -> int:
    """Compare the lock with the installed distributions and report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lock")
    parser.add_argument("--ignore", action="append", default=[])
    args = parser.parse_args()
    ignore = {canonicalize_name(n) for n in ["pip", "container-desktop-relay", *args.ignore]}
    problems = differences(pins(args.lock), installed(), ignore)
    for line in problems:
        print(f"lockcheck: {args.lock}: {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
