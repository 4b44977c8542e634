"""The forwarding core, driven by in-memory ends: half-close, backpressure, holding, closing."""

from __future__ import annotations

from container_desktop_relay.core.pump import CLIENT, HOLD_LIMIT, TARGET, Pump
from helpers import FakeEnd


def make() -> tuple[Pump, FakeEnd, FakeEnd, list[Pump]]:
    done: list[Pump] = []
    pump = Pump("c-1", "/t.sock", done.append)
    a, b = FakeEnd(), FakeEnd()
    pump.attach(CLIENT, a)
    pump.attach(TARGET, b)
    return pump, a, b, done


def test_bytes_flow_and_are_counted() -> None:
    """Data goes to the other side unchanged; counts per direction."""
    pump, a, b, _ = make()
    pump.data(CLIENT, b"hello")
    pump.data(TARGET, b"world!")
    assert b.written == [b"hello"] and a.written == [b"world!"]
    assert (pump.up, pump.down) == (5, 6)


def test_half_close_keeps_other_direction() -> None:
    """EOF one way becomes write_eof on the other side; the reverse still flows."""
    pump, a, b, done = make()
    pump.eof(CLIENT)
    assert b.eof and not a.eof and not a.closed and not b.closed
    pump.data(TARGET, b"late reply")
    assert a.written == [b"late reply"]
    pump.eof(TARGET)
    assert a.eof and a.closed and b.closed
    assert not done  # finished only when both sides report lost
    pump.lost(CLIENT)
    pump.lost(TARGET)
    assert done == [pump] and pump.reason == "done"


def test_backpressure_pauses_the_other_reader() -> None:
    """A full side pauses the reader of the other side until it drains."""
    pump, a, b, _ = make()
    pump.pause_writing(TARGET)
    assert a.paused and not b.paused
    pump.resume_writing(TARGET)
    assert not a.paused
    pump.pause_writing(CLIENT)
    assert b.paused
    pump.resume_writing(CLIENT)
    assert not b.paused


def test_data_before_other_side_is_held_then_delivered() -> None:
    """Bytes and EOF before the target attaches are held (a small request without pausing
    its reader), then delivered in order."""
    done: list[Pump] = []
    pump = Pump("c-2", "/t.sock", done.append)
    a = FakeEnd()
    pump.attach(CLIENT, a)
    pump.data(CLIENT, b"early")
    pump.data(CLIENT, b" bird")
    pump.eof(CLIENT)
    assert not a.paused
    b = FakeEnd()
    pump.attach(TARGET, b)
    assert b.written == [b"early", b" bird"] and b.eof and not a.paused


def test_held_data_beyond_the_limit_pauses_the_reader() -> None:
    """More than HOLD_LIMIT before the other side attaches: the reader pauses until it does."""
    pump = Pump("c-3", "/t.sock")
    a = FakeEnd()
    pump.attach(CLIENT, a)
    pump.data(CLIENT, b"x" * HOLD_LIMIT)
    assert not a.paused
    pump.data(CLIENT, b"y")
    assert a.paused
    b = FakeEnd()
    pump.attach(TARGET, b)
    assert b"".join(b.written) == b"x" * HOLD_LIMIT + b"y" and not a.paused


def test_loss_closes_the_other_side_and_records_error() -> None:
    """A side lost with an error aborts the other (no clean EOF) and keeps the reason."""
    pump, a, _, done = make()
    pump.lost(TARGET, ConnectionResetError("reset"))
    assert a.aborted and not a.closed and "target error: reset" in pump.reason
    pump.lost(CLIENT)
    assert done == [pump] and isinstance(pump.error, ConnectionResetError)


def test_client_gone_before_target_attached() -> None:
    """The client leaving while the target opens finishes the pump; a late target is closed."""
    done: list[Pump] = []
    pump = Pump("c-3", "/t.sock", done.append)
    a = FakeEnd()
    pump.attach(CLIENT, a)
    pump.lost(CLIENT)
    assert done == [pump]
    late = FakeEnd()
    pump.attach(TARGET, late)
    assert late.closed
    pump.lost(TARGET)
    assert done == [pump]


def test_abort_discards() -> None:
    """close(abort=True) aborts both sides."""
    pump, a, b, done = make()
    pump.close("shutdown", abort=True)
    assert a.aborted and b.aborted and pump.reason == "shutdown"
    pump.lost(CLIENT)
    pump.lost(TARGET)
    assert done == [pump]


