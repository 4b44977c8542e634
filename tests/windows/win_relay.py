"""Windows side of the pipe tests (run by Windows CPython): serve named pipes with the relay's
listener and forward each client over SSH (direct-streamlocal) to the Linux server.

A stand-in for the client role until it exists: it uses the same parts (PipeEnd, Pump,
ChannelEnd, sshtune). Prints one JSON line when ready, then one per finished connection.

    python.exe win_relay.py --port P --identity K --pipe NAME=/linux/socket [--pipe ...]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys

import asyncssh

from container_desktop_relay import sshtune
from container_desktop_relay.endpoints.npipe import DEFAULT_BACKLOG, start_npipe_listener
from container_desktop_relay.endpoints.pipes import PipeEnd
from container_desktop_relay.ends import ChannelEnd
from container_desktop_relay.log import setup_logging
from container_desktop_relay.pump import CLIENT, TARGET, Pump

_ids = itertools.count(1)


def emit(**fields: object) -> None:
    """One JSON line on stdout for the Linux harness."""
    print(json.dumps(fields), flush=True)


def finished(pump: Pump) -> None:
    """Report a finished connection."""
    emit(event="finished", conn_id=pump.conn_id, target=pump.target, up=pump.up,
         down=pump.down, reason=pump.reason)


async def main() -> None:
    """Connect, serve every --pipe, report, run until killed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--pipe", action="append", required=True, metavar="NAME=SOCKET")
    parser.add_argument("--buffer-size", type=int, default=65536)
    parser.add_argument("--backlog", type=int, default=DEFAULT_BACKLOG)
    args = parser.parse_args()
    setup_logging("warn")
    sshtune.apply()
    key = asyncssh.read_private_key(args.identity)
    known = asyncssh.import_known_hosts(
        f"[127.0.0.1]:{args.port} {key.export_public_key('openssh').decode().strip()}\n"
    )
    conn = await asyncssh.connect(
        "127.0.0.1", args.port, username="relay", client_keys=[key], known_hosts=known,
        encryption_algs=sshtune.preferred_ciphers(), compression_algs=["none"],
    )
    sshtune.tune_transport(conn)

    async def open_channel(pump: Pump, end: PipeEnd, path: str) -> None:
        try:
            await conn.create_unix_connection(
                lambda: ChannelEnd(pump, TARGET), path,
                window=sshtune.CHANNEL_WINDOW, max_pktsize=sshtune.MAX_PACKET_SIZE,
            )
        except (OSError, asyncssh.Error) as exc:
            emit(event="channel_failed", error=str(exc))
            end.abort()

    def factory(path: str) -> PipeEnd:
        end = PipeEnd(None, CLIENT, args.buffer_size)
        pump = Pump(f"w-{next(_ids)}", path, finished)
        end.bind(pump)
        asyncio.get_running_loop().create_task(open_channel(pump, end, path))
        return end

    listeners = {}
    for spec in args.pipe:
        name, _, path = spec.partition("=")
        listeners[name] = await start_npipe_listener(
            name, lambda p=path: factory(p), buffer_size=args.buffer_size, backlog=args.backlog
        )
    emit(event="ready", pid=__import__("os").getpid(),
         pipes={n: lst.address for n, lst in listeners.items()},
         dacl={n: lst.dacl() for n, lst in listeners.items()},
         sddl={n: lst.sddl for n, lst in listeners.items()},
         waiting={n: lst.waiting for n, lst in listeners.items()})
    await conn.wait_closed()
    emit(event="ssh_closed")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
