"""``container-desktop-relay bench``: the same workloads through direct, OpenSSH and relay chains.

Modules: :mod:`.targets` (the Unix-socket sink/source/echo every chain ends at),
:mod:`.chains` (start and stop each forwarder), :mod:`.workloads` (the measured, byte-verified
traffic), :mod:`.report` (table and JSON) and :mod:`.command` (the CLI subcommand).
"""

from __future__ import annotations

__all__: list[str] = []
