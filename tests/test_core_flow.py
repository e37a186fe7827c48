"""Flow control: a subscriber that cannot keep up holds back the publishers feeding it,
for a bounded time, and a dead one costs nobody else anything."""

from __future__ import annotations

from mqtt_twisted.codec import Publish
from mqtt_twisted.core import inspection
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.tap import Options, broker_settings
from mqtt_twisted.testing import FakeClient, make_broker


def publishes(packets: list) -> list[Publish]:
    return [p for p in packets if isinstance(p, Publish)]


def setup(settings: BrokerSettings | None = None):
    broker, clock = make_broker(settings)
    sub = FakeClient(broker)
    sub.connect("sub")
    sub.subscribe("t", qos=1)
    pub = FakeClient(broker)
    pub.connect("pub")
    return broker, clock, sub, pub


def test_full_subscriber_holds_publisher_back_until_it_drains() -> None:
    """A paused subscriber stops reads from its publisher; draining resumes them, and
    every QoS 0 message arrives (written, not dropped)."""
    broker, _, sub, pub = setup()
    sub.connection.pauseWriting()
    for i in range(5):
        pub.publish("t", b"%d" % i)
    assert pub.transport.reading is False
    sub.connection.resumeWriting()
    assert pub.transport.reading is True
    assert [p.payload for p in publishes(sub.received())] == [b"%d" % i for i in range(5)]
    assert broker.stats.messages_dropped == 0


def test_dead_subscriber_releases_publisher_after_grace() -> None:
    """A subscriber that never drains holds its publisher back only for the grace period;
    after that its messages queue within max_queued and the oldest are dropped."""
    broker, clock, sub, pub = setup(BrokerSettings(slow_consumer_grace=2.0, max_queued=3))
    sub.connection.pauseWriting()
    pub.publish("t", b"first")
    assert pub.transport.reading is False
    clock.advance(2.1)
    assert pub.transport.reading is True  # a timer noticed: nothing else would
    for i in range(10):
        pub.publish("t", b"%d" % i)
    assert pub.transport.reading is True
    assert inspection.session_info(broker, "sub").queued == 3
    assert broker.stats.messages_dropped == 7


def test_the_grace_is_the_operators() -> None:
    """``--slow-consumer-grace 5``: a subscriber that cannot keep up holds its publisher
    back for 5 s, not the default 2 (a cluster inbox the same: tests/test_cluster_handover
    lengthens it, so a client slowed by a loaded machine is not what is tested)."""
    options = Options()
    options.parseOptions(["--slow-consumer-grace", "5", "--max-queued", "3"])
    _, clock, sub, pub = setup(broker_settings(options))
    sub.connection.pauseWriting()
    pub.publish("t", b"first")
    clock.advance(4.9)
    assert pub.transport.reading is False
    clock.advance(0.2)
    assert pub.transport.reading is True


def test_qos1_queue_past_high_water_holds_publisher_back() -> None:
    """A subscriber whose in-flight window is full and whose queue passes the high-water
    mark holds its publisher back until acknowledgements drain the queue."""
    _, _, sub, pub = setup(BrokerSettings(max_inflight=1, max_queued=4))
    for i in range(3):
        pub.publish("t", b"%d" % i, qos=1)
    assert pub.transport.reading is True  # one in flight, two queued: at the mark
    pub.publish("t", b"3", qos=1)
    assert pub.transport.reading is False  # high water is max_queued // 2 = 2
    got = publishes(sub.received())
    for _ in range(4):
        got += publishes(sub.ack(got[-1]))
    assert [p.payload for p in got] == [b"0", b"1", b"2", b"3"]
    assert pub.transport.reading is True


def test_publisher_resumes_only_when_every_holder_caught_up() -> None:
    """A publisher held back by two subscribers reads again only after both drain."""
    broker, _, sub, pub = setup()
    other = FakeClient(broker)
    other.connect("other")
    other.subscribe("t")
    sub.connection.pauseWriting()
    other.connection.pauseWriting()
    pub.publish("t", b"x")
    sub.connection.resumeWriting()
    assert pub.transport.reading is False
    other.connection.resumeWriting()
    assert pub.transport.reading is True


