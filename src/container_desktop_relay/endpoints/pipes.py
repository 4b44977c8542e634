"""The named-pipe endpoint for this platform: the Windows one, or a refusal elsewhere."""

from __future__ import annotations

import sys

if sys.platform == "win32":
    from container_desktop_relay.endpoints.npipe import PipeEnd, start_npipe_listener
else:
    from container_desktop_relay.endpoints.npipe_unsupported import PipeEnd, start_npipe_listener

__all__ = ["PipeEnd", "start_npipe_listener"]
