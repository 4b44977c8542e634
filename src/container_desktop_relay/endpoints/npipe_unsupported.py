"""Named pipes off Windows: the same names, refusing with a clear ListenError."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import NoReturn

from container_desktop_relay.ends import TransportEnd
from container_desktop_relay.errors import ListenError

__all__ = ["PipeEnd", "start_npipe_listener"]

#: Never instantiated here: :func:`start_npipe_listener` refuses before any client exists.
PipeEnd = TransportEnd


async def start_npipe_listener(
    path: str,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    *,
    buffer_size: int,
    **_: object,
) -> NoReturn:
    """Refuse: named pipes exist only on Windows.

    Raises:
        ListenError: always.
    """
    raise ListenError(
        f"named pipe {path} cannot be served here: named pipes exist only on Windows "
        "(use --listen unix:///path/to/relay.sock)"
    )
