"""Live SSE streams are written by the bridge's writer, a slice per reactor turn
(``adapters/_ssewriter.py``), not in the turn of the PUBLISH that fans out to them:
one PUBLISH to 500 streams was 500 encodes and writes in the publisher's turn, 10-15 ms
of CPU (issue 14)."""

from __future__ import annotations

from twisted.internet.task import Clock

from mqtt_twisted.adapters._ssewriter import (
    CHUNK,
    SEND_TIME,
    WRITE_TIME,
    Heartbeat,
    StreamWriter,
)

#: What the fake CPU clock advances per event written (a real one: 2-4 us).
EVENT = 10e-6


class CPU:
    """A fake thread CPU clock: the streams' flushes advance it; counts its reads."""

    def __init__(self) -> None:
        self.now = 0.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


class Stream:
    """A stream with ``waiting`` events; ``room`` events more before its client's
    buffer is full (then it reports no more, as a paused stream).  Writing costs
    EVENT of the fake CPU per event."""

    def __init__(self, log: list, name: int, waiting: int = 0, room: int = 1 << 30,
                 cpu: CPU | None = None) -> None:
        self.log, self.name = log, name
        self.waiting, self.room = waiting, room
        self.cpu = cpu
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
        if self.cpu is not None:
            self.cpu.now += n * EVENT
        return n, self.waiting > 0 and self.room > 0


def turn(clock: Clock) -> int:
    """Run the calls due now (one reactor turn's timed calls); how many ran."""
    calls = [c for c in clock.getDelayedCalls() if c.getTime() <= clock.seconds()]
    for call in calls:
        clock.calls.remove(call)
        call.func(*call.args, **call.kw)
    return len(calls)


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


def test_a_slice_of_cpu_time_per_turn_round_robin() -> None:
    """500 streams with 5 events each: a turn stops once its CPU time plus SEND_TIME a
    write reaches WRITE_TIME (it may pass it by the last chunk only); the streams are
    first served in the order they were wanted, and each stream's events go in
    order; the CPU clock is read once per chunk, not per event."""
    clock, log, cpu = Clock(), [], CPU()
    writer = StreamWriter(clock, cpu=cpu)
    streams = [Stream(log, n, waiting=5, cpu=cpu) for n in range(500)]
    for stream in streams:
        writer.want(stream)
    turns, served = 0, []
    while clock.getDelayedCalls():
        before, started = len(log), cpu.now
        turn(clock)
        turns += 1
        this = log[before:]
        spent = cpu.now - started + len(this) * SEND_TIME
        last = this[-1][1] * EVENT + SEND_TIME
        assert spent < WRITE_TIME + last
        if clock.getDelayedCalls():  # not the last turn: the budget was used
            assert spent >= WRITE_TIME
        served.extend(name for name, _ in this)
    assert list(dict.fromkeys(served)) == list(range(500))
    assert served == list(range(500))  # five events fit a chunk: one write each
    per_write = 5 * EVENT + SEND_TIME
    assert turns == -(-500 // -(-WRITE_TIME // per_write))
    assert cpu.reads == 500 + turns  # one read a chunk, one at each turn's start
    assert all([n for c in s.chunks for n in c] == [0, 1, 2, 3, 4] for s in streams)


def test_a_turn_writes_one_chunk_whatever_its_budget() -> None:
    """A budget spent at once (a slow machine, a huge event) still writes one chunk a
    turn: the writer always makes progress."""
    clock, log, cpu = Clock(), [], CPU()
    writer = StreamWriter(clock, budget=0.0, cpu=cpu)
    streams = [Stream(log, n, waiting=2, cpu=cpu) for n in range(3)]
    for stream in streams:
        writer.want(stream)
    for expected in ([(0, 2)], [(0, 2), (1, 2)], [(0, 2), (1, 2), (2, 2)]):
        turn(clock)
        assert log == expected
    assert clock.getDelayedCalls() == []


def test_a_long_backlog_goes_in_chunks_behind_the_others() -> None:
    """One stream with 5,000 events waiting and two with one each: the long one writes
    a CHUNK-sized chunk, then the others get theirs before its next chunk."""
    clock, log, cpu = Clock(), [], CPU()
    writer = StreamWriter(clock, cpu=cpu)
    long = Stream(log, 0, waiting=5000, cpu=cpu)
    a, b = Stream(log, 1, waiting=1, cpu=cpu), Stream(log, 2, waiting=1, cpu=cpu)
    for stream in (long, a, b):
        writer.want(stream)
    turn(clock)
    assert log[:4] == [(0, CHUNK), (1, 1), (2, 1), (0, CHUNK)]
    while clock.getDelayedCalls():
        turn(clock)
    assert [n for c in long.chunks for n in c] == list(range(5000))
    assert max(n for name, n in log) == CHUNK


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
    assert log == [(0, 10), (0, CHUNK), (0, 90 - CHUNK)] and stuck.next == 100


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


class Idle:
    """A stream for the heartbeat: writes a ping when the writer serves it."""

    def __init__(self, pings: list, name: int, paused: bool = False) -> None:
        self.pings, self.name, self.paused = pings, name, paused
        self.idle = False
        self.ping = False

    def want_ping(self) -> bool:
        if self.paused:
            return False
        self.ping = True
        return True

    def flush(self, limit: int) -> tuple[int, bool]:
        if self.ping:
            self.ping = self.idle = False
            self.pings.append((self.name, self.clock.seconds()))
            return 1, False
        return 0, False


def test_one_heartbeat_timer_pings_idle_streams_through_the_writer() -> None:
    """Every idle stream gets a ping every ``interval`` (written by the writer: only its
    ``flush`` writes); a stream that wrote since the last tick gets none at the next; a
    paused one none; one timer for all, gone with the last stream."""
    clock, pings = Clock(), []
    writer = StreamWriter(clock)
    heartbeat = Heartbeat(clock, 10.0, writer)
    streams = [Idle(pings, n) for n in range(3)]
    paused = Idle(pings, 3, paused=True)
    for stream in [*streams, paused]:
        stream.clock = clock
        heartbeat.add(stream)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(5.0)  # the first tick: all idle since added (the writer's turn after)
    assert pings == [(0, 5.0), (1, 5.0), (2, 5.0)]
    clock.advance(5.0)  # they wrote their pings since the last tick: none now
    assert len(pings) == 3
    streams[1].idle = False  # it writes an event before the next tick
    clock.advance(5.0)
    assert pings[3:] == [(0, 15.0), (2, 15.0)]
    clock.advance(5.0)
    assert pings[5:] == [(1, 20.0)]
    for stream in [*streams, paused]:
        heartbeat.discard(stream)
    clock.advance(5.0)
    assert clock.getDelayedCalls() == [] and heartbeat.call is None


def test_no_heartbeat_when_its_interval_is_zero() -> None:
    clock = Clock()
    heartbeat = Heartbeat(clock, 0.0, StreamWriter(clock))
    heartbeat.add(Idle([], 0))
    assert clock.getDelayedCalls() == [] and not heartbeat.streams