def test_side_gone_without_eof_aborts_the_other() -> None:
    """A channel closed without EOF (the peer relay's client vanished): the target gets a
    reset, not a clean end of a truncated upload."""
    pump, _a, b, done = make()
    pump.data(CLIENT, b"half an upload")
    pump.lost(CLIENT)
    assert b.aborted and not b.closed and not b.eof
    assert pump.reason == "client closed without end of stream"
    pump.lost(TARGET)
    assert done == [pump]


def test_side_gone_before_the_other_direction_ended_aborts_the_other() -> None:
    """The client finished sending (EOF), then went away while the target still answers:
    the target is aborted instead of being left writing to nobody."""
    pump, _a, b, _done = make()
    pump.eof(CLIENT)
    pump.lost(CLIENT)
    assert b.eof and b.aborted
    assert pump.reason == "client closed before the other direction ended"


def test_loss_after_both_eofs_is_a_clean_close() -> None:
    """Both directions ended: the sides are closed gracefully, nothing is aborted."""
    pump, a, b, done = make()
    pump.eof(CLIENT)
    pump.eof(TARGET)
    assert a.closed and b.closed
    pump.lost(CLIENT)
    pump.lost(TARGET)
    assert not a.aborted and not b.aborted and pump.reason == "done" and done == [pump]


def test_counts_are_bytes_the_peer_accepted() -> None:
    """Byte counts follow what the receiving peer accepted; an abort drops the rest uncounted."""
    pump, a, _b, done = make()
    a.holding = True
    pump.data(CLIENT, b"q" * 10)
    pump.data(TARGET, b"r" * 1000)
    assert (pump.up, pump.down) == (10, 0)
    a.accept(400)
    assert pump.down == 400
    pump.close("write_timeout", abort=True)
    a.accept(600)  # an aborted end's buffer is discarded, whatever it reports later
    pump.lost(CLIENT)
    pump.lost(TARGET)
    assert done == [pump] and pump.bytes == (10, 400)


def test_abort_after_a_clean_end_replaces_done() -> None:
    """Both directions ended (reason ``done``), then the close linger aborts a peer that stopped
    reading: the pump reports the abort, not ``done``."""
    pump, _a, _b, done = make()
    pump.eof(CLIENT)
    pump.eof(TARGET)
    assert pump.reason == "done" and not pump.failed
    pump.close("peer accepted no data for 10s while closing", abort=True)
    pump.lost(CLIENT)
    pump.lost(TARGET)
    assert done == [pump] and pump.failed and "while closing" in pump.reason


def test_refusal_looks_the_same_whatever_was_sent() -> None:
    """A refused connection: the client reads EOF at once, its request (held or still coming)
    is dropped, and the pump closes once the client half-closes; it counts as failed."""
    done: list[Pump] = []
    pump = Pump("c-9", "/t.sock", done.append)
    a = FakeEnd()
    pump.attach(CLIENT, a)
    pump.data(CLIENT, b"x" * (HOLD_LIMIT + 1))  # held, reader paused
    assert a.paused
    pump.refuse("channel open failed")
    assert a.eof and not a.paused and not a.closed and not a.aborted
    pump.data(CLIENT, b"more")
    assert a.written == []
    pump.eof(CLIENT)
    assert a.closed and pump.failed and pump.reason == "channel open failed"
    pump.lost(CLIENT)
    assert done == [pump] and pump.bytes == (0, 0)


def test_refused_connections_do_not_count_as_connections() -> None:
    """Refused (never admitted) connections stay out of totals and the average duration."""
    from container_desktop_relay.core.registry import ConnectionRegistry
    from container_desktop_relay.observability.metrics import Metrics

    metrics, registry = Metrics("client"), ConnectionRegistry(10, count_closing=True)
    metrics.observe(registry)
    ok = Pump("c-1", "/t.sock", registry.finished)
    refused = Pump("c-2", "/t.sock", registry.finished)
    for pump in (ok, refused):
        pump.attach(CLIENT, FakeEnd())
        registry.add(pump, opened=False)
    ok.attach(TARGET, FakeEnd())
    registry.opened(ok)
    ok.data(CLIENT, b"req")
    refused.data(CLIENT, b"refused request")
    refused.refuse("pool exhausted")
    for pump in (ok, refused):
        pump.close("test")
        pump.lost(CLIENT)
        pump.lost(TARGET)
    snap = metrics.snapshot()
    assert (snap.total_connections, snap.active_connections, snap.total_bytes_read) == (1, 0, 3)
    assert metrics.closed_connections == 1