def test_closing_subscriber_releases_publishers() -> None:
    """A full subscriber that disconnects lets its publishers go at once."""
    _, _, sub, pub = setup()
    sub.connection.pauseWriting()
    pub.publish("t", b"x")
    assert pub.transport.reading is False
    sub.drop()
    assert pub.transport.reading is True


def test_internal_publish_to_full_subscriber_queues() -> None:
    """With no publisher to hold back (a will, $SYS), messages for a full subscriber
    queue within max_queued instead of overfilling its transport."""
    from mqtt_twisted.message import Message

    broker, _, sub, _ = setup(BrokerSettings(max_queued=2))
    sub.connection.pauseWriting()
    for i in range(4):
        broker.route(Message("t", b"%d" % i))
    assert inspection.session_info(broker, "sub").queued == 2
    assert broker.stats.messages_dropped == 2


def test_store_write_that_failed_at_once_is_not_acknowledged() -> None:
    """A store write that has already failed when the broker sees it still withholds the
    PUBACK and closes the client (0x89 for v5), like one that fails later."""
    from twisted.internet.defer import fail

    from mqtt_twisted.codec import Disconnect, PubAck
    from mqtt_twisted.errors import StorageError
    from mqtt_twisted.store.memory import MemoryStore

    class FailingStore(MemoryStore):
        persistsMessages = True

        def storeOutbound(self, clientId, outbound):
            return fail(StorageError("down"))

    broker, _ = make_broker(store=FailingStore())
    sub = FakeClient(broker)
    sub.connect("sub", clean=False)
    sub.subscribe("t", qos=1)
    sub.drop()
    pub = FakeClient(broker, 5)
    pub.connect("pub")
    out = pub.publish("t", b"x", qos=1)
    assert not [p for p in out if isinstance(p, PubAck)]
    assert isinstance(out[-1], Disconnect) and out[-1].reason_code == 0x89
    assert broker.stats.store_errors == 1


def stall_chain(settings: BrokerSettings, seconds: float = 30.0, every: float = 2.0,
                tick: float = 0.05) -> tuple[float, int]:
    """An attacker connects a new subscriber that never reads every ``every`` seconds; a
    publisher floods the topic whenever it is read.  Returns the seconds the publisher
    was held back and how many messages it got through."""
    broker, clock = make_broker(settings)
    pub = FakeClient(broker)
    pub.connect("pub")
    held, sent, n, next_attacker = 0.0, 0, 0, 0.0
    now = 0.0
    while now < seconds:
        if now >= next_attacker:
            slow = FakeClient(broker)
            slow.connect(f"slow-{n}")
            slow.subscribe("flood")
            slow.connection.pauseWriting()  # its socket buffer is full: it never reads
            n += 1
            next_attacker += every
        if pub.transport.reading:
            for _ in range(10):
                pub.publish("flood", b"x")
                sent += 1
        else:
            held += tick
        clock.advance(tick)
        now += tick
    return held, sent


def test_new_slow_subscribers_cannot_renew_the_hold() -> None:
    """The stall chain (issue 14): a new non-reading subscriber every 2 s held the
    publisher back for nearly all of the time; now its hold budget (a slow-consumer
    grace, refilled at a tenth of real time) bounds it: under 6 s of 30."""
    held, sent = stall_chain(BrokerSettings(slow_consumer_grace=2.0))
    assert held < 6.5, held
    assert sent > 4000, sent


def test_hold_budget_refills() -> None:
    """A publisher whose budget is spent is held back again once it has refilled: one
    slow subscriber after a long quiet time still gets its whole grace."""
    broker, clock, sub, pub = setup(BrokerSettings(slow_consumer_grace=2.0))
    sub.connection.pauseWriting()
    pub.publish("t", b"1")
    clock.advance(2.1)  # the grace ran out: released, 2 s charged
    assert pub.transport.reading is True
    sub.connection.resumeWriting()
    other = FakeClient(broker)
    other.connect("other")
    other.subscribe("t")
    other.connection.pauseWriting()
    pub.publish("t", b"2")
    assert pub.transport.reading is True  # budget spent: not held back for `other`
    other.connection.resumeWriting()
    clock.advance(25.0)  # refilled
    other.connection.pauseWriting()
    pub.publish("t", b"3")
    assert pub.transport.reading is False
