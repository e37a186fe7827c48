"""The QoS 1 path without store writes to wait for (issue 19, session 9).

With a store that keeps no per-message writes (the memory store), a plain QoS 1
PUBLISH is routed and acknowledged inline in ``inbound.on_publish``, a subscriber's
copy goes in flight inline in ``Delivery.deliver`` or ``pump`` and is encoded whole
(``encode_publish_plain``), and the compiled feed builds the usual PUBACK itself.
These tests hold what that path must keep: acks in order, the in-flight window in
count and bytes, the queue behind it drained in order as PUBACKs come, packet ids
from sequence numbers, the bytes of each copy, and the counters.
"""

from __future__ import annotations

from mqtt_twisted.codec import PubAck, Publish, encode
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.testing import FakeClient, make_broker


def pair(**settings: int) -> tuple:
    broker, _ = make_broker(BrokerSettings(**settings))
    sub = FakeClient(broker, 4)
    sub.connect("sub")
    sub.subscribe("t/q1", qos=1)
    pub = FakeClient(broker, 4)
    pub.connect("pub")
    return broker, sub, pub


def test_a_burst_past_the_window_queues_and_drains_in_order() -> None:
    broker, sub, pub = pair(max_inflight=5, max_queued=100)
    pub.send_bytes(b"".join(encode(Publish("t/q1", b"m%d" % i, 1, False, False, i + 1), 4)
                            for i in range(12)))
    assert pub.received() == [PubAck(i + 1) for i in range(12)]  # all at once, in order
    session = broker.sessions["sub"]
    got = sub.received()
    assert [(p.packet_id, p.payload) for p in got] == [(i + 1, b"m%d" % i) for i in range(5)]
    assert len(session.inflight) == 5 and len(session.queue) == 7
    assert session.inflight_bytes == sum(len(b"m%d" % i) + 4 for i in range(5))
    delivered = [p.payload for p in got]
    while got:
        sub.send_bytes(b"".join(encode(PubAck(p.packet_id), 4) for p in got))
        got = sub.received()
        # Each copy's packet id is its sequence number's (records.packet_id_for).
        assert all(p.packet_id == int(p.payload[1:]) + 1 for p in got)
        delivered += [p.payload for p in got]
    assert delivered == [b"m%d" % i for i in range(12)]
    assert not session.inflight and not session.queue
    assert session.inflight_bytes == 0 and session.queued_bytes == 0
    stats = broker.stats
    assert (stats.received_qos1, stats.sent_qos1, stats.messages_received) == (12, 12, 12)


def test_each_copy_is_the_bytes_encode_makes() -> None:
    _, sub, pub = pair(max_inflight=100)
    for size in (0, 1, 100, 200, 20000):  # under and over 128 bytes a packet
        payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
        start = len(sub.transport.written)
        pub.publish("t/q1", payload, qos=1)
        [copy] = sub.received()
        assert bytes(sub.transport.written[start:]) == encode(
            Publish("t/q1", payload, 1, False, False, copy.packet_id), 4)
        sub.ack(copy)


def test_the_window_in_bytes_holds_on_the_inline_path() -> None:
    broker, sub, pub = pair(max_inflight=100, max_inflight_bytes=250)
    for _ in range(5):
        pub.publish("t/q1", bytes(100), qos=1)  # 104 bytes counted each
    session = broker.sessions["sub"]
    assert len(sub.received()) == 3  # the third opens past 250: one message always goes
    assert len(session.queue) == 2
