"""Shell completion scripts: every command and flag, and bash really completes them."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from container_desktop_relay.commands.completion import SHELLS, script
from container_desktop_relay.commands.registry import COMMANDS
from container_desktop_relay.config import config_fields


@pytest.mark.parametrize("shell", SHELLS)
def test_script_names_every_command_and_flag(shell: str) -> None:
    """Each script lists every command and every configuration flag (the --flag spelling)."""
    text = script(shell)
    for command in COMMANDS:
        assert command.name in text, command.name
    for f, _ in config_fields():
        assert "--" + f.name.replace("_", "-") in text, f.name
    assert "--unit-dir" in text and "--user" in text


def test_go_style_twins_are_not_offered() -> None:
    """Go's -flag spelling still parses but is not offered (it would double every list)."""
    text = script("bash")
    assert " -host " not in text and "'-host'" not in text and "--host" in text


def _complete(words: list[str]) -> list[str]:
    bash = shutil.which("bash")
    assert bash, "bash is part of the base system"
    line = " ".join(words)
    program = (
        script("bash")
        + f"\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; COMP_LINE='{line}'; "
        + "COMP_POINT=${#COMP_LINE}; _shtab_container_desktop_relay; "
        + 'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run([bash, "--norc", "--noprofile"], input=program, text=True,
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_bash_completes_commands_and_flags() -> None:
    """Sourced into bash, the script completes a command name and a server flag."""
    assert _complete(["container-desktop-relay", "install-"]) == ["install-service"]
    assert _complete(["container-desktop-relay", "server", "--host-"]) == ["--host-key-path"]
    assert _complete(["container-desktop-relay", "client", "--secure-"]) == \
        ["--secure-host-key"]
