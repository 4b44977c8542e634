"""The locks in lock/ agree with pyproject.toml, and the dev env is exactly its lock."""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("lockcheck", REPO / "scripts" / "lockcheck.py")
assert _spec is not None and _spec.loader is not None
lockcheck = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lockcheck)

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
RUNTIME = [Requirement(r) for r in PROJECT["dependencies"]]
TEST = [Requirement(r) for r in PROJECT["optional-dependencies"]["test"]]
MUTATION = [Requirement(r) for r in PROJECT["optional-dependencies"]["mutation"]]
WINDOWS = {"sys_platform": "win32", "platform_system": "Windows", "os_name": "nt",
           "python_version": "3.12"}


def _all_pins(name: str) -> dict[str, str]:
    """Every pin in lock/``name``, markers ignored (the universal locks list all platforms)."""
    found = {}
    for line in (REPO / "lock" / name).read_text().splitlines():
        match = lockcheck.PIN.match(line.strip())
        if match:
            found[canonicalize_name(match.group(1))] = match.group(2)
    return found


@pytest.mark.parametrize(("lock", "requirements", "env"), [
    ("runtime.txt", RUNTIME, None),
    ("dev.txt", RUNTIME + TEST, None),
    ("mutation.txt", RUNTIME + TEST + MUTATION, None),
    ("dist.txt", RUNTIME, None),
    ("floors.txt", RUNTIME + TEST, None),
    ("windows.txt", RUNTIME, WINDOWS),
])
def test_every_declared_dependency_is_locked_inside_its_range(
        lock: str, requirements: list[Requirement], env: dict[str, str] | None) -> None:
    """A dependency added to or re-ranged in pyproject.toml fails here until `make lock`."""
    pins = _all_pins(lock)
    for req in requirements:
        if req.marker is not None and not req.marker.evaluate(env or {}):
            continue
        pinned = pins.get(canonicalize_name(req.name))
        assert pinned is not None, f"{req.name} is not in lock/{lock}: run make lock"
        assert req.specifier.contains(pinned, prereleases=True), (
            f"lock/{lock} pins {req.name}=={pinned}, outside {req}: run make lock")


def test_floors_lock_holds_each_declared_minimum() -> None:
    """lock/floors.txt is every direct dependency at exactly the floor its range declares."""
    pins = _all_pins("floors.txt")
    for req in RUNTIME + TEST:
        floors = [s.version for s in req.specifier if s.operator in (">=", "==")]
        assert floors, f"{req} declares no minimum"
        floor = max(floors, key=Version)
        assert Version(pins[canonicalize_name(req.name)]) == Version(floor), (
            f"lock/floors.txt has {req.name}=={pins[canonicalize_name(req.name)]}, "
            f"the declared floor is {floor}: run make lock")


def test_locked_env_is_exactly_the_lock() -> None:
    """The dev env (`make venv`) holds exactly lock/dev.txt: nothing missing, other or extra."""
    if Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        pytest.fail(f"run from the locked env {REPO / '.venv'} (make venv), not {sys.prefix}")
    problems = lockcheck.differences(lockcheck.pins(str(REPO / "lock" / "dev.txt")),
                                     lockcheck.installed(), {"pip", "container-desktop-relay"})
    assert not problems, problems


def test_lockcheck_reports_each_kind_of_difference() -> None:
    """Missing, other-version and unlocked packages are each reported; a match is silent."""
    lock = {"a": "1.0", "b": "2.0", "c": "3.0"}
    have = {"a": "1.0", "b": "2.1", "d": "4.0", "pip": "23.2"}
    assert lockcheck.differences(lock, have, {"pip"}) == [
        "b 2.1 is installed, the lock says 2.0",
        "c==3.0 is locked but not installed",
        "d 4.0 is installed but not in the lock",
    ]
    assert lockcheck.differences(lock, dict(lock), set()) == []
