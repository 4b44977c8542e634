"""Checks of the Windows executable on real Windows (run by .github/workflows/windows.yml).

    python tests/windows/native_smoke.py dist\\container-desktop-relay.exe
    python tests/windows/native_smoke.py python -m container_desktop_relay   (same checks)

No server is needed: the client creates its pipe before it connects, and keeps it while it
retries. Checked: the pipe's DACL as Windows stores it, the pipe is message-type, a second
relay on the same name is refused, and winjob's kill-on-close job (with its control).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pywintypes
import win32pipe

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from win_client import info  # noqa: E402

ERROR_FILE_NOT_FOUND = 2


def wait_pipe(pipe: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until ``pipe`` exists (the client is listening); fail if the client exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            win32pipe.WaitNamedPipe(pipe, 100)
            return
        except pywintypes.error as exc:
            if exc.winerror != ERROR_FILE_NOT_FOUND:
                return  # it exists (e.g. busy or timed out waiting for an instance)
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"client did not create {pipe} (exit status {proc.poll()})")
        time.sleep(0.1)


def client(exe: list[str], tmp: Path, name: str) -> list[str]:
    """A client command line whose SSH server does not exist (it keeps retrying)."""
    return [*exe, "client", "--named-pipe", f"npipe:////./pipe/{name}",
            "--ssh-connection", "ssh://relay@127.0.0.1:9/var/run/docker.sock",
            "--identity-path", str(tmp / "id_rsa"), "--known-hosts-path", str(tmp / "known_hosts"),
            "--max-retries", "1000", "--ssh-timeout", "1", "--log-level", "info"]


def main() -> None:
    """Run the checks; exit non-zero with a message on the first failure."""
    exe = sys.argv[1:]
    name = f"cdr-ci-{os.getpid()}"
    pipe = rf"\\.\pipe\{name}"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        subprocess.run([*exe, "keygen", "--identity-path", str(tmp / "id_rsa"),
                        "--authorized-keys-path", str(tmp / "authorized_keys")],
                       check=True, capture_output=True, timeout=120)
        first = subprocess.Popen(client(exe, tmp, name), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        try:
            wait_pipe(pipe, first, 60)
            found = info(pipe)
            expected = f"D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;{found['user_sid']})"
            assert found["dacl"] == expected, found
            assert found["message_type"] is True, found
            second = subprocess.run(client(exe, tmp, name), capture_output=True, text=True,
                                    timeout=120)
            refusal = f"named pipe {pipe} already exists (owned by another process)"
            fatal = [json.loads(ln) for ln in second.stderr.splitlines() if '"fatal"' in ln]
            assert second.returncode != 0 and fatal, second.stderr
            assert refusal in fatal[-1]["message"], second.stderr  # parsed: the line escapes \\
        finally:
            first.kill()
            first.wait()
    for flags, exited in (([], True), (["--no-job", "2"], False)):
        done = subprocess.run([sys.executable, str(HERE / "win_job.py"), "supervise", *flags],
                              capture_output=True, text=True, timeout=120, check=True)
        result = json.loads(done.stdout.splitlines()[-1])
        assert result["exited"] is exited, result
    print("native smoke checks passed")


if __name__ == "__main__":
    main()
