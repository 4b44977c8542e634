"""Client role: local endpoints → one SSH link → a direct-streamlocal channel per connection.

Theory of operation:

* The client has one or more *forwards* (:mod:`~container_desktop_relay.ssh.forwards`), each a
  local endpoint paired with a remote socket; it listens on every local endpoint.
* One SSH connection, kept up by :class:`~container_desktop_relay.ssh.link.SSHLink` (connect,
  retry, probe, reconnect), carries every local connection as its own channel. Each accepted
  connection is a :class:`TransportEnd` of a new :class:`Pump` whose channel is opened at once;
  the channel becomes the pump's other side once confirmed, and what the local client sends
  meanwhile is held (past ``HOLD_LIMIT`` its reader is paused).
* The role's :class:`~container_desktop_relay.core.registry.ConnectionRegistry` admits each
  connection under ``max_connections`` (the link's readiness probe holds a slot too).
* When the link is lost, every forwarded connection on it is closed. A local connection
  accepted while the link is down waits up to ``ssh_timeout`` for it, then is closed with a
  reason; one whose channel open was in flight when the link dropped is opened on the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import getpass
import logging
import time
from collections.abc import Callable

import asyncssh

from container_desktop_relay.config import Config
from container_desktop_relay.core.backoff import Backoff
from container_desktop_relay.core.ends import TransportEnd
from container_desktop_relay.core.idle import sweep_idle
from container_desktop_relay.core.pump import CLIENT, TARGET, Pump
from container_desktop_relay.core.registry import ConnectionRegistry
from container_desktop_relay.endpoints import Endpoint, Listener, open_listener
from container_desktop_relay.errors import ConfigError
from container_desktop_relay.log import get_logger
from container_desktop_relay.observability.metrics import Metrics, account_finished
from container_desktop_relay.runtime.state import RoleState
from container_desktop_relay.ssh import tune as sshtune
from container_desktop_relay.ssh.channel import ChannelEnd
from container_desktop_relay.ssh.forwards import Forward, client_forwards
from container_desktop_relay.ssh.link import SSHLink, reason_of
from container_desktop_relay.ssh.url import DEFAULT_REMOTE_SOCKET, SSHTarget, parse_ssh_url

__all__ = ["RelayClient", "resolve_target"]

log = get_logger(__name__)


def resolve_target(config: Config) -> SSHTarget:
    """The SSH server and remote socket: ``--ssh-connection``, else ``--host``/``--port``.

    Raises:
        ConfigError: a malformed ``--ssh-connection``.
    """
    if config.ssh_connection:
        return parse_ssh_url(config.ssh_connection, default_port=config.port)
    return SSHTarget(getpass.getuser(), config.host, config.port, DEFAULT_REMOTE_SOCKET)


class RelayClient:
    """The client role: local listeners + per-connection channels over its :class:`SSHLink`."""

    def __init__(self, config: Config, metrics: Metrics, state: RoleState, *,
                 backoff: Backoff | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.state = state
        self.target = resolve_target(config)
        if config.forward:  # each forward names its socket; logs name the server only
            self.target = dataclasses.replace(self.target, socket_path="")
        #: every local endpoint and the remote socket it reaches (the single form is one)
        self.forwards: list[Forward] = client_forwards(config)
        self.endpoint: Endpoint = self.forwards[0].endpoint
        if bool(config.distribution) != bool(config.relay_program_path):
            raise ConfigError(
                "invalid distribution/relay_program_path: spawning the server needs both "
                "--distribution and --relay-program-path"
            )
        #: live forwarded connections; a closing one still holds its slot (see the registry)
        self.registry = ConnectionRegistry(config.max_connections, count_closing=True)
        metrics.observe(self.registry)
        self.link = SSHLink(config, state, metrics, self.registry, self.target, self.forwards,
                            spawning=bool(config.distribution), on_down=self._link_lost,
                            backoff=backoff)
        self._listeners: list[Listener] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._linked: set[Pump] = set()
        self._forward_of: dict[Pump, Forward] = {}
        self._closing = False

    # ------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Listen, then bring the SSH link up (spawning the server when configured).

        Raises:
            KeyFileError: the identity key is missing or unsafe; known_hosts unreadable.
            ListenError: the local endpoint cannot be used.
            TunnelError: the link cannot be established within ``max_retries`` attempts,
                or the host key or client key was refused.
        """
        config = self.config
        sshtune.apply(config.asyncssh_patches)
        self.link.prepare()
        try:
            for fwd in self.forwards:
                self._listeners.append(await open_listener(
                    fwd.endpoint, self._acceptor(fwd), buffer_size=config.buffer_size))
            await self.link.start()
        except BaseException:
            await self.aclose()
            raise
        self._sweeper = asyncio.create_task(
            sweep_idle(lambda: self.registry.active, config.read_timeout, config.write_timeout),
            name="idle-sweeper",
        )

    def stop_accepting(self) -> None:
        """Stop listening (socket files are removed); forwarded connections go on."""
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.close()

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` for forwarded connections to finish; returns how many remain."""
        return await self.registry.drain(timeout)

    def close_all(self) -> None:
        """Close every forwarded connection, the SSH link and the spawned server, now."""
        self._closing = True
        self.stop_accepting()
        for task in list(self._handlers):
            task.cancel()
        self.registry.close_all()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.link.close()

    async def aclose(self) -> None:
        """:meth:`close_all`, then wait for the link to close and the server to exit."""
        self.close_all()
        tasks = [t for t in (*self._handlers, self._sweeper) if t is not None]
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.link.aclose()

    def _link_lost(self, reason: str) -> None:
        """The link dropped: the connections on it are cut off, never a clean end of stream."""
        for pump in list(self._linked):
            pump.close(f"SSH link lost: {reason}", abort=True)

    # ------------------------------------------------------- local connections
    def _acceptor(self, fwd: Forward) -> Callable[[], asyncio.Protocol]:
        """The protocol factory of ``fwd``'s listener."""
        return lambda: self._accept(fwd)

    def _accept(self, fwd: Forward) -> asyncio.Protocol:
        """A new end for a connection to ``fwd``'s endpoint, its channel opening right away."""
        config, registry = self.config, self.registry
        pump = Pump(registry.new_id(), fwd.remote, self._finished)
        self._forward_of[pump] = fwd
        end = TransportEnd(pump, CLIENT, config.buffer_size)
        room = registry.has_room()
        registry.add(pump, fwd.name, opened=False)
        conn = self.link.conn
        if self._closing:
            self._refuse(pump, "shutting down")
        elif not room:
            # The readiness probe is a channel the server counts too: with equal limits on
            # both roles, nothing this role admits may be refused there.
            self._refuse(pump, f"connection pool exhausted (max: {config.max_connections})")
        elif self.link.up.is_set() and conn is not None:
            self._open_channel(pump, conn)
        else:
            self._wait_for_link(pump)
        return end

    async def _open_when_linked(self, pump: Pump) -> None:
        """Wait up to ``ssh_timeout`` for the SSH link, then open ``pump``'s channel."""
        timeout = self.config.ssh_timeout
        log.info("connection_waiting_for_link", extra={"conn_id": pump.conn_id,
                                                       "timeout_s": timeout})
        try:
            async with asyncio.timeout(timeout):
                await self.link.up.wait()
        except TimeoutError:
            self._refuse(pump, f"SSH link to {self.target.host}:{self.target.port} not "
                               f"available within {timeout:g}s ({self.state.reason})")
            return
        conn = self.link.conn
        if pump.closing or conn is None:
            pump.close("client closed before the channel opened")
            return
        self._open_channel(pump, conn)

    def _wait_for_link(self, pump: Pump) -> None:
        """Open ``pump``'s channel once the (next) link is ready, waiting up to ``ssh_timeout``."""
        task = asyncio.create_task(self._open_when_linked(pump), name="local-connection")
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    def _open_channel(self, pump: Pump, conn: asyncssh.SSHClientConnection) -> None:
        """Open ``pump``'s channel; the pump's target side is attached once it is confirmed."""
        path = pump.target
        started = time.monotonic()

        def failed(error: BaseException) -> None:
            if pump.closing:  # already ended (client gone, shutting down)
                return
            if self._closing or not self.link.retry_on_next(conn, error):
                self._refuse(pump, f"channel open to {path} failed: {reason_of(error)}")
                return
            log.info("connection_retried", extra={"conn_id": pump.conn_id,
                                                  "reason": reason_of(error)})
            self._wait_for_link(pump)

        def opened(error: BaseException | None) -> None:
            if error is not None:
                # Decided one loop pass later: an open failed by the link dropping fails
                # while asyncssh is still closing the connection (is_closed() not yet true).
                asyncio.get_running_loop().call_soon(failed, error)
                return
            self.metrics.channel_opened(time.monotonic() - started)
            if pump.closing:
                return
            self.registry.opened(pump)
            self._linked.add(pump)
            if log.isEnabledFor(logging.INFO):  # per connection: skip building the fields
                fwd = self._forward_of.get(pump)
                log.info("connection_opened", extra={
                    "conn_id": pump.conn_id, "socket_path": path,
                    "endpoint": fwd.name if fwd is not None else str(self.endpoint)})

        try:
            sshtune.open_unix_channel(conn, path, lambda: ChannelEnd(pump, TARGET), opened)
        except (OSError, asyncssh.Error) as exc:
            self._refuse(pump, f"channel open to {path} failed: {reason_of(exc)}")

    def _refuse(self, pump: Pump, reason: str) -> None:
        self.metrics.error("connection", f"{pump.conn_id}: {reason}")
        log.warning("connection_refused", extra={"conn_id": pump.conn_id, "reason": reason})
        pump.refuse(reason)

    def _finished(self, pump: Pump) -> None:
        """A pump ended: account and log it once."""
        self._linked.discard(pump)
        fwd = self._forward_of.pop(pump, None)
        self.registry.finished(pump)
        account_finished(self.metrics, pump, log, fwd.name if fwd is not None else "")
