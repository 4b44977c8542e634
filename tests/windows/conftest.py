"""Fixtures for the Windows tests: Wine prefix, Linux relay server, Unix targets, pipe relay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from winharness import (
    HERE,
    REPO,
    Process,
    Targets,
    Wine,
    find_wine_dir,
    free_port,
    scaled,
    wine_available,
    winpath,
)


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``windows`` marker."""
    config.addinivalue_line(
        "markers", "windows: Windows code run under Wine (a missing Wine fails under CI=true)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this folder is a ``windows`` test."""
    for item in items:
        if Path(str(item.fspath)).is_relative_to(HERE):
            item.add_marker(pytest.mark.windows)


@pytest.fixture(scope="session")
def wine() -> Iterator[Wine]:
    """A prepared prefix with Windows CPython and a running wineserver; stopped at the end."""
    if not wine_available():
        if os.environ.get("CI") == "true":
            pytest.fail("Wine is missing and cannot be installed (CI=true: not a skip)")
        pytest.skip("Wine is not installed (run scripts/setup-wine.sh as root)")
    wine = Wine(find_wine_dir())
    wine.start()
    try:
        yield wine
    finally:
        wine.stop()


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    """A short temporary directory (Unix socket paths stay under 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="cdrw", dir="/tmp") as tmp:
        yield Path(tmp)


def relay_cli(*args: str) -> list[str]:
    """argv running this checkout's relay with the test interpreter."""
    return [sys.executable, "-m", "container_desktop_relay", *args]


def relay_env() -> dict[str, str]:
    """Environment with this checkout's src first on PYTHONPATH."""
    return dict(os.environ, PYTHONPATH=str(REPO / "src"))


@dataclass
class Keys:
    """The generated identity and authorized_keys."""

    identity: Path
    authorized: Path


@pytest.fixture(scope="session")
def keys(workdir: Path) -> Keys:
    """An RSA key pair made by the relay's own keygen."""
    identity, authorized = workdir / "keys" / "id_rsa", workdir / "keys" / "authorized_keys"
    subprocess.run(relay_cli("keygen", "--identity-path", str(identity),
                             "--authorized-keys-path", str(authorized), "--log-level", "warn"),
                   env=relay_env(), check=True, capture_output=True, timeout=scaled(120))
    return Keys(identity, authorized)


@pytest.fixture(scope="session")
def targets(workdir: Path) -> Iterator[Targets]:
    """echo, sink and source Unix-socket targets."""
    (workdir / "t").mkdir()
    targets = Targets(workdir / "t")
    targets.start()
    yield targets
    targets.stop()


def start_server(argv0: list[str], keys: Keys, env: dict[str, str] | None = None) -> tuple[
        Process, int]:
    """Start a relay server (``argv0`` = the program) on a free port; wait until it listens."""
    port = free_port()
    proc = Process.start([*argv0, "server", "--host", "127.0.0.1", "--port", str(port),
                          "--identity-path", str(keys.identity),
                          "--authorized-keys-path", str(keys.authorized),
                          "--max-connections", "1000", "--health-check-enabled", "false",
                          "--metrics-enabled", "false", "--log-level", "info"], env=env)
    try:
        proc.err.wait_for(lambda ln: '"server_listening"' in ln, scaled(60), "server_listening")
    except BaseException:
        proc.stop()
        raise
    return proc, port


@pytest.fixture(scope="session")
def server(keys: Keys) -> Iterator[int]:
    """This checkout's Linux relay server; yields its port."""
    proc, port = start_server([sys.executable, "-m", "container_desktop_relay"], keys,
                              env=relay_env())
    yield port
    proc.stop()


@dataclass
class PipeRelay:
    """The Windows-side relay process and what it reported when ready."""

    process: Process
    ready: dict[str, object]
    pipes: dict[str, str]


def start_pipe_relay(wine: Wine, keys: Keys, port: int, targets: Targets,
                     tag: str) -> PipeRelay:
    """Run win_relay.py under Wine: one pipe per target kind, forwarded to ``port``."""
    pipes = {kind: rf"\\.\pipe\cdr-{tag}-{os.getpid()}-{kind}" for kind in
             ("echo", "sink", "source")}
    args = [winpath(HERE / "win_relay.py"), "--port", str(port),
            "--identity", winpath(keys.identity)]
    for kind, name in pipes.items():
        args += ["--pipe", f"{name}={targets.path(kind)}"]
    proc = Process.start(wine.command(args, scaled(1200)), env=wine.env)
    try:
        line = proc.out.wait_for(lambda ln: '"ready"' in ln, scaled(120), "relay ready line")
    except BaseException:
        proc.stop()
        raise
    return PipeRelay(proc, json.loads(line), pipes)


@pytest.fixture(scope="session")
def pipe_relay(wine: Wine, keys: Keys, server: int, targets: Targets) -> Iterator[PipeRelay]:
    """The pipe relay forwarding to this checkout's server."""
    relay = start_pipe_relay(wine, keys, server, targets, "py")
    yield relay
    relay.process.stop()
