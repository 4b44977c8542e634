"""systemd units verified by systemd itself; the server runs under memory-deny-write-execute."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import (
    FACTOR,
    EchoTarget,
    Keys,
    Proc,
    exchange,
    fatal,
    free_port,
    need_tool,
    relay_env,
    run_relay,
    sha,
    skip_or_fail,
    ssh_forward,
    stopping,
    wait_for,
)

pytestmark = pytest.mark.e2e

UNIT = "container-desktop-relay.service"


def _install(tmp: Path, *extra: str) -> Path:
    """Write the unit with the install-service command (ExecStart: this interpreter)."""
    (tmp / "units").mkdir(exist_ok=True)
    result = run_relay("install-service", "--unit-dir", str(tmp / "units"), *extra)
    assert result.returncode == 0, result.stderr
    unit = tmp / "units" / UNIT
    assert f"wrote {unit}" in result.stdout and "systemctl" in result.stdout
    return unit


@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_units_pass_systemd_analyze_verify(tmp: Path, user: bool) -> None:
    """systemd-analyze verify accepts the installed unit with no warning at all."""
    analyze = need_tool("systemd-analyze")
    unit = _install(tmp, *(["--user"] if user else []))
    text = unit.read_text()
    exec_start = re.search(r"^ExecStart=(\S+)", text, re.M)
    assert exec_start and exec_start.group(1) == sys.executable
    runtime = tmp / "xdg-runtime"
    runtime.mkdir(mode=0o700)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), SYSTEMD_LOG_COLOR="0")
    argv = [analyze, *(["--user"] if user else []), "verify", str(unit)]
    result = subprocess.run(argv, env=env, capture_output=True, text=True,
                            timeout=60 * FACTOR, cwd=tmp)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == "", result.stdout + result.stderr


def test_verify_catches_a_broken_unit(tmp: Path) -> None:
    """The check above can fail: a unit whose ExecStart does not exist is rejected."""
    analyze = need_tool("systemd-analyze")
    unit = _install(tmp)
    unit.write_text(unit.read_text().replace(f"ExecStart={sys.executable}",
                                             f"ExecStart={tmp}/missing"))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            timeout=60 * FACTOR)
    assert result.returncode != 0 and "missing" in result.stderr


def test_system_unit_exposure_is_low(tmp: Path) -> None:
    """systemd-analyze security rates the system unit's sandbox at most 2.5 ("OK")."""
    analyze = need_tool("systemd-analyze")
    unit = _install(tmp)
    result = subprocess.run([analyze, "security", "--offline=true", str(unit)],
                            capture_output=True, text=True, timeout=60 * FACTOR,
                            env=dict(os.environ, SYSTEMD_COLORS="0"))
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.5, result.stdout


def test_print_matches_installed(tmp: Path) -> None:
    """--print writes to stdout exactly what install-service writes to disk."""
    unit = _install(tmp, "--user")
    printed = run_relay("install-service", "--user", "--print")
    assert printed.returncode == 0 and printed.stdout == unit.read_text()


def test_unwritable_unit_dir_is_one_line_error(tmp: Path) -> None:
    """A unit that cannot be written (a directory holds its name) gives one line, exit 1, no
    traceback."""
    (tmp / "units" / UNIT).mkdir(parents=True)
    result = run_relay("install-service", "--unit-dir", str(tmp / "units"))
    assert result.returncode == 1, result.stderr
    assert "cannot write" in fatal(result.stderr, 1) and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_unit_dir_is_exit_2_and_not_created(tmp: Path) -> None:
    """--unit-dir naming no directory: exit 2, one line naming it; nothing is created."""
    missing = tmp / "nonexistent" / "units"
    result = run_relay("install-service", "--unit-dir", str(missing))
    assert result.returncode == 2, result.stderr
    assert fatal(result.stderr, 2).startswith(
        f"invalid --unit-dir {missing}: no such directory; create it first")
    assert not (tmp / "nonexistent").exists()


PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1

MDWE_WRAPPER = """\
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:
    sys.exit("PR_SET_MDWE failed: " + os.strerror(ctypes.get_errno()))
os.execv(sys.argv[1], sys.argv[1:])
"""

W_X_PROBE = """\
import ctypes, mmap
print(ctypes.CDLL(None).prctl(66, 0, 0, 0, 0))
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    print("wx-allowed")
except PermissionError:
    print("wx-denied")
"""


def _mdwe_supported() -> bool:
    """Whether this kernel has PR_SET_MDWE (Linux 6.3+), tried in a child process."""
    code = ("import ctypes,sys; l=ctypes.CDLL(None); "
            "sys.exit(0 if l.prctl(65, 1, 0, 0, 0) == 0 else 1)")
    return subprocess.run([sys.executable, "-c", code], timeout=30).returncode == 0


def test_server_works_under_memory_deny_write_execute(keys: Keys, tmp: Path) -> None:
    """With W^X enforced by the kernel (what MemoryDenyWriteExecute= asks for), keygen and the
    server (uvloop, asyncssh, cryptography) still run and forward bytes exactly."""
    if not _mdwe_supported():
        skip_or_fail("kernel without PR_SET_MDWE (Linux < 6.3): cannot emulate the setting")
    wrapper = tmp / "mdwe.py"
    wrapper.write_text(MDWE_WRAPPER)
    under = [sys.executable, str(wrapper), sys.executable]
    probe = subprocess.run([*under, "-c", W_X_PROBE], capture_output=True, text=True,
                           timeout=60 * FACTOR)
    assert probe.stdout.split() == [str(PR_MDWE_REFUSE_EXEC_GAIN), "wx-denied"], probe
    relay = [*under, "-m", "container_desktop_relay"]
    keygen = subprocess.run(
        [*relay, "keygen", "--identity-path", str(tmp / "k" / "id_rsa"),
         "--authorized-keys-path", str(tmp / "k" / "ak"), "--log-level", "error"],
        env=relay_env(), capture_output=True, text=True, timeout=120 * FACTOR)
    assert keygen.returncode == 0, keygen.stderr
    port = free_port()
    server = Proc([*relay, "server", "--port", str(port),
                   "--identity-path", str(keys.identity),
                   "--authorized-keys-path", str(keys.authorized_keys),
                   "--health-check-enabled=false", "--metrics-enabled=false"],
                  tmp / "server.log", env=relay_env())
    echo = EchoTarget(tmp / "echo.sock")
    with stopping(echo, server):
        wait_for(lambda: '"server_listening"' in server.log() or not server.alive(), 30,
                 "server under MDWE to listen")
        assert server.alive(), server.log()
        forward = ssh_forward(port, keys.identity, tmp / "fwd.sock", str(echo.path), tmp)
        with stopping(forward):
            payload = os.urandom(3 << 20)
            assert exchange(tmp / "fwd.sock", payload) == (len(payload), sha(payload))
        assert server.alive(), server.log()
