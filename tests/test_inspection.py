"""core.inspection, the read-only view tests use instead of the broker's internals.

Sans-IO: a broker on a clock driven by FakeClients.  Each test checks an answer
against what the clients did, and that asking changed nothing.
"""

from __future__ import annotations

from typing import Any

from mqtt_twisted.codec import Publish, PubRec, PubRel, Subscribe, Subscription, Will
from mqtt_twisted.constants import PropertyId as P
from mqtt_twisted.core import inspection
from mqtt_twisted.core.inspection import HeldMessage, Match, SubscriptionInfo
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.gateway import Gateway
from mqtt_twisted.message import Message
from mqtt_twisted.testing import FakeClient, make_broker


def publishes(packets: list[Any]) -> list[Publish]:
    return [p for p in packets if isinstance(p, Publish)]


def everything(broker: Any, client_id: str) -> tuple[Any, ...]:
    """Every answer the module gives, for checks that asking changes nothing."""
    return (inspection.session_ids(broker), inspection.session_info(broker, client_id),
            inspection.sessions(broker), inspection.held_messages(broker, client_id),
            inspection.subscription_count(broker), inspection.index_sizes(broker),
            dict(inspection.shared_groups(broker)), inspection.matching_clients(broker, "t"),
            inspection.connection_count(broker), inspection.connections(broker),
            inspection.connection_info(broker, client_id))


def test_unknown_client() -> None:
    broker, _ = make_broker()
    assert inspection.session_ids(broker) == frozenset()
    assert inspection.session_info(broker, "nobody") is None
    assert inspection.held_messages(broker, "nobody") == ()
    assert inspection.connection_info(broker, "nobody") is None
    assert inspection.sessions(broker) == ()


def test_session_settings_subscriptions_will_and_identity() -> None:
    """What CONNECT and SUBSCRIBE set up is reported as set."""
    broker, _ = make_broker()
    c = FakeClient(broker, 5)
    c.connect("s", clean=False, will=Will("w/s", b"bye", 1, False, {P.WILL_DELAY_INTERVAL: 5}),
              username="alice", properties={P.SESSION_EXPIRY_INTERVAL: 60})
    c.subscribe("a/+", qos=1, no_local=True, retain_as_published=True, retain_handling=2)
    c.subscribe("b/#", qos=2)
    info = inspection.session_info(broker, "s")
    assert info is not None
    assert (info.client_id, info.online, info.persistent, info.expiry_interval) == (
        "s", True, True, 60)
    assert dict(info.subscriptions) == {"a/+": SubscriptionInfo(1, True, True, 2, None),
                                        "b/#": SubscriptionInfo(2)}
    assert (info.will_topic, info.will_delay, info.will_pending) == ("w/s", 5, False)
    assert (info.identity, info.disconnected_at, info.expiry_pending) == ("alice", None, False)
    assert inspection.session_ids(broker) == {"s"}
    assert inspection.sessions(broker) == (info,)


def test_offline_session_timers() -> None:
    """Offline: the delayed will and the expiry timer are pending; then the session goes."""
    broker, clock = make_broker()
    c = FakeClient(broker, 5)
    c.connect("s", clean=False, will=Will("w", b"x", 0, False, {P.WILL_DELAY_INTERVAL: 5}),
              properties={P.SESSION_EXPIRY_INTERVAL: 10})
    clock.advance(3)
    c.drop()
    info = inspection.session_info(broker, "s")
    assert info is not None
    assert (info.online, info.disconnected_at, info.will_pending, info.expiry_pending) == (
        False, 3, True, True)
    assert info.will_topic is None  # it left the session for its timer
    clock.advance(5)
    info = inspection.session_info(broker, "s")
    assert info is not None and (info.will_pending, info.expiry_pending) == (False, True)
    clock.advance(5)
    assert inspection.session_info(broker, "s") is None


def test_inflight_queued_and_dropped() -> None:
    """In-flight packet ids in order, the PUBREC'd ones, the queue, and drops."""
    broker, _ = make_broker(BrokerSettings(max_inflight=2, max_queued=2))
    sub = FakeClient(broker)
    sub.connect("s")
    sub.subscribe("t", qos=2)
    pub = FakeClient(broker)
    pub.connect("p")
    for n in range(5):
        pub.publish("t", b"%d" % n, 2, packet_id=10 + n)
        pub.send(PubRel(10 + n))
    first, second = publishes(sub.received())
    sub.send(PubRec(second.packet_id))
    info = inspection.session_info(broker, "s")
    assert info is not None
    assert info.inflight_ids == (first.packet_id, second.packet_id)
    assert info.inflight == 2
    assert info.awaiting_pubcomp == {second.packet_id}
    assert (info.queued, info.dropped) == (2, 1)
    assert inspection.held_messages(broker, "s") == (
        HeldMessage("t", b"0", 2, False, first.packet_id, False, None),
        HeldMessage("t", b"1", 2, False, second.packet_id, True, None),
        HeldMessage("t", b"3", 2, False, None, False, None),
        HeldMessage("t", b"4", 2, False, None, False, None))


