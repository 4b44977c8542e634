"""`docker-context` with the real docker CLI (private DOCKER_CONFIG), then docker through it."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from clienthelp import ClientProc
from helpers import FACTOR, Keys, Podman, RelayServer, fatal, need_tool, relay_env, run_relay

pytestmark = pytest.mark.e2e


def _env(tmp: Path) -> dict[str, str]:
    env = relay_env(DOCKER_CONFIG=str(tmp / "docker-config"))
    env.pop("DOCKER_HOST", None)
    env.pop("DOCKER_CONTEXT", None)
    return env


def _docker(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    docker = need_tool("docker")
    return subprocess.run([docker, *args], env=_env(tmp), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120 * FACTOR)


def _host(tmp: Path, name: str) -> str:
    inspect = _docker(tmp, "context", "inspect", name)
    assert inspect.returncode == 0, inspect.stderr
    return str(json.loads(inspect.stdout)[0]["Endpoints"]["docker"]["Host"])


def test_printed_command_creates_the_context(tmp: Path) -> None:
    """The printed one-liner, run as is, makes a context for the unix endpoint."""
    sock = tmp / "relay.sock"
    result = run_relay("docker-context", "relay", "--listen", f"unix://{sock}")
    assert result.returncode == 0, result.stderr
    create, use = result.stdout.splitlines()
    assert use == "docker context use relay"
    argv = shlex.split(create)
    assert argv[:4] == ["docker", "context", "create", "relay"]
    made = _docker(tmp, *argv[1:])
    assert made.returncode == 0, made.stderr
    assert _host(tmp, "relay") == f"unix://{sock}"


def test_one_context_per_forward(tmp: Path) -> None:
    """With two --forward, --create makes one context per forward (named, or NAME-1, NAME-2),
    each pointing at its own local endpoint."""
    a, b = tmp / "a.sock", tmp / "b.sock"
    forwards = ["--forward", f"unix://{a}=/run/docker.sock",
                "--forward", f"unix://{b}=/run/podman/podman.sock"]
    env = _env(tmp)
    made = run_relay("docker-context", "docker", "podman", "--create", *forwards, env=env)
    assert made.returncode == 0, made.stderr
    assert (_host(tmp, "docker"), _host(tmp, "podman")) == (f"unix://{a}", f"unix://{b}")
    printed = run_relay("docker-context", "eng", *forwards)
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    assert [shlex.split(ln)[3] for ln in lines[:2]] == ["eng-1", "eng-2"]
    assert lines[2] == "docker context use eng-1"
    wrong = run_relay("docker-context", "x1", "x2", "x3", *forwards)
    assert wrong.returncode == 2
    assert fatal(wrong.stderr, 2).endswith("give one name per forward (2), or one name to "
                                         "number them")


@pytest.mark.parametrize("flags", [[], ["--named-pipe", "npipe:////./pipe/cdr-test"]])
def test_named_pipe_endpoint_refused_off_windows(flags: list[str]) -> None:
    """Without --listen the endpoint is a Windows pipe, which Linux has not: exit 2 naming the
    fix, as `client` does, and nothing printed (the npipe:// spelling: test_dockerctx.py)."""
    result = run_relay("docker-context", "win", *flags)
    assert result.returncode == 2, result.stderr
    assert "named pipes exist only on Windows; use --listen unix:///path/relay.sock here" in \
        fatal(result.stderr, 2)
    assert result.stdout == ""


def test_bad_name_is_exit_2() -> None:
    """A name the docker CLI would reject is refused up front, one line, exit 2."""
    result = run_relay("docker-context", "-bad/name", "--listen", "unix:///tmp/x.sock")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    result = run_relay("docker-context", "bad/name", "--listen", "unix:///tmp/x.sock")
    assert result.returncode == 2 and "invalid context name" in result.stderr


def test_create_then_docker_uses_the_relay(podman: Podman, relay_server: RelayServer,
                                           keys: Keys, tmp: Path) -> None:
    """--create makes (then updates) the context; `docker --context NAME version` reaches
    Podman through client and server."""
    client = ClientProc(keys, tmp, relay_server.port, str(podman.socket))
    try:
        env = _env(tmp)
        first = run_relay("docker-context", "cdr", "--create", "--listen",
                          f"unix://{tmp / 'stale.sock'}", env=env)
        assert first.returncode == 0, first.stderr
        assert "created docker context cdr" in first.stdout
        again = run_relay("docker-context", "cdr", "--create", "--listen",
                          f"unix://{client.socket}", env=env)
        assert again.returncode == 0, again.stderr
        assert "updated docker context cdr" in again.stdout
        assert _host(tmp, "cdr") == f"unix://{client.socket}"
        version = _docker(tmp, "--context", "cdr", "version", "--format",
                          "{{.Server.Version}}")
        assert version.returncode == 0, version.stderr
        assert version.stdout.strip()
        used = _docker(tmp, "context", "use", "cdr")
        assert used.returncode == 0, used.stderr
        info = _docker(tmp, "info", "--format", "{{.ServerVersion}}")
        assert info.returncode == 0 and info.stdout.strip() == version.stdout.strip()
    finally:
        client.stop()


def test_create_without_docker_cli(tmp: Path) -> None:
    """--create with no docker on PATH is one line, exit 1, pointing at the printed form."""
    env = dict(_env(tmp), PATH=str(tmp))
    result = subprocess.run([sys.executable, "-m", "container_desktop_relay",
                             "docker-context", "x1", "--create", "--listen",
                             "unix:///tmp/x.sock"], env=env, capture_output=True, text=True,
                            timeout=60 * FACTOR)
    assert result.returncode == 1 and "docker CLI is not on PATH" in result.stderr
