"""Windows pipe client for the tests (run by Windows CPython), written like go-winio's dialer:
plain CreateFile/ReadFile/WriteFile through pywin32, CloseWrite as a zero-length message, and
no retry on ERROR_PIPE_BUSY (counted instead). Prints one JSON result line.

    python.exe win_client.py upload|download|stall|abandon|burst|info|dockerpy|serve PIPE [args]
    python.exe win_client.py sleeper -
    python.exe win_client.py launch - ARGS...
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time

import pywintypes
import win32api
import win32file
import win32pipe
import win32security

CHUNK = 64 * 1024
ERROR_BROKEN_PIPE = 109
ERROR_PIPE_BUSY = 231
ERROR_MORE_DATA = 234


def connect(pipe: str) -> int:
    """Open the pipe once (no busy retry: busy is a test failure)."""
    return win32file.CreateFile(
        pipe, win32file.GENERIC_READ | win32file.GENERIC_WRITE, 0, None,
        win32file.OPEN_EXISTING, 0, None,
    )


def close_write(handle: int) -> None:
    """go-winio's CloseWrite: a zero-length message."""
    win32file.WriteFile(handle, b"")


def read_to_eof(handle: int, limit: int = 1 << 40) -> bytes:
    """Read until a zero-length message (EOF) or the server's close."""
    out = bytearray()
    while len(out) < limit:
        try:
            hr, data = win32file.ReadFile(handle, CHUNK)
        except pywintypes.error as exc:
            if exc.winerror == ERROR_BROKEN_PIPE:
                break
            raise
        if not data and hr != ERROR_MORE_DATA:
            break
        out += data
    return bytes(out)


def send_random(handle: int, size: int) -> str:
    """Write ``size`` random bytes; return their sha256."""
    digest = hashlib.sha256()
    left = size
    while left:
        chunk = os.urandom(min(CHUNK, left))
        digest.update(chunk)
        win32file.WriteFile(handle, chunk)
        left -= len(chunk)
    return digest.hexdigest()


def upload(pipe: str, size: int) -> dict[str, object]:
    """Send ``size`` bytes, half-close, read the target's reply."""
    handle = connect(pipe)
    started = time.monotonic()
    win32file.WriteFile(handle, b"sink\n")
    sha = send_random(handle, size)
    close_write(handle)
    reply = read_to_eof(handle)
    elapsed = time.monotonic() - started
    win32file.CloseHandle(handle)
    return {"sha": sha, "size": size, "reply": reply.decode(), "seconds": elapsed}


def abandon(pipe: str, size: int, count: int = 1) -> dict[str, object]:
    """``count`` clients at once: each sends ``sink`` and ``size`` random bytes, then closes
    its handle at once, without CloseWrite and without reading the answer."""
    barrier = threading.Barrier(count)
    shas: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        payload = os.urandom(size)
        barrier.wait(timeout=60)
        handle = connect(pipe)
        win32file.WriteFile(handle, b"sink\n" + payload)
        win32file.CloseHandle(handle)
        with lock:
            shas.append(hashlib.sha256(payload).hexdigest())

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"sent": size + 5, "shas": shas}


def stall(pipe: str, size: int) -> dict[str, object]:
    """Write ``size`` bytes to a target that does not read yet; report (one JSON line) how far
    the writes got before they blocked, then finish once the target reads."""
    handle = connect(pipe)
    win32file.WriteFile(handle, b"stall\n")
    written = [0]
    digest = hashlib.sha256()

    def writer() -> None:
        left = size
        while left:
            chunk = os.urandom(min(CHUNK, left))
            digest.update(chunk)
            win32file.WriteFile(handle, chunk)
            written[0] += len(chunk)
            left -= len(chunk)

    thread = threading.Thread(target=writer)
    thread.start()
    last, since = -1, time.monotonic()
    while thread.is_alive():
        if written[0] != last:
            last, since = written[0], time.monotonic()
        elif time.monotonic() - since > 2.0:  # no progress for 2 s: the writes are blocked
            print(json.dumps({"stalled_at": last}), flush=True)
            break
        time.sleep(0.05)
    thread.join()
    close_write(handle)
    reply = read_to_eof(handle)
    win32file.CloseHandle(handle)
    return {"sha": digest.hexdigest(), "size": size, "reply": reply.decode()}


def download(pipe: str, size: int) -> dict[str, object]:
    """Ask for ``size`` bytes, read to the target's half-close, then still write, then close."""
    handle = connect(pipe)
    started = time.monotonic()
    win32file.WriteFile(handle, f"source {size}\n".encode())
    data = read_to_eof(handle)
    elapsed = time.monotonic() - started
    win32file.WriteFile(handle, b"written after EOF")
    close_write(handle)
    rest = read_to_eof(handle)
    win32file.CloseHandle(handle)
    return {"sha": hashlib.sha256(data).hexdigest(), "size": len(data), "rest": len(rest),
            "seconds": elapsed}


