"""Sans-IO tests of the byte limits on what a session holds for a client that does not
read: its queue, and what is written through to its full transport while its
publishers are held back (issue 14, docs/limits.md)."""

from __future__ import annotations

from mqtt_twisted.codec import Publish, encode
from mqtt_twisted.constants import PropertyId as P
from mqtt_twisted.core import inspection
from mqtt_twisted.core.session import Session, queued_size
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.message import Message
from mqtt_twisted.records import Outbound
from mqtt_twisted.testing import FakeClient, make_broker


def publishes(packets: list) -> list[Publish]:
    return [p for p in packets if isinstance(p, Publish)]


def outbound(payload: bytes, topic: str = "t") -> Outbound:
    return Outbound(Message(topic, payload, 1), 1, False, None, None, 0, None, 1)


def test_default_is_16_mib() -> None:
    """16 MiB of queued payload and topic per session by default."""
    assert BrokerSettings().max_queued_bytes == 16 << 20


def test_enqueue_drops_the_oldest_until_the_bytes_fit() -> None:
    """A big item drops as many old ones as it needs; one over the limit drops itself."""
    session = Session("c", max_queued=100, max_queued_bytes=1000)
    for _ in range(3):
        assert session.enqueue(outbound(bytes(299))) == []  # 300 bytes each with "t"
    dropped = session.enqueue(outbound(bytes(599)))
    assert len(dropped) == 2 and session.queued_bytes == 900 and len(session.queue) == 2
    too_big = outbound(bytes(1000))
    assert session.enqueue(too_big) == [too_big]
    assert session.queued_bytes == 900
    assert session.dropped == 3


def test_offline_session_queue_is_bounded_in_bytes() -> None:
    """A persistent session's QoS 1 queue keeps the newest messages that fit in its
    bytes; the others are dropped and counted; what is kept is delivered on return."""
    broker, _ = make_broker(BrokerSettings(max_queued_bytes=1000))
    sub = FakeClient(broker, 4)
    sub.connect("sub", clean=False)
    sub.subscribe("t", qos=1)
    sub.drop()
    pub = FakeClient(broker, 4)
    pub.connect("pub")
    for i in range(10):
        pub.publish("t", b"%d" % i + bytes(298), qos=1)
    assert inspection.session_info(broker, "sub").queued == 3
    assert broker.sessions["sub"].queued_bytes == 900
    assert broker.stats.messages_dropped == 7
    again = FakeClient(broker, 4)
    got = publishes(again.connect("sub", clean=False))
    assert [p.payload[:1] for p in got] == [b"7", b"8", b"9"]
    assert broker.sessions["sub"].queued_bytes == 0


def test_queued_bytes_return_to_zero_when_the_queue_drains() -> None:
    """The counter follows the queue both ways (no drift to a permanent refusal)."""
    broker, _ = make_broker(BrokerSettings(max_inflight=1))
    sub, pub = FakeClient(broker, 4), FakeClient(broker, 4)
    sub.connect("sub")
    sub.subscribe("t", qos=1)
    pub.connect("pub")
    for _ in range(5):
        pub.publish("t", bytes(100), qos=1)
    session = broker.sessions["sub"]
    assert session.queued_bytes == 4 * 101
    got = publishes(sub.received())
    while got:
        got = publishes(sub.ack(got[-1]))
    assert session.queued_bytes == 0 and not session.queue


def test_alias_only_publishes_cannot_amplify_into_a_full_transport() -> None:
    """Thousands of 8-byte alias-only PUBLISHes to a 4 KiB topic, in one read, toward a
    subscriber whose transport is full: what is written through stops at the byte
    limit, the rest queues within it (oldest dropped); the broker holds at most about
    twice max_queued_bytes, where it held 4 KiB per 8 bytes received."""
    limit = 256 << 10
    broker, clock = make_broker(BrokerSettings(max_queued_bytes=limit, max_queued=100_000))
    sub, pub = FakeClient(broker, 5), FakeClient(broker, 5)
    sub.connect("sub")
    sub.subscribe("#")
    pub.connect("pub")
    sub.received()
    sub.connection.pauseWriting()  # its socket buffer is full: it does not read
    topic = "a/" + "x" * 4000
    first = encode(Publish(topic, b"", 0, False, False, None, {P.TOPIC_ALIAS: 1}), 5)
    alias_only = encode(Publish("", b"", 0, False, False, None, {P.TOPIC_ALIAS: 1}), 5)
    assert len(alias_only) == 8
    pub.send_bytes(first + alias_only * 10_000)  # 80 KB: one read
    clock.advance(0)  # handled READ_BUDGET packets a reactor turn
    written = len(sub.transport.written)
    queued = broker.sessions["sub"].queued_bytes
    assert written <= limit + 5000
    assert queued <= limit
    assert broker.stats.messages_dropped > 9000
    assert queued_size(broker.sessions["sub"].queue[-1].message) == len(topic)


def test_inflight_bytes_close_the_window() -> None:
    """With max_inflight_bytes 1000, QoS 1 copies of 600 bytes go two at a time (the
    window closes once 1,000 bytes are reached, and one always goes); acknowledgements
    open it again, and the counter returns to zero."""
    broker, _ = make_broker(BrokerSettings(max_inflight_bytes=1000))
    sub, pub = FakeClient(broker, 4), FakeClient(broker, 4)
    sub.connect("sub")
    sub.subscribe("t", qos=1)
    pub.connect("pub")
    for _ in range(5):
        pub.publish("t", bytes(599), qos=1)
    session = broker.sessions["sub"]
    got = publishes(sub.received())
    assert len(got) == 2 and session.inflight_bytes == 1200 and len(session.queue) == 3
    delivered = len(got)
    while got:
        more = []
        for packet in got:
            more += publishes(sub.ack(packet))
        got = more
        delivered += len(got)
    assert delivered == 5
    assert session.inflight_bytes == 0 and not session.inflight


def test_inflight_bytes_default_is_no_byte_limit() -> None:
    """By default only the count (max_inflight) limits the window."""
    assert BrokerSettings().max_inflight_bytes == 0
    assert Session("c").max_inflight_bytes >= 1 << 62


def test_zero_queued_bytes_means_no_limit() -> None:
    """--max-queued-bytes 0 leaves only the count, as Mosquitto's max_queued_bytes 0."""
    session = Session("c", max_queued=3, max_queued_bytes=0)
    assert [session.enqueue(outbound(bytes(1 << 20))) for _ in range(3)] == [[], [], []]
    assert len(session.enqueue(outbound(b""))) == 1
