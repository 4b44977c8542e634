"""Backoff policy: doubling from 100 ms, 2 s cap, jitter bounds, reset."""

from __future__ import annotations

import random

import pytest

from container_desktop_relay.backoff import Backoff


class _Fixed(random.Random):
    """A random source that always returns one value."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def test_nominal_sequence_doubles_to_cap() -> None:
    """Without jitter the delays are 0.1, 0.2, 0.4, 0.8, 1.6, then 2.0 forever."""
    b = Backoff(jitter=0.0)
    assert [round(b.next(), 6) for _ in range(8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]


def test_jitter_only_shortens_within_bound() -> None:
    """Every jittered delay lies in [(1 - jitter) * nominal, nominal]."""
    b = Backoff(jitter=0.2, rng=random.Random(7))
    for attempt in range(50):
        nominal = b.nominal(attempt)
        delay = b.next()
        assert nominal * 0.8 - 1e-12 <= delay <= nominal
        assert delay <= 2.0


def test_jitter_extremes() -> None:
    """The random draw maps linearly onto the jitter range."""
    assert Backoff(rng=_Fixed(0.0)).next() == pytest.approx(0.1)
    assert Backoff(rng=_Fixed(0.999999)).next() == pytest.approx(0.08, rel=1e-4)


def test_jitter_varies_between_clients() -> None:
    """Two clients with different random sources do not retry in lock-step."""
    a = Backoff(rng=random.Random(1))
    b = Backoff(rng=random.Random(2))
    assert [a.next() for _ in range(5)] != [b.next() for _ in range(5)]


def test_reset_starts_over() -> None:
    """After a success the next delay is the initial one again."""
    b = Backoff(jitter=0.0)
    for _ in range(6):
        b.next()
    b.reset()
    assert b.next() == pytest.approx(0.1)


def test_huge_attempt_does_not_overflow() -> None:
    """A very long outage keeps returning the cap."""
    b = Backoff(jitter=0.0, attempt=10_000)
    assert b.next() == 2.0


@pytest.mark.parametrize("kw", [{"initial": 0}, {"initial": 3.0}, {"factor": 0.5},
                                {"jitter": 1.0}, {"jitter": -0.1}])
def test_invalid_parameters_rejected(kw: dict[str, float]) -> None:
    """Nonsense parameters are refused at construction."""
    with pytest.raises(ValueError):
        Backoff(**kw)  # type: ignore[arg-type]
