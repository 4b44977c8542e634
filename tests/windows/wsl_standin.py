"""A stand-in for ``wsl.exe`` (run by Windows CPython, packed into wsl.exe by the harness).

Like the real one it is a Windows process that runs a Linux program and relays its output:
``wsl.exe --distribution D --exec PROGRAM ARGS...`` asks the Linux-side agent of the tests
(TCP port in CDR_WSL_AGENT_PORT) to run PROGRAM, copies its stdout/stderr, and exits with its
status. When this process dies, the agent stops the program, as WSL does.

With CDR_WSL_STANDIN_FAIL=N it plays a distribution that does not start: one message on
stderr in UTF-16LE, exit status N.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys


def main() -> int:
    """Relay one Linux program; return its exit status."""
    args = sys.argv[1:]
    if os.environ.get("CDR_WSL_STANDIN_FAIL"):
        # a distribution that does not start, reported as a wsl.exe build that ignores
        # WSL_UTF8 does it: UTF-16LE (the variable it got is quoted, for the test to check)
        message = (f"There is no distribution with the supplied name. "
                   f"(WSL_UTF8={os.environ.get('WSL_UTF8', '')})\r\n")
        sys.stderr.buffer.write(message.encode("utf-16-le"))
        sys.stderr.flush()
        return int(os.environ["CDR_WSL_STANDIN_FAIL"])
    if len(args) < 4 or args[0] != "--distribution" or args[2] != "--exec":
        print(f"wsl stand-in: unsupported arguments {args}", file=sys.stderr)
        return 2
    sock = socket.create_connection(("127.0.0.1", int(os.environ["CDR_WSL_AGENT_PORT"])))
    sock.sendall((json.dumps({"distribution": args[1], "argv": args[3:]}) + "\n").encode())
    for line in sock.makefile("rb"):
        message = json.loads(line)
        if "exit" in message:
            return int(message["exit"])
        stream = sys.stdout if message["stream"] == "stdout" else sys.stderr
        with contextlib.suppress(OSError):  # a reader that went away does not end us
            stream.buffer.write(message["data"].encode())
            stream.flush()
    return 1


if __name__ == "__main__":
    sys.exit(main())