def test_inbound_qos2_ids() -> None:
    """A publisher's QoS 2 ids are held from PUBLISH until PUBREL."""
    broker, _ = make_broker()
    pub = FakeClient(broker)
    pub.connect("p")
    pub.publish("t", b"x", 2, packet_id=7)
    pub.publish("t", b"y", 2, packet_id=9)
    assert inspection.session_info(broker, "p").inbound_qos2 == {7, 9}  # type: ignore[union-attr]


def test_index_shared_groups_and_matching() -> None:
    """Counts, share groups and matches follow subscribes and unsubscribes."""
    broker, _ = make_broker()
    a, b = FakeClient(broker, 5), FakeClient(broker, 5)
    a.connect("a")
    b.connect("b")
    a.send(Subscribe(a.pid(), [Subscription("t/+", 1)], {P.SUBSCRIPTION_IDENTIFIER: 3}))
    a.subscribe("t/#", qos=2, no_local=True)
    b.subscribe("t/x", qos=0)
    a.subscribe("$share/g/t/#", qos=1)
    b.subscribe("$share/g/t/#", qos=1)
    assert inspection.subscription_count(broker) == 5
    assert inspection.index_sizes(broker) == inspection.IndexSizes(5, 3, 1, 1)
    assert inspection.shared_groups(broker) == {"$share/g/t/#": {"a", "b"}}
    assert set(inspection.matching_clients(broker, "t/x")) == {
        Match("a", 2, False, (3,)), Match("b", 0, False, None)}
    assert set(inspection.matching_clients(broker, "t/x", sender="a")) == {
        Match("a", 1, False, (3,)), Match("b", 0, False, None)}  # its no-local one left out
    a.unsubscribe("$share/g/t/#", "t/#", "t/+")
    b.unsubscribe("$share/g/t/#", "t/x")
    assert inspection.index_sizes(broker) == inspection.IndexSizes(0, 0, 0, 0)
    assert inspection.shared_groups(broker) == {}


def test_connections() -> None:
    """Connections before and after CONNECT, paused, throttled, taken over, gone."""
    broker, _ = make_broker()
    fresh = FakeClient(broker, peer="10.0.0.1")
    info = inspection.connection_info(broker, fresh.connection)
    assert info is not None
    assert (info.client_id, info.peer, info.state, info.attached, info.virtual) == (
        None, "10.0.0.1", "awaiting-connect", False, False)
    sub = FakeClient(broker, 5)
    sub.connect("sub", keep_alive=30)
    sub.subscribe("t")
    pub = FakeClient(broker)
    pub.connect("pub")
    assert inspection.connection_count(broker) == 3
    sub.connection.pauseWriting()
    pub.publish("t", b"x")  # held back: sub is full
    held = inspection.connection_info(broker, "sub")
    assert held is not None
    assert (held.version, held.keep_alive, held.state, held.attached) == (5, 30, "connected",
                                                                          True)
    assert (held.paused, held.congested, held.throttled) == (True, True, False)
    assert inspection.connection_info(broker, "pub").throttled  # type: ignore[union-attr]
    again = FakeClient(broker, 5)
    again.connect("sub")
    assert inspection.connection_info(broker, sub.connection) is None  # taken over: closed
    assert inspection.connection_info(broker, again.connection).attached  # type: ignore[union-attr]
    assert {c.client_id for c in inspection.connections(broker)} == {None, "sub", "pub"}


def test_virtual_connection() -> None:
    """An adapter's session has a virtual connection: reported, though not tracked."""
    broker, _ = make_broker()

    class Sink:
        def deliver(self, message: Message, qos: int) -> bool:
            return True

    Gateway(broker).openSession("http-1", Sink())
    info = inspection.connection_info(broker, "http-1")
    assert info is not None and (info.virtual, info.attached, info.throttled) == (
        True, True, False)
    assert inspection.connections(broker) == ()


def test_read_only() -> None:
    """Asking changes nothing: answers are equal twice over, timers and deliveries are
    as they would be, and a snapshot does not follow the broker."""
    broker, clock = make_broker(BrokerSettings(max_inflight=1))
    sub = FakeClient(broker, 5)
    sub.connect("s", clean=False, properties={P.SESSION_EXPIRY_INTERVAL: 10})
    sub.subscribe("t", qos=1)
    pub = FakeClient(broker)
    pub.connect("p")
    pub.publish("t", b"0", 1)
    pub.publish("t", b"1", 1)
    calls = len(clock.getDelayedCalls())
    before = everything(broker, "s")
    assert everything(broker, "s") == before
    assert len(clock.getDelayedCalls()) == calls
    [first] = publishes(sub.received())
    assert [(p.payload, p.packet_id) for p in publishes(sub.ack(first))] == [(b"1", 2)]
    assert before[1].inflight_ids == (1,) and before[1].queued == 1
    assert inspection.session_info(broker, "s").inflight_ids == (2,)  # type: ignore[union-attr]