def test_side_gone_before_any_data_is_not_a_failure() -> None:
    """A channel opened and closed without a byte either way (the client relay's readiness
    probe): nothing was cut short, so the target is closed gracefully and nothing failed."""
    pump, _a, b, done = make()
    pump.lost(CLIENT)
    assert b.closed and not b.aborted and not pump.failed
    assert pump.reason == "closed before any data"
    pump.lost(TARGET)
    assert done == [pump]


def test_counts_accumulate_and_activity_is_stamped() -> None:
    """Counts add up over many chunks; each chunk stamps the activity time; the pump keeps
    its id and target for the close record."""
    pump, _a, _b, _ = make()
    assert (pump.conn_id, pump.target, pump.reason, pump.closing) == ("c-1", "/t.sock", "", False)
    before = pump.last_activity
    for size in (3, 5, 7):
        pump.data(CLIENT, b"x" * size)
    pump.data(TARGET, b"y")
    pump.data(TARGET, b"yy")
    assert (pump.up, pump.down) == (15, 3)
    assert isinstance(pump.last_activity, float) and pump.last_activity >= before


def test_resume_only_undoes_our_own_pause() -> None:
    """resume_writing resumes a reader only if this pump paused it, once per pause: a reader
    paused for another reason stays paused."""
    pump, a, b, _ = make()
    a.paused = b.paused = True  # paused by something else (e.g. the endpoint itself)
    pump.resume_writing(TARGET)
    pump.resume_writing(CLIENT)
    assert a.paused and b.paused
    pump.pause_writing(TARGET)
    pump.resume_writing(TARGET)
    assert not a.paused
    a.paused = True
    pump.resume_writing(TARGET)  # a second resume has no pause of ours to undo
    assert a.paused


def test_hold_limit_is_exact_on_either_side() -> None:
    """Exactly HOLD_LIMIT held bytes leave the reader running; one more pauses it (both ways)."""
    for side in (CLIENT, TARGET):
        pump = Pump("c-9", "/t.sock")
        src = FakeEnd()
        pump.attach(side, src)
        pump.data(side, b"h" * HOLD_LIMIT)
        assert not src.paused, side
        pump.data(side, b"h")
        assert src.paused, side


def test_reasons_name_the_side() -> None:
    """A failure or a cut-off is recorded with the side it came from."""
    pump, _a, _b, _ = make()
    pump.lost(CLIENT, OSError("boom"))
    assert pump.reason == "client error: boom"
    pump, _a, _b, _ = make()
    pump.data(TARGET, b"partial answer")
    pump.lost(TARGET)
    assert pump.reason == "target closed without end of stream"
    pump, _a, _b, _ = make()
    pump.eof(TARGET)
    pump.lost(TARGET)
    assert pump.reason == "target closed before the other direction ended"


def test_close_before_the_target_attached() -> None:
    """Closing a pump whose target never attached closes the client and finishes."""
    done: list[Pump] = []
    pump = Pump("c-4", "/t.sock", done.append)
    a = FakeEnd()
    pump.attach(CLIENT, a)
    pump.close("shutdown")
    assert a.closed and pump.reason == "shutdown" and not done
    pump.lost(CLIENT)
    assert done == [pump]


def test_refusal_after_the_client_half_closed_closes_at_once() -> None:
    """A client that already sent all it will (EOF) is closed at once on refusal: there is
    nothing left to read and drop."""
    done: list[Pump] = []
    pump = Pump("c-5", "/t.sock", done.append)
    a = FakeEnd()
    pump.attach(CLIENT, a)
    pump.data(CLIENT, b"GET /_ping")
    pump.eof(CLIENT)
    pump.refuse("target refused")
    assert a.closed and not a.aborted and pump.closing and pump.refused_at is not None
    assert pump.failed and pump.reason == "target refused"
    pump.lost(CLIENT)
    assert done == [pump]


