"""The release artefacts: build wheel + sdist from the source tree, install into a fresh venv."""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import pytest

from helpers import FACTOR, REPO, short_tmpdir, skip_or_fail

pytestmark = pytest.mark.e2e


def _run(argv: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in ``cwd`` with an environment that cannot see the source tree."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "CDR_CONFIG", "VIRTUAL_ENV", "PYTHONHOME")}
    return subprocess.run(argv, cwd=cwd, env=env, text=True, capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=timeout * FACTOR)


@pytest.fixture(scope="module")
def dist() -> Iterator[Path]:
    """``python -m build`` of this checkout (sdist, then the wheel built from that sdist)."""
    if importlib.util.find_spec("build") is None:
        message = "the 'build' package is not installed (pip install '.[test]')"
        skip_or_fail(message)
    out = short_tmpdir()
    # A copy of the tree, so the build's egg-info and build/ never land in the checkout.
    tree = out / "tree"
    shutil.copytree(REPO, tree, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".cache", ".hypothesis", "__pycache__", "*.egg-info", "build", "dist",
        ".*_cache"))
    # --no-isolation: the build backend is the locked setuptools of this env, not whatever
    # release an isolated build env would download today.
    result = _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out),
                   str(tree)], cwd=out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    yield out
    shutil.rmtree(out, ignore_errors=True)


def _one(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {directory}: {found}"
    return found[0]


def test_wheel_metadata(dist: Path) -> None:
    """The wheel's metadata carries the single-sourced version, license, URLs and the script."""
    from container_desktop_relay import __version__

    wheel = _one(dist, "*.whl")
    assert wheel.name == f"container_desktop_relay-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        info = f"container_desktop_relay-{__version__}.dist-info"
        meta = Parser().parsestr(zf.read(f"{info}/METADATA").decode())
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
        names = zf.namelist()
    assert meta["Name"] == "container-desktop-relay"
    assert meta["Version"] == __version__
    assert meta["License-Expression"] == "MIT"
    assert meta["Requires-Python"] == ">=3.11"
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Homepage", "Documentation", "Issues", "Changelog"} <= set(urls)
    assert "Programming Language :: Python :: 3.11" in meta.get_all("Classifier")
    # ranges for people who pip install the wheel; the lock pins what CI tested
    asyncssh = [r for r in meta.get_all("Requires-Dist") if r.startswith("asyncssh")]
    assert len(asyncssh) == 1 and ">=" in asyncssh[0] and "<" in asyncssh[0], asyncssh
    assert "container-desktop-relay = container_desktop_relay.cli:main" in entry_points
    assert "container_desktop_relay/py.typed" in names
    assert not any(n.startswith("tests/") for n in names)


def test_sdist_contents(dist: Path) -> None:
    """The sdist holds what a source build and its tests need: docs, changelog, tests, units."""
    from container_desktop_relay import __version__

    sdist = _one(dist, "*.tar.gz")
    root = f"container_desktop_relay-{__version__}"
    with tarfile.open(sdist) as tf:
        names = set(tf.getnames())
    for need in ("pyproject.toml", "LICENSE", "README.md", "CHANGELOG.md",
                 "docs/configuration.md", "src/container_desktop_relay/_version.py",
                 "tests/helpers.py", "contrib/systemd/container-desktop-relay.service",
                 "lock/dev.txt", "lock/runtime.txt", "scripts/lockcheck.py"):
        assert f"{root}/{need}" in names, need


def test_installed_wheel_runs_outside_the_source_tree(dist: Path, tmp: Path) -> None:
    """A fresh venv with only the wheel installed runs --version and keygen from elsewhere."""
    from container_desktop_relay import __version__

    wheel = _one(dist, "*.whl")
    venv = tmp / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp)
    assert made.returncode == 0, made.stderr
    # As the README says: the runtime lock (hash-checked), then the wheel on top of it.
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
           "--disable-pip-version-check"]
    for argv in ([*pip, "--require-hashes", "--no-deps", "-r", str(REPO / "lock/runtime.txt")],
                 [*pip, "--no-deps", str(wheel)]):
        installed = _run(argv, cwd=tmp)
        assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    # (Python 3.11's venv seeds setuptools; the wheel does not need it)
    check = _run([str(venv / "bin" / "python"), str(REPO / "scripts/lockcheck.py"),
                  str(REPO / "lock/runtime.txt"), "--ignore", "setuptools"], cwd=tmp)
    assert check.returncode == 0, check.stderr
    script = venv / "bin" / "container-desktop-relay"
    assert script.exists()

    version = _run([str(script), "--version"], cwd=tmp)
    assert version.returncode == 0, version.stderr
    # the relay's version, then the Python, asyncssh and cryptography it runs with
    assert version.stdout.strip().startswith(f"container-desktop-relay {__version__} (Python ")

    where = _run([str(venv / "bin" / "python"), "-c",
                  "import container_desktop_relay as m; print(m.__file__)"], cwd=tmp)
    assert where.stdout.strip().startswith(str(venv)), where.stdout

    identity = tmp / "keys" / "id_rsa"
    authorized = tmp / "keys" / "authorized_keys"
    keygen = _run([str(script), "keygen", "--identity-path", str(identity),
                   "--authorized-keys-path", str(authorized), "--log-level", "error"], cwd=tmp)
    assert keygen.returncode == 0, keygen.stderr
    assert stat.S_IMODE(identity.stat().st_mode) == 0o600
    assert identity.read_text().startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert authorized.read_text().startswith("ssh-rsa ")

    unit = _run([str(script), "install-service", "--print"], cwd=tmp)
    assert unit.returncode == 0, unit.stderr
    assert f"ExecStart={script} server\n" in unit.stdout
    completion = _run([str(script), "completion", "bash"], cwd=tmp)
    assert completion.returncode == 0 and "install-service" in completion.stdout

    bad = _run([str(script), "server", "--port", "0"], cwd=tmp)
    assert bad.returncode == 2 and "invalid port=0" in bad.stderr
    assert "Traceback" not in bad.stderr
