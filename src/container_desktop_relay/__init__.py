"""container-desktop-relay: carry Docker API connections over SSH into WSL."""

from container_desktop_relay._version import __version__
from container_desktop_relay.thirdparty import install_filters

# Before anything imports asyncssh: its import-time warnings would print plain text on stderr,
# where every line must be a JSON log object.
install_filters()

__all__ = ["__version__"]
