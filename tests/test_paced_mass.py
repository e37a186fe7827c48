"""Mass work in slices (issue 14, core/pacing.py): the periodic $SYS publication to
every $SYS subscriber and the disconnection of every client at shutdown go a slice
per reactor turn, as a new subscription's retained messages do."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from mqtt_twisted.codec import Disconnect, Publish, Subscribe, Subscription, encode
from mqtt_twisted.constants import ReasonCode
from mqtt_twisted.core.pacing import CLOSE_SLICE, SYS_SLICE, paced
from mqtt_twisted.core.states import CLOSED
from mqtt_twisted.core.stats import BrokerStats
from mqtt_twisted.core.systopics import SysTopics
from mqtt_twisted.testing import FakeClient, make_broker
from tests.livebroker import Bystander, LiveBroker, connect


def one_turn(clock: Clock) -> None:
    """Run the calls due now, as one reactor turn does: a call they schedule for 0 s
    later waits for the next turn (``Clock.advance(0)`` would run it at once)."""
    due = [call for call in clock.calls if call.getTime() <= clock.seconds()]
    for call in due:
        clock.calls.remove(call)
        call.called = 1
        call.func(*call.args, **call.kw)


def test_paced_budget_counts_items_and_deliveries() -> None:
    """A slice ends once items plus the deliveries they made reach the budget; the
    rest goes on at the next turn, in order, then done() is called once."""
    clock, stats = Clock(), BrokerStats()
    seen: list[int] = []
    finished: list[bool] = []

    def do(item: int) -> None:
        seen.append(item)
        stats.deliveries += 9  # each item reaches nine sessions: 10 units

    paced(clock, stats, iter(range(25)), do, 50, lambda: finished.append(True))
    assert seen == list(range(5)) and not finished
    one_turn(clock)
    assert seen == list(range(10))
    for _ in range(3):
        one_turn(clock)
    assert seen == list(range(25)) and not finished  # the fifth slice ended at its budget
    one_turn(clock)
    assert finished == [True]
    one_turn(clock)
    assert finished == [True] and not clock.calls


def test_one_item_goes_however_big() -> None:
    """An item whose deliveries exceed the budget still goes, one per slice."""
    clock, stats = Clock(), BrokerStats()
    seen: list[int] = []

    def do(item: int) -> None:
        seen.append(item)
        stats.deliveries += 10_000

    paced(clock, stats, iter(range(3)), do, 100)
    assert seen == [0]
    one_turn(clock)
    one_turn(clock)
    assert seen == [0, 1, 2]


def test_shutdown_closes_clients_a_slice_per_turn() -> None:
    """close_all closes CLOSE_SLICE connections a turn; every v5 client ends up with
    DISCONNECT 0x8B, and no will goes out."""
    broker, clock = make_broker()
    clients = [FakeClient(broker, 5) for _ in range(3 * CLOSE_SLICE + 10)]
    for i, c in enumerate(clients):
        c.connect(f"c{i}")
    broker.close_all(ReasonCode.SERVER_SHUTTING_DOWN)
    closed = [c.connection.state == CLOSED for c in clients]
    assert sum(closed) == CLOSE_SLICE
    for turn in range(2, 5):
        one_turn(clock)
        assert sum(c.connection.state == CLOSED for c in clients) == min(len(clients),
                                                                   turn * CLOSE_SLICE)
    assert not broker.connections
    assert all(c.received()[-1] == Disconnect(ReasonCode.SERVER_SHUTTING_DOWN)
               for c in clients)
    assert broker.stats.wills_published == 0


def test_sys_tick_to_many_subscribers_is_sliced() -> None:
    """A $SYS tick to 200 $SYS/# subscribers delivers about SYS_SLICE a turn (matching
    the messages to their subscribers is paced too); each subscriber gets every
    changed topic in the end, all in one turn (one write a tick)."""
    broker, clock = make_broker()
    subs = []
    for i in range(200):
        c = FakeClient(broker, 4)
        c.connect(f"sys{i}")
        c.subscribe("$SYS/#")
        subs.append(c)
    before = broker.stats.deliveries
    changed = SysTopics(broker).tick()
    per_turn = [broker.stats.deliveries - before]
    while clock.calls:
        before = broker.stats.deliveries
        one_turn(clock)
        per_turn.append(broker.stats.deliveries - before)
    assert changed > 20 and len(per_turn) > 3
    # (a turn may also deliver "retained messages/count", published apart)
    assert max(per_turn) <= SYS_SLICE + 2 * 200, per_turn
    counts = {sum(isinstance(p, Publish) for p in c.received()) for c in subs}
    assert counts == {changed + 1}  # + retained messages/count, published apart


@pytest.mark.slow
@pytest.mark.timing
def test_sys_publication_to_1000_subscribers_leaves_the_bystander_alone(
        tmp_path: Path) -> None:
    """1,000 $SYS/# subscribers (that read) and a $SYS tick a second: the bystander's
    p99 stays under 50 ms over 10 ticks (one tick, 14-40 topics x 1,000, was one
    block: p99 288 ms, max 544 ms)."""
    broker = LiveBroker(tmp_path, "--sys-interval", "1")
    subscribers: list[socket.socket] = []
    try:
        for i in range(1000):
            sock = connect(broker.port, f"sys-{i}")
            sock.sendall(encode(Subscribe(1, [Subscription("$SYS/#", 0)])))
            sock.setblocking(False)
            subscribers.append(sock)
        bystander = Bystander(broker.port)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            bystander.round_trip()
            for sock in subscribers:  # keep them reading, as real dashboards do
                try:
                    while sock.recv(65536):
                        pass
                except BlockingIOError:
                    pass
            time.sleep(0.002)
        p99, worst = bystander.percentile(0.99), max(bystander.times)
        print(f"$SYS to 1,000 subscribers: bystander p50 {bystander.percentile(0.5):.2f} "
              f"ms, p99 {p99:.2f} ms, max {worst:.1f} ms over {len(bystander.times)}")
        assert broker.unhandled() == []
        assert p99 < 50, (p99, worst)
    finally:
        for sock in subscribers:
            sock.close()
        broker.stop()
