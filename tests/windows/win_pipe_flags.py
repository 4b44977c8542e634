"""Pipe-creation flags check (run by Windows CPython, under Wine or on real Windows): what the
listener passes to CreateNamedPipe for each instance.

    python tests/windows/win_pipe_flags.py BACKLOG [--check]

Prints one JSON line: every call's [open_mode, pipe_mode] and the problems found; with
``--check`` it exits 1 when there are any. Wine does not enforce PIPE_REJECT_REMOTE_CLIENTS
(there is no remote client to reject), so what can be checked everywhere is that every
instance asks for it; Windows enforces it.
"""

from __future__ import annotations

import _winapi
import asyncio
import json
import os
import sys
from typing import Any

from container_desktop_relay.endpoints import npipe

PIPE_ACCESS_DUPLEX = 0x3
FILE_FLAG_OVERLAPPED = 0x40000000
FILE_FLAG_FIRST_PIPE_INSTANCE = 0x80000
PIPE_NOWAIT = 0x1
PIPE_READMODE_MESSAGE = 0x2
PIPE_TYPE_MESSAGE = 0x4
PIPE_REJECT_REMOTE_CLIENTS = 0x8

calls: list[list[int]] = []
_real = _winapi.CreateNamedPipe


def _recording(name: str, open_mode: int, pipe_mode: int, *rest: Any) -> int:
    calls.append([open_mode, pipe_mode])
    return _real(name, open_mode, pipe_mode, *rest)


def problems(backlog: int) -> list[str]:
    """What is wrong with the recorded calls: each instance (the first, the waiting ones and
    the replacement of a taken one) must be a duplex overlapped message pipe read as bytes that
    rejects remote clients, and only the first may ask to be the first instance."""
    found = []
    if len(calls) < backlog + 1:
        found.append(f"{len(calls)} instances created, expected {backlog} and a replacement")
    for number, (open_mode, pipe_mode) in enumerate(calls):
        wanted = {
            "PIPE_REJECT_REMOTE_CLIENTS": bool(pipe_mode & PIPE_REJECT_REMOTE_CLIENTS),
            "PIPE_TYPE_MESSAGE": bool(pipe_mode & PIPE_TYPE_MESSAGE),
            "byte read mode, blocking": not pipe_mode & (PIPE_READMODE_MESSAGE | PIPE_NOWAIT),
            "PIPE_ACCESS_DUPLEX": open_mode & PIPE_ACCESS_DUPLEX == PIPE_ACCESS_DUPLEX,
            "FILE_FLAG_OVERLAPPED": bool(open_mode & FILE_FLAG_OVERLAPPED),
            "FILE_FLAG_FIRST_PIPE_INSTANCE on the first only":
                bool(open_mode & FILE_FLAG_FIRST_PIPE_INSTANCE) == (number == 0),
        }
        found += [f"instance {number} (open {open_mode:#x}, pipe {pipe_mode:#x}): not {what}"
                  for what, ok in wanted.items() if not ok]
    return found


async def main(backlog: int) -> None:
    """Listen with ``backlog`` waiting instances, take one client, close."""
    _winapi.CreateNamedPipe = _recording
    name = f"\\\\.\\pipe\\cdr-flags-{os.getpid()}"
    listener = await npipe.start_npipe_listener(name, asyncio.Protocol, buffer_size=8192,
                                                backlog=backlog)
    try:
        client = await asyncio.to_thread(open, name, "r+b", 0)  # its instance is replaced
        with client:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while len(calls) < backlog + 1 and loop.time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    finally:
        listener.close()


if __name__ == "__main__":
    backlog = int(sys.argv[1])
    asyncio.run(main(backlog))
    found = problems(backlog)
    print(json.dumps({"calls": calls, "problems": found}), flush=True)
    sys.exit(1 if found and "--check" in sys.argv[2:] else 0)
