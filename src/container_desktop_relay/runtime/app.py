"""Lifecycle of a role: event loop, start, signals, parent watching, graceful drain, exit."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from container_desktop_relay.config import Config
from container_desktop_relay.core.registry import ConnectionRegistry
from container_desktop_relay.log import get_logger
from container_desktop_relay.observability.metrics import Metrics
from container_desktop_relay.runtime.state import RoleState
from container_desktop_relay.runtime.watch import watch_process

__all__ = ["Role", "Shutdown", "run_loop", "serve"]

log = get_logger(__name__)


class Role(Protocol):
    """What the lifecycle needs from the server or client role."""

    state: RoleState
    metrics: Metrics
    registry: ConnectionRegistry

    async def start(self) -> None:
        """Acquire everything and start serving; raise a RelayError when that fails."""

    def stop_accepting(self) -> None:
        """Stop taking new connections."""

    async def drain(self, timeout: float) -> int:
        """Stop admitting, wait for active connections to end; return how many remain."""
        ...

    def close_all(self) -> None:
        """Close everything still open."""


class Shutdown:
    """Shutdown requests: the first asks for a graceful drain, the second forces the exit."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.forced = asyncio.Event()
        self.reason = ""

    def request(self, reason: str) -> None:
        """Ask for shutdown; asking again forces it."""
        if self.requested.is_set():
            log.warning("shutdown_forced", extra={"reason": reason})
            self.forced.set()
            return
        self.reason = reason
        log.info("shutdown_requested", extra={"reason": reason})
        self.requested.set()


def _quiet_wakeup_fd() -> None:
    """Keep a full signal wake-up socket from printing a plain-text traceback on stderr.

    The proactor loop registers its self-pipe as the wake-up fd with warnings on a full buffer;
    under a burst of Ctrl+C/SIGINT that printed "Exception ignored when trying to send to the
    signal wakeup fd" and a BlockingIOError among the JSON lines. A full buffer already holds a
    wake-up, so nothing is lost (asyncio's Unix loop registers it this way too).
    """
    try:
        fd = signal.set_wakeup_fd(-1)
        if fd != -1:
            signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
    except ValueError:  # not the main thread: the loop registered no wake-up fd either
        pass


def _install_signals(shutdown: Shutdown) -> Callable[[], None]:
    loop = asyncio.get_running_loop()
    signals = [signal.SIGINT, signal.SIGTERM]
    if sys.platform == "win32":
        signals.append(signal.SIGBREAK)
        _quiet_wakeup_fd()
        previous = {}
        for sig in signals:
            previous[sig] = signal.signal(
                sig, lambda s, _f: loop.call_soon_threadsafe(
                    shutdown.request, signal.Signals(s).name)
            )

        def restore_win() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore_win
    for sig in signals:
        loop.add_signal_handler(sig, shutdown.request, sig.name)

    def restore() -> None:
        for sig in signals:
            loop.remove_signal_handler(sig)

    return restore


async def _start_unless_shutdown(role: Role, shutdown: Shutdown) -> bool:
    """Start ``role``; False when a shutdown request came first (start-up is then cancelled).

    Start-up can take long (a client retries its first link attempts); a signal must not wait
    for it. ``role.start`` releases what it acquired when cancelled.
    """
    start = asyncio.create_task(role.start(), name="start")
    requested = asyncio.create_task(shutdown.requested.wait(), name="shutdown-requested")
    try:
        await asyncio.wait({start, requested}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        requested.cancel()
    if start.done():
        start.result()  # raises what start-up raised
        return True
    start.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):  # shutting down regardless
        await start
    return False


async def serve(
    role: Role,
    config: Config,
    *,
    extras: list[Callable[[Role, Shutdown], Awaitable[Callable[[], Awaitable[None]] | None]]]
    | None = None,
    shutdown: Shutdown | None = None,
) -> int:
    """Run ``role`` until a signal or a vanished parent; drain; return the exit status.

    ``extras`` are started after the role (observability servers, readiness files); each may
    return a cleanup coroutine function, run after the drain.
    """
    shutdown = shutdown or Shutdown()
    restore = _install_signals(shutdown)
    cleanups: list[Callable[[], Awaitable[None]]] = []
    watcher: asyncio.Task[None] | None = None
    try:
        if config.watch_process_termination:
            # Watched from the very start: a parent that dies while the link is still being
            # set up (WSL starting) must not leave the relay behind.
            watcher = asyncio.create_task(
                watch_process(config.parent_process_pid, config.poll_interval,
                              shutdown.request),
                name="parent-watch",
            )
        if not await _start_unless_shutdown(role, shutdown):
            log.info("shutdown_complete", extra={"reason": shutdown.reason,
                                                 "during": "start-up"})
            return 0
        for extra in extras or []:
            cleanup = await extra(role, shutdown)
            if cleanup is not None:
                cleanups.append(cleanup)
        # Everything imported and set up so far lives for the whole run: move it out of the
        # garbage collector's view, so the collections that per-connection garbage triggers
        # do not walk asyncssh's and cryptography's module objects each time. No collection
        # first: start-up leaves next to no cyclic garbage (10 objects of 42,000 measured),
        # and a full collection here delayed the first SSH banner by 13-70 ms.
        gc.freeze()
        await shutdown.requested.wait()
        role.state.start_draining()
        role.stop_accepting()
        drain = asyncio.create_task(role.drain(config.shutdown_timeout), name="drain")
        forced = asyncio.create_task(shutdown.forced.wait(), name="forced")
        await asyncio.wait({drain, forced}, return_when=asyncio.FIRST_COMPLETED)
        remaining = drain.result() if drain.done() else len(role.registry.active)
        drain.cancel()
        forced.cancel()
        if remaining:
            log.warning("shutdown_closing_connections", extra={"remaining": remaining})
        role.close_all()
        log.info("shutdown_complete", extra={"reason": shutdown.reason})
        return 0
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        role.stop_accepting()
        role.close_all()
        for cleanup in reversed(cleanups):
            with contextlib.suppress(Exception):
                await cleanup()
        restore()


def run_loop(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run ``main`` on the best event loop here (uvloop on POSIX when installed)."""
    if sys.platform != "win32":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main())
    return asyncio.run(main())
