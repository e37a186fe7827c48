"""Streams that stalled together are cut off a few per reactor turn
(``_httpstream.CutOffs``): 500 at once took 0.8 s of one turn (issue 14)."""

from __future__ import annotations

from twisted.internet.task import Clock

from mqtt_twisted.adapters._httpstream import CUT_SLICE, CutOffs


class Stream:
    def __init__(self, cut: list) -> None:
        self.cut = cut

    def cut_off(self) -> None:
        self.cut.append(self)


def test_cut_a_slice_per_turn() -> None:
    """Ten stalled streams: none cut in the timer's own turn, then CUT_SLICE a turn, in
    the order they stalled; a stream stalling meanwhile joins the line."""
    clock, cut = Clock(), []
    cutoffs = CutOffs(clock)
    streams = [Stream(cut) for _ in range(10)]
    for stream in streams:
        cutoffs.add(stream)
    assert cut == [] and len(clock.getDelayedCalls()) == 1
    turns = 0
    late = Stream(cut)
    while clock.getDelayedCalls():
        call = clock.getDelayedCalls()[0]
        clock.calls.remove(call)
        call.func(*call.args, **call.kw)
        turns += 1
        assert len(cut) == min(turns * CUT_SLICE, 11)
        if turns == 1:
            cutoffs.add(late)
    assert cut == [*streams, late] and cutoffs.call is None
