"""Entry point for ``python -m container_desktop_relay``."""

from container_desktop_relay.cli import main

raise SystemExit(main())
