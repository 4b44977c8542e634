"""doctor's observability check reads /ready's state: a spawned server that keeps exiting is
named, with the fix, instead of a bare status code."""

from __future__ import annotations

import pytest

from container_desktop_relay.commands.doctor import Doctor, Failed
from container_desktop_relay.config import Config
from container_desktop_relay.observability.metrics import Metrics
from container_desktop_relay.observability.observe import Observability
from container_desktop_relay.runtime.state import RoleState


@pytest.mark.asyncio
async def test_doctor_names_server_unavailable() -> None:
    """/ready 503 with state server_unavailable: the failure carries the reason and points at
    the distribution and the relay program; a plain 503 carries its reason only."""
    state = RoleState("client")
    obs = Observability(Config(health_check_enabled=True, health_check_port=0,
                               metrics_enabled=False), Metrics("client"), state)
    port = (await obs.start())["health"]
    try:
        doctor = Doctor(Config(health_check_enabled=True, health_check_port=port,
                               metrics_enabled=False))
        state.set_not_ready("server_unavailable: the spawned server exited 3 times in a row")
        with pytest.raises(Failed) as failed:
            await doctor.check_observability()
        assert failed.value.detail.endswith(
            "/ready answered 503: server_unavailable: the spawned server exited 3 times in a row")
        assert "--distribution" in failed.value.fix and "--relay-program-path" in failed.value.fix
        state.set_not_ready("SSH link down: connection refused")
        with pytest.raises(Failed) as failed:
            await doctor.check_observability()
        assert failed.value.detail.endswith("/ready answered 503 (SSH link down: connection "
                                            "refused)")
        state.set_ready("linked")
        assert "answer 200" in await doctor.check_observability()
    finally:
        await obs.stop()
