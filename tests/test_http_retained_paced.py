"""``GET /retained``'s page chosen and encoded in slices (``adapters/_httpretained.py``):
the same page and bytes as in one go, over several reactor turns of a fake clock."""

from __future__ import annotations

from twisted.internet.task import Clock

from mqtt_twisted.adapters import _httpapi as api
from mqtt_twisted.adapters._httpretained import MATCH_SLICE, paced_answer, paced_page
from mqtt_twisted.message import Message


def messages(count: int, size: int = 10) -> list[Message]:
    return [Message(f"t/{n:05d}", b"x" * size, 0, True) for n in reversed(range(count))]


def run(clock: Clock, d) -> tuple[object, int]:
    """The Deferred's result, and how many reactor turns it took."""
    got: list = []
    d.addCallback(got.append)
    turns = 0
    while not got:  # one delayed call at a time: one reactor turn each
        call = clock.getDelayedCalls()[0]
        clock.calls.remove(call)
        call.called = 1
        call.func(*call.args, **call.kw)
        turns += 1
    return got[0], turns


def test_page_as_in_one_go_over_several_turns() -> None:
    """2.5 slices of matches: three turns; the page and "more" as retained_page says,
    with and without ``after``."""
    clock, found = Clock(), messages(MATCH_SLICE * 5 // 2)
    (page, more), turns = run(clock, paced_page(clock, iter(found), 100, None))
    assert turns == 2 and more
    assert page == api.retained_page(found, 100, None)[0]
    (page, more), _ = run(clock, paced_page(clock, iter(found), 100, "t/04950"))
    assert [m.topic for m in page] == [f"t/{n:05d}" for n in range(4951, 5000)] and not more


def test_small_sets_answer_at_once() -> None:
    """Fewer matches than a slice: no turn waited for (as before)."""
    clock = Clock()
    done: list = []
    paced_page(clock, messages(10), 100, None).addCallback(done.append)
    assert done and done[0][1] is False


def test_answer_bytes_as_api_dumps() -> None:
    """The JSON body is what api.dumps made of the whole answer, encoded over turns."""
    clock, page = Clock(), messages(100, 10_000)[::-1]
    expected = api.dumps({"messages": [api.event(m, m.qos, True, 0.0) for m in page],
                          "next": page[-1].topic})
    body, turns = run(clock, paced_answer(clock, page, True, 0.0))
    assert body == expected and turns >= 7