def burst(pipe: str, count: int, size: int) -> dict[str, object]:
    """``count`` clients connect at once; each echoes ``size`` bytes through the relay."""
    barrier = threading.Barrier(count)
    results: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        outcome = "ok"
        try:
            barrier.wait(timeout=60)
            handle = connect(pipe)
        except pywintypes.error as exc:
            outcome = "busy" if exc.winerror == ERROR_PIPE_BUSY else f"connect: {exc}"
        else:
            try:
                payload = os.urandom(size)
                win32file.WriteFile(handle, b"echo\n" + payload)
                close_write(handle)
                echoed = read_to_eof(handle)
                if echoed != payload:
                    outcome = f"mismatch: {len(echoed)} of {size} bytes"
            except pywintypes.error as exc:
                outcome = f"io: {exc}"
            finally:
                win32file.CloseHandle(handle)
        with lock:
            results.append(outcome)

    started = time.monotonic()
    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"ok": results.count("ok"), "busy": results.count("busy"),
            "errors": sorted({r for r in results if r not in ("ok", "busy")}),
            "seconds": time.monotonic() - started}


def info(pipe: str) -> dict[str, object]:
    """The pipe's type and DACL and this user's SID, read with pywin32 (not the relay's code)."""
    handle = connect(pipe)
    flags, _out, _in, max_instances = win32pipe.GetNamedPipeInfo(handle)
    sd = win32security.GetSecurityInfo(handle, win32security.SE_KERNEL_OBJECT,
                                       win32security.DACL_SECURITY_INFORMATION)
    dacl = win32security.ConvertSecurityDescriptorToStringSecurityDescriptor(
        sd, win32security.SDDL_REVISION_1, win32security.DACL_SECURITY_INFORMATION)
    token = win32security.OpenProcessToken(win32api.GetCurrentProcess(),
                                           win32security.TOKEN_QUERY)
    sid, _ = win32security.GetTokenInformation(token, win32security.TokenUser)
    close_write(handle)
    win32file.CloseHandle(handle)
    return {"message_type": bool(flags & win32pipe.PIPE_TYPE_MESSAGE), "dacl": dacl,
            "user_sid": win32security.ConvertSidToStringSid(sid), "max_instances": max_instances}


def dockerpy(pipe: str) -> dict[str, object]:
    """docker-py (Windows wheel, over its own npipe transport): version, ping, run a container."""
    import docker

    url = "npipe://" + pipe.replace("\\", "/")  # npipe:////./pipe/NAME
    client = docker.DockerClient(base_url=url, timeout=120)
    version = client.version()
    output = client.containers.run("bb:latest", ["echo", "hello from podman"], remove=True)
    return {"ping": client.ping(), "version": version.get("Version"),
            "components": [c.get("Name") for c in version.get("Components", [])],
            "output": output.decode()}


def serve(pipe: str) -> dict[str, object]:
    """Create an instance of ``pipe`` and report how many instances the name has (1: nobody
    else serves it any more)."""
    import _winapi

    handle = _winapi.CreateNamedPipe(
        pipe, _winapi.PIPE_ACCESS_DUPLEX | _winapi.FILE_FLAG_FIRST_PIPE_INSTANCE,
        _winapi.PIPE_TYPE_MESSAGE | _winapi.PIPE_WAIT, _winapi.PIPE_UNLIMITED_INSTANCES,
        4096, 4096, 0, _winapi.NULL)
    _state, instances, *_ = win32pipe.GetNamedPipeHandleState(handle, False)
    win32file.CloseHandle(handle)
    return {"instances": instances}


def sleeper(_pipe: str) -> dict[str, object]:
    """Print this process's Windows PID, then sleep (a parent for the watch tests)."""
    print(json.dumps({"pid": os.getpid()}), flush=True)
    time.sleep(3600)
    return {}


def launch(_pipe: str, *argv: str) -> dict[str, object]:
    """Start ``python.exe argv...`` as a Windows child (as the desktop app starts the relay),
    print both PIDs, wait for it."""
    import subprocess

    child = subprocess.Popen([sys.executable, *argv])
    print(json.dumps({"pid": os.getpid(), "child": child.pid}), flush=True)
    return {"exit": child.wait()}


def main() -> None:
    """Run one command; print its JSON result."""
    command, pipe, *rest = sys.argv[1:]
    if command == "launch":
        print(json.dumps(launch(pipe, *rest)), flush=True)
        return
    numbers = [int(x) for x in rest]
    handlers = {"upload": upload, "download": download, "burst": burst, "info": info,
                "dockerpy": dockerpy, "stall": stall, "abandon": abandon, "serve": serve,
                "sleeper": sleeper}
    print(json.dumps(handlers[command](pipe, *numbers)), flush=True)


if __name__ == "__main__":
    main()
