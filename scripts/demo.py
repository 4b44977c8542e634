"""`make demo`: a real engine, the relay, and the docker CLI talking through it.

Brings up Podman's Docker-compatible API service (private state, a busybox image built
locally), starts the relay server and the relay client (whose Unix socket stands in for the
Windows named pipe), and runs `docker version` and `docker run --rm -i` through the client's
socket: docker CLI → client → one SSH connection → server → engine. Everything it starts is
stopped at the end, whatever happens.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from clienthelp import ClientProc
from helpers import Keys, Podman, RelayServer, short_tmpdir, stopping


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def main() -> int:
    work = short_tmpdir()
    step(f"starting Podman's Docker API service (state in {work})")
    (work / "engine").mkdir()
    engine = Podman(work / "engine")
    with stopping(engine):
        step("generating the relay's RSA 4096 key pair (keygen)")
        keys = Keys(work)
        step("starting the relay server on a free loopback port")
        server = RelayServer(keys, work)
        with stopping(server):
            step(f"starting the relay client: {work / 'client.sock'} -> server -> "
                 f"{engine.socket}")
            client = ClientProc(keys, work, server.port, str(engine.socket))
            local = client.socket
            with stopping(client):
                step(f"docker -H unix://{local} version")
                result = engine.docker_cli(local, "version")
                sys.stdout.write(result.stdout.decode())
                if result.returncode:
                    sys.stderr.write(result.stderr.decode())
                    return 1
                payload = b"relay " * 3_500_000
                step(f"docker run --rm -i bb wc -c   ({len(payload)} bytes on stdin)")
                started = time.monotonic()
                result = engine.docker_cli(local, "run", "--rm", "-i", "--network", "none",
                                           engine.IMAGE, "wc", "-c", input=payload)
                print(result.stdout.decode().strip(),
                      f"bytes counted in the container ({time.monotonic() - started:.2f}s)")
                if result.returncode or result.stdout.strip() != str(len(payload)).encode():
                    sys.stderr.write(result.stderr.decode())
                    return 1
    subprocess.run(["rm", "-rf", str(work)], check=False)
    step("demo finished: every byte arrived")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
