"""The forwarding core, driven by in-memory ends: half-close, backpressure, holding, closing."""

from __future__ import annotations

from container_desktop_relay.pump import CLIENT, HOLD_LIMIT, TARGET, Pump
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


def test_write_blocked_for_reports_the_longest_wait_and_forgets_lost_sides() -> None:
    """Nothing blocked is 0.0; a lost side's block no longer counts."""
    pump, _a, _b, _ = make()
    assert pump.write_blocked_for(1e9) == 0.0
    pump.pause_writing(TARGET)
    assert pump.write_blocked_for(pump.started + 1e6) > 0
    pump.lost(TARGET)
    assert pump.write_blocked_for(1e9) == 0.0


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
