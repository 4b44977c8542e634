"""container-desktop-relay: carry Docker API connections over SSH into WSL."""

from container_desktop_relay._version import __version__

__all__ = ["__version__"]
