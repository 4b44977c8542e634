"""Fixtures for the Windows tests: Wine prefix, Linux relay server, Unix target, the relay
client running as a Windows program under Wine."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from winharness import (
    HERE,
    PipeClient,
    Targets,
    Wine,
    find_wine_dir,
    start_pipe_client,
    wine_available,
)

from helpers import Keys, RelayServer, short_tmpdir, skip_or_fail


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``windows`` marker."""
    config.addinivalue_line(
        "markers", "windows: Windows code run under Wine (a missing Wine fails under any truthy CI)"
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
        skip_or_fail("Wine is not installed", "run scripts/setup-wine.sh as root")
    wine = Wine(find_wine_dir())
    wine.start()
    try:
        yield wine
    finally:
        wine.stop()


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    """A short temporary directory for the session (Unix socket paths stay short)."""
    path = short_tmpdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def targets(workdir: Path) -> Iterator[Targets]:
    """The echo/sink/source Unix-socket target."""
    (workdir / "t").mkdir()
    targets = Targets(workdir / "t")
    targets.start()
    yield targets
    targets.stop()


@pytest.fixture(scope="session")
def server(session_keys: Keys, workdir: Path) -> Iterator[RelayServer]:
    """This checkout's Linux relay server (the relay's server role)."""
    (workdir / "s").mkdir()
    server = RelayServer(session_keys, workdir / "s", "--max-connections", "1000")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pipe_client(wine: Wine, session_keys: Keys, workdir: Path, server: RelayServer,
                targets: Targets) -> Iterator[PipeClient]:
    """The relay client (Windows, under Wine) → this checkout's server → the target."""
    client = start_pipe_client(wine, session_keys, workdir, server.port, targets.path, "py")
    yield client
    client.stop()
