"""``--queue-full``: what a connected client whose queue is full pays.  By default the
oldest messages are dropped and counted (Mosquitto's and EMQX's behaviour); with
``disconnect`` the client is also closed (v5: DISCONNECT 0x97), once, at the end of the
publisher's turn, and a persistent session keeps its bounded queue for the reconnect
(issue 14: a subscriber that does not keep up costs only its own queue)."""

from __future__ import annotations

from twisted.internet.task import Clock

from mqtt_twisted.codec import Disconnect, Publish
from mqtt_twisted.constants import PropertyId, ReasonCode
from mqtt_twisted.core.broker import Broker
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.testing import FakeClient, make_broker

SESSION_EXPIRY = {PropertyId.SESSION_EXPIRY_INTERVAL: 3600}


def slow_subscriber(mode: str, version: int = 5) -> tuple[Broker, Clock, FakeClient,
                                                           FakeClient, FakeClient]:
    """A broker whose "slow" subscriber never acknowledges (one in flight, three queued),
    a "fast" one that does, and a publisher; ten QoS 1 messages published."""
    broker, clock = make_broker(BrokerSettings(max_inflight=1, max_queued=3,
                                               queue_full=mode))
    slow, fast, pub = FakeClient(broker, version), FakeClient(broker, 5), FakeClient(broker, 5)
    slow.connect("slow", clean=False, properties=SESSION_EXPIRY if version == 5 else None)
    slow.subscribe("t", qos=1)
    fast.connect("fast")
    fast.subscribe("t", qos=1)
    pub.connect("pub")
    for i in range(10):
        pub.publish("t", b"%d" % i, qos=1)
        for packet in fast.received():
            if isinstance(packet, Publish):
                fast.ack(packet)
    return broker, clock, slow, fast, pub


def test_drop_is_the_default_and_keeps_the_client() -> None:
    """Dropped and counted; the client stays connected."""
    assert BrokerSettings().queue_full == "drop"
    broker, clock, slow, _, _ = slow_subscriber("drop")
    clock.advance(0)
    assert not slow.transport.closed
    assert broker.stats.messages_dropped == 6  # 10 - 1 in flight - 3 queued
    assert broker.stats.limit_hits["queue_full"] == 0


def test_disconnect_closes_a_v5_client_once_with_0x97() -> None:
    """The client is closed at the turn's end with DISCONNECT 0x97, counted once although
    its queue overflowed six times; the other subscriber got every message."""
    broker, clock, slow, fast, _ = slow_subscriber("disconnect")
    assert not slow.transport.closed  # not in the middle of the publisher's routing
    clock.advance(0)
    assert slow.transport.closed
    packets = slow.received()
    assert isinstance(packets[-1], Disconnect)
    assert packets[-1].reason_code == ReasonCode.QUOTA_EXCEEDED
    assert broker.stats.limit_hits["queue_full"] == 1
    assert broker.stats.messages_dropped == 6
    assert not fast.transport.closed


def test_the_persistent_session_keeps_its_queue_for_the_reconnect() -> None:
    """The one in flight, then the newest three, come on reconnect, one at a time."""
    broker, clock, slow, _, _ = slow_subscriber("disconnect")
    clock.advance(0)
    slow.drop()
    again = FakeClient(broker, 5)
    got = [p for p in again.connect("slow", clean=False, properties=SESSION_EXPIRY)
           if isinstance(p, Publish)]
    payloads = []
    while got:
        payloads.append(got[0].payload)
        got = [p for p in again.ack(got[0]) if isinstance(p, Publish)]
    assert payloads == [b"0", b"7", b"8", b"9"]
    assert not again.transport.closed


def test_a_v3_client_is_closed_without_a_disconnect() -> None:
    broker, clock, slow, _, _ = slow_subscriber("disconnect", version=4)
    clock.advance(0)
    assert slow.transport.closed
    assert not any(isinstance(p, Disconnect) for p in slow.received())
    assert broker.stats.limit_hits["queue_full"] == 1


def test_an_offline_session_overflows_without_anything_to_close() -> None:
    """A session whose client is away drops as before; nothing is scheduled."""
    broker, clock, slow, fast, pub = slow_subscriber("disconnect")
    clock.advance(0)
    slow.drop()
    for i in range(10):
        pub.publish("t", b"x%d" % i, qos=1)
        for packet in fast.received():
            if isinstance(packet, Publish):
                fast.ack(packet)
    assert broker.stats.messages_dropped == 16
    assert not [c for c in clock.getDelayedCalls() if "_closed_full" in repr(c)]
    clock.advance(0)
    assert broker.stats.limit_hits["queue_full"] == 1