def test_refusal_closes_an_attached_target_and_keeps_the_first_reason() -> None:
    """A target side that did open is closed by the refusal; the client reads EOF and keeps
    being read. A second refusal changes nothing; a refusal after a close is no refusal."""
    pump, a, b, _ = make()
    pump.refuse("pool exhausted")
    assert b.closed and not b.aborted and not b.eof
    assert a.eof and not a.closed and not a.paused and not pump.closing
    first = pump.refused_at
    assert first is not None and pump.failed and pump.reason == "pool exhausted"
    pump.refuse("second reason")
    assert pump.refused_at == first and pump.reason == "pool exhausted"
    pump, a, b, _ = make()
    pump.close("shutdown")
    pump.refuse("too late")
    assert pump.refused_at is None and pump.reason == "shutdown" and not pump.failed


def test_refusal_drops_what_was_held_for_a_late_target() -> None:
    """Data held for a target that then is refused is never delivered, not even to a target
    end attached afterwards (it is closed), and counts nothing."""
    done: list[Pump] = []
    pump = Pump("c-8", "/t.sock", done.append)
    a = FakeEnd()
    pump.attach(CLIENT, a)
    pump.data(CLIENT, b"request")
    pump.refuse("channel open failed")
    late = FakeEnd()
    pump.attach(TARGET, late)
    assert late.closed and late.written == [] and not late.eof
    pump.eof(CLIENT)
    pump.lost(CLIENT)
    pump.lost(TARGET)
    assert done == [pump] and pump.bytes == (0, 0) and pump.reason == "channel open failed"


def test_graceful_close_counts_what_was_flushed_and_a_failure_does_not() -> None:
    """A side we closed gracefully flushed its buffer: the bytes count once it is gone. A side
    that failed, or went away before both directions ended, discarded its buffer: what its
    peer had not taken by then stays uncounted, whatever the end reports afterwards."""
    pump, a, b, done = make()
    a.holding = b.holding = True
    pump.data(TARGET, b"d" * 1000)
    pump.data(CLIENT, b"u" * 10)
    pump.eof(CLIENT)
    pump.eof(TARGET)
    assert pump.bytes == (0, 0)
    a.queue = b.queue = 0  # closed: flushed to the peer, nothing queued any more
    pump.lost(CLIENT)
    pump.lost(TARGET)
    assert done == [pump] and pump.bytes == (10, 1000) and not pump.failed
    for exc in (OSError("reset"), None):
        pump, a, b, done = make()
        a.holding = True
        pump.data(TARGET, b"d" * 1000)
        a.accept(300)
        assert pump.down == 300
        a.queue = 0  # the transport dropped its buffer: a closed end queues nothing
        pump.lost(CLIENT, exc)
        pump.lost(TARGET)
        assert done == [pump] and pump.down == 300 and pump.failed, exc


def test_abort_counts_what_was_accepted_at_the_abort() -> None:
    """An abort discards the buffer: the counts are what the peer had taken when it came, not
    what was last looked at before it nor what the end reports afterwards."""
    pump, a, _b, _ = make()
    a.holding = True
    pump.data(TARGET, b"d" * 1000)
    assert pump.down == 0
    a.accept(400)  # taken, not yet looked at
    pump.close("shutdown", abort=True)
    a.accept(600)
    assert pump.down == 400


def test_a_side_that_is_gone_is_not_driven_any_more() -> None:
    """Once a side is lost, a late EOF, pause or resume from the other side is not passed to it."""
    pump, a, b, _ = make()
    pump.eof(TARGET)
    pump.eof(CLIENT)  # both ended: both closed gracefully, the target goes first
    pump.lost(TARGET)
    b.paused = False
    pump.pause_writing(CLIENT)  # the client end, still flushing, is full
    assert not b.paused
    b.paused = True
    pump.resume_writing(CLIENT)
    assert b.paused
    pump, a, b, _ = make()
    pump.lost(TARGET)  # before any data: the client is closed gracefully
    assert a.closed and not b.eof
    pump.eof(CLIENT)
    assert not b.eof


def test_failed_is_a_boolean_from_the_start() -> None:
    """``failed`` is written as is into the connection_closed line: false, never null, for a
    connection that ended cleanly."""
    pump, _a, _b, _ = make()
    assert pump.failed is False
    pump.eof(CLIENT)
    pump.eof(TARGET)
    pump.lost(CLIENT)
    pump.lost(TARGET)
    assert pump.failed is False and pump.reason == "done"
