"""Per-module mutation score from mutmut's results (make mutation; docs/testing.md).

Reads ``mutmut results --all true`` on stdin and prints, per module (server.py and config.py
split into the functions in scope and the rest), killed / timeout / survived / no test and
the score (killed + timeout over the mutants that were run; a row's mutants that a run
restricted to other modules left unchecked are counted apart, in "not run"), then the
survivors counted per function (``mutmut show NAME`` prints one). Exit 0 always: the score
is a record, 85 % a target.
"""

from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict

# server.py functions that decide who gets in and what may be opened: the "server policy".
SERVER_POLICY = {
    "check_socket_path", "_check_socket_path", "authorized_keys",
    "begin_auth", "validate_public_key", "password_auth_supported", "kbdint_auth_supported",
    "session_requested", "connection_requested", "server_requested", "unix_server_requested",
    "unix_connection_requested",
}
# config.py functions that validate input (the rest formats help and documents keys).
CONFIG_VALIDATION = {
    "_allowed", "_convert", "_check_range", "read_config_file", "env_values", "flag_values",
    "load_config", "_cross_check",
}
# container_desktop_relay[.subpackage].module.function__mutmut_N: status
LINE = re.compile(r"^\s*container_desktop_relay\.(?:\w+\.)*?(?P<module>\w+)\.(?P<name>[^\s.]+?)"
                  r"__mutmut_\d+:"
                  r"\s*(?P<status>.+?)\s*$")


def function_of(name: str) -> str:
    """``xǁClassǁmethod`` or ``x_function`` -> the function or method name."""
    return name.split("ǁ")[-1] if "ǁ" in name else name.removeprefix("x_")


def group_of(module: str, function: str) -> str:
    """The row a mutant is counted in."""
    if module == "server":
        return "server (policy)" if function in SERVER_POLICY else "server (other)"
    if module == "config":
        return "config (validation)" if function in CONFIG_VALIDATION else "config (other)"
    return module


def main() -> None:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    by_function: dict[str, Counter[str]] = defaultdict(Counter)
    for line in sys.stdin:
        match = LINE.match(line)
        if not match:
            continue
        group = group_of(match["module"], function_of(match["name"]))
        status = match["status"]
        counts[group][status] += 1
        if status in ("survived", "no tests"):
            by_function[f"{match['module']}.{function_of(match['name'])}"][status] += 1
    print("| module | mutants | killed | timeout | survived | no test | not run | score |")
    print("|---|---|---|---|---|---|---|---|")
    for group in sorted(counts):
        c = counts[group]
        run = sum(c.values()) - c["not checked"]
        caught = c["killed"] + c["timeout"]
        score = f"{100 * caught / run:.0f} %" if run else "-"
        print(f"| {group} | {sum(c.values())} | {c['killed']} | {c['timeout']} | "
              f"{c['survived']} | {c['no tests']} | {c['not checked']} | {score} |")
    print()
    print("| function | survived | no test |")
    print("|---|---|---|")
    for function in sorted(by_function):
        c = by_function[function]
        print(f"| `{function}` | {c['survived']} | {c['no tests']} |")


if __name__ == "__main__":
    main()
