"""Streams that stalled together are cut off a slice of CPU time per reactor turn
(``_httpstream.CutOffs``): 500 at once took 0.8 s of one turn (issue 14)."""

from __future__ import annotations

from twisted.internet.task import Clock

from mqtt_twisted.adapters._httpstream import CUT_TIME, LOST_TIME, CutOffs

#: What the fake CPU clock advances per cut-off.
CUT = 300e-6


class CPU:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Stream:
    def __init__(self, cut: list, cpu: CPU) -> None:
        self.cut, self.cpu = cut, cpu

    def cut_off(self) -> None:
        self.cut.append(self)
        self.cpu.now += CUT


def run_turn(clock: Clock) -> None:
    call = clock.getDelayedCalls()[0]
    clock.calls.remove(call)
    call.func(*call.args, **call.kw)


def test_cut_a_slice_of_cpu_time_per_turn() -> None:
    """Ten stalled streams: none cut in the timer's own turn, then as many a turn as
    fit CUT_TIME (LOST_TIME each counted for their connections' loss), in the order
    they stalled; a stream stalling meanwhile joins the line."""
    clock, cut, cpu = Clock(), [], CPU()
    cutoffs = CutOffs(clock, cpu=cpu)
    streams = [Stream(cut, cpu) for _ in range(10)]
    for stream in streams:
        cutoffs.add(stream)
    assert cut == [] and len(clock.getDelayedCalls()) == 1
    per_turn = int(-(-CUT_TIME // (CUT + LOST_TIME)))
    assert 1 < per_turn < 10
    turns = 0
    late = Stream(cut, cpu)
    while clock.getDelayedCalls():
        run_turn(clock)
        turns += 1
        assert len(cut) == min(turns * per_turn, 11)
        if turns == 1:
            cutoffs.add(late)
    assert cut == [*streams, late] and cutoffs.call is None


def test_one_cut_a_turn_at_least() -> None:
    """A cut-off that alone takes longer than the budget still goes: one a turn."""
    clock, cut, cpu = Clock(), [], CPU()
    cutoffs = CutOffs(clock, budget=0.0, cpu=cpu)
    for _ in range(3):
        cutoffs.add(Stream(cut, cpu))
    for turns in (1, 2, 3):
        run_turn(clock)
        assert len(cut) == turns
    assert clock.getDelayedCalls() == []


def test_not_keeping_up_lines_one_a_second() -> None:
    """500 streams dropping in step log one line, not 500, per DROP_LOG_INTERVAL; the
    next line says how many were left out."""
    from twisted.logger import globalLogPublisher

    from mqtt_twisted.adapters._ssewriter import DROP_LOG_INTERVAL, DropLog

    clock, lines = Clock(), []

    def observe(event: dict) -> None:
        if "not keeping up" in event.get("log_format", ""):
            lines.append((event["client"], event["n"], event["others"]))

    globalLogPublisher.addObserver(observe)
    try:
        drops = DropLog(clock)
        for n in range(500):
            drops.note(f"c{n}", 1)
        assert lines == [("c0", 1, 0)]
        clock.advance(DROP_LOG_INTERVAL / 2)
        drops.note("c1", 2)
        assert len(lines) == 1
        clock.advance(DROP_LOG_INTERVAL / 2)
        drops.note("c2", 4)
        assert lines[1:] == [("c2", 4, 500)]
    finally:
        globalLogPublisher.removeObserver(observe)


def test_openings_a_slice_of_cpu_time_per_turn() -> None:
    """New streams are opened OPEN_TIME of CPU a turn, in order, none in the turn of
    their request; each one's Deferred fires as its open() does (its error too)."""
    from twisted.internet.defer import fail, succeed

    from mqtt_twisted.adapters._httpstream import OPEN_TIME, Openings

    clock, cpu, opened = Clock(), CPU(), []

    class Opening:
        def __init__(self, n: int) -> None:
            self.n = n

        def open(self):  # type: ignore[no-untyped-def]
            opened.append(self.n)
            cpu.now += 300e-6
            return fail(ValueError("refused")) if self.n == 3 else succeed(self.n)

    openings = Openings(clock, cpu=cpu)
    results: list = []
    for n in range(8):
        openings.add(Opening(n)).addBoth(results.append)
    assert opened == [] and len(clock.getDelayedCalls()) == 1
    per_turn = int(-(-OPEN_TIME // 300e-6))
    run_turn(clock)
    assert opened == list(range(per_turn))
    while clock.getDelayedCalls():
        run_turn(clock)
    assert opened == list(range(8))
    assert [r for r in results if isinstance(r, int)] == [0, 1, 2, 4, 5, 6, 7]
    assert str(results[3].value) == "refused"


def test_stop_drops_what_waits() -> None:
    """The listener stopped: nothing waiting is run, no call is left behind."""
    clock, cut, cpu = Clock(), [], CPU()
    cutoffs = CutOffs(clock, cpu=cpu)
    cutoffs.add(Stream(cut, cpu))
    cutoffs.stop()
    assert clock.getDelayedCalls() == [] and cutoffs.call is None
    clock.advance(1)
    assert cut == []
