"""Live SSE streams are written by the bridge's writer, a slice per reactor turn
(``adapters/_ssewriter.py``), not in the turn of the PUBLISH that fans out to them:
one PUBLISH to 500 streams was 500 encodes and writes in the publisher's turn, 10-15 ms
of CPU (issue 14)."""

from __future__ import annotations

from twisted.internet.task import Clock

from mqtt_twisted.adapters._ssewriter import WRITE_COST, WRITE_SLICE, StreamWriter


class Stream:
    """A stream with ``waiting`` events; ``room`` events more before its client's
    buffer is full (then it reports no more, as a paused stream)."""

    def __init__(self, log: list, name: int, waiting: int = 0, room: int = 1 << 30) -> None:
        self.log, self.name = log, name
        self.waiting, self.room = waiting, room
        self.next = 0  # the next event's number: written in order
        self.chunks: list[list[int]] = []

    def flush(self, limit: int) -> tuple[int, bool]:
        assert limit >= 1
        n = min(limit, self.waiting, self.room)
        chunk = list(range(self.next, self.next + n))
        self.next += n
        self.waiting -= n
        self.room -= n
        self.chunks.append(chunk)
        self.log.append((self.name, n))
        return n, self.waiting > 0 and self.room > 0


def turn(clock: Clock) -> int:
    """Run the calls due now (one reactor turn's timed calls); how many ran."""
    calls = [c for c in clock.getDelayedCalls() if c.getTime() <= clock.seconds()]
    for call in calls:
        clock.calls.remove(call)
        call.func(*call.args, **call.kw)
    return len(calls)


def work(log: list) -> int:
    return sum(n + WRITE_COST for _, n in log)


def test_nothing_written_in_the_turn_that_delivers() -> None:
    """``want`` only schedules: the streams are written at the next turn, once each
    however many times they were wanted, in the order they were first wanted."""
    clock, log = Clock(), []
    writer = StreamWriter(clock)
    streams = [Stream(log, n) for n in range(5)]
    for _ in range(3):  # three messages routed to the five streams
        for stream in streams:
            stream.waiting += 1
            writer.want(stream)
    assert log == [] and len(clock.getDelayedCalls()) == 1
    assert turn(clock) == 1
    assert log == [(n, 3) for n in range(5)]  # one chunk of three events each
    assert writer.ready == {} and writer.call is None and clock.getDelayedCalls() == []


def test_a_slice_per_turn_round_robin() -> None:
    """500 streams with 5 events each: no turn does more than WRITE_SLICE units of work
    (events plus WRITE_COST a write), the streams are first served in the order they
    were wanted, a turn goes on where the last one stopped, and each stream's events
    go in order (one whose chunk was cut by a turn's end gets the rest behind the
    others)."""
    clock, log = Clock(), []
    writer = StreamWriter(clock)
    streams = [Stream(log, n, waiting=5) for n in range(500)]
    for stream in streams:
        writer.want(stream)
    turns, served = 0, []
    while clock.getDelayedCalls():
        before = len(log)
        turn(clock)
        turns += 1
        this = log[before:]
        assert work(this) <= WRITE_SLICE
        served.extend(name for name, _ in this)
    assert list(dict.fromkeys(served)) == list(range(500))
    cut = [name for name, chunks in enumerate(s.chunks for s in streams) if len(chunks) > 1]
    assert 0 < len(cut) <= turns  # at most one cut a turn
    # As few turns as the work needs (the cut chunks' second writes cost WRITE_COST more).
    assert turns <= -(-(500 * (5 + WRITE_COST) + len(cut) * WRITE_COST) // WRITE_SLICE) + 1
    assert all([n for c in s.chunks for n in c] == [0, 1, 2, 3, 4] for s in streams)


def test_a_long_backlog_goes_in_chunks_behind_the_others() -> None:
    """One stream with 5,000 events waiting and two with one each: the long one writes
    a slice-sized chunk, then the others get their turn before its next chunk."""
    clock, log = Clock(), []
    writer = StreamWriter(clock)
    long, a, b = Stream(log, 0, waiting=5000), Stream(log, 1, waiting=1), Stream(log, 2, 1)
    for stream in (long, a, b):
        writer.want(stream)
    turn(clock)
    assert log[0] == (0, WRITE_SLICE - WRITE_COST)
    assert log[1:] == []  # the slice is spent: a and b are next, before the long one
    turn(clock)
    assert log[1:3] == [(1, 1), (2, 1)] and log[3][0] == 0
    while clock.getDelayedCalls():
        turn(clock)
    assert [n for c in long.chunks for n in c] == list(range(5000))
    assert max(n for name, n in log) <= WRITE_SLICE - WRITE_COST


def test_a_full_stream_waits_until_wanted_again() -> None:
    """A stream whose client's buffer filled (twisted.web paused it) reports no more:
    the writer leaves it, and serves it again once it is wanted (resumed)."""
    clock, log = Clock(), []
    writer = StreamWriter(clock)
    stuck = Stream(log, 0, waiting=100, room=10)
    writer.want(stuck)
    turn(clock)
    assert log == [(0, 10)] and writer.ready == {} and clock.getDelayedCalls() == []
    stuck.room = 1 << 30  # the client read
    writer.want(stuck)
    turn(clock)
    assert log == [(0, 10), (0, 90)] and stuck.next == 100


def test_forget_and_stop() -> None:
    """A stream that ended is not served; stop() drops every stream and the call."""
    clock, log = Clock(), []
    writer = StreamWriter(clock)
    gone, kept = Stream(log, 0, waiting=1), Stream(log, 1, waiting=1)
    writer.want(gone)
    writer.want(kept)
    writer.forget(gone)
    turn(clock)
    assert log == [(1, 1)]
    writer.want(Stream(log, 2, waiting=1))
    writer.stop()
    assert writer.ready == {} and writer.call is None and clock.getDelayedCalls() == []
