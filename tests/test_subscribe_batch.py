"""SUBSCRIBE handled a packet at a time (issue 19): one pass over the filters, one
change to the index, the session and the store.  Every test runs on both codec
implementations (tests/codecimpl.py): the compiled one decodes SUBSCRIBE itself."""

from __future__ import annotations

import random
from typing import Any

from mqtt_twisted.codec import Publish, SubAck, Subscribe, Subscription, encode
from mqtt_twisted.constants import PropertyId
from mqtt_twisted.constants import ReasonCode as RC
from mqtt_twisted.core.grant import check_filter, check_filters
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.message import Message
from mqtt_twisted.store.memory import MemoryStore
from mqtt_twisted.store.overlay import SysRetainedOverlay
from mqtt_twisted.testing import FakeClient, make_broker
from tests.codecimpl import codec_impl  # noqa: F401  (both implementations)


def publishes(packets: list[Any]) -> list[Publish]:
    return [p for p in packets if isinstance(p, Publish)]


class DenySecret:
    """An authorizer that refuses subscriptions under ``secret/``."""

    def authenticate(self, credentials: Any) -> Any:
        return None

    def mayPublish(self, identity: Any, clientId: str | None, topic: str) -> bool:
        return True

    def maySubscribe(self, identity: Any, clientId: str | None, topicFilter: str) -> bool:
        return not topicFilter.startswith("secret/")


# --- the filter checks ----------------------------------------------------------------


def test_check_filters_is_check_filter() -> None:
    """The batch check (a regular expression for the usual filter) gives exactly
    check_filter's answer for random filters, under every switch and tight limits."""
    rng = random.Random(19)
    parts = ["a", "bb", "+", "#", "/", "/", "$share/", "$SYS", "\x00", "é", "+x", "#/", "$"]
    variants = [
        BrokerSettings(),
        BrokerSettings(wildcard_subscriptions=False),
        BrokerSettings(shared_subscriptions=False),
        BrokerSettings(subscription_identifiers=False),
        BrokerSettings(max_topic_levels=3, max_topic_length=12),
    ]
    filters = ["", "#", "+", "/", "a/#", "#/a", "a/+/b", "a+/b", "$share/g/a/#", "$share//a",
               "$share/g", "$share/g/", "$share/g+/a", "x" * 5000, "a\nb", "\n", "a/\n/#", "$share", "a/$share/b", "+/+/+",
               "a/+/+/+/b", "/#", "+/#", "a/++/b", "a/#/", "#+", "+#", "a/b#", "$SYS/#"]
    filters += ["".join(rng.choice(parts) for _ in range(rng.randint(1, 8)))
                for _ in range(3000)]
    valid = [f for f in filters if check_filter(BrokerSettings(), f) == (0, None)]
    for settings in variants:
        for sub_id in (None, 7):
            want = [check_filter(settings, f, sub_id) for f in filters]
            assert check_filters(settings, filters, sub_id) == want, (settings, sub_id)
            # Packets of a few: some all valid (one match for all), some not.
            for group in (filters, valid):
                for k in range(0, 600, 3):
                    packet = group[k:k + 3]
                    assert check_filters(settings, packet, sub_id) == [
                        check_filter(settings, f, sub_id) for f in packet], packet
    assert len(valid) > 300


def test_topic_tree_matches_the_reference() -> None:
    """The tree (dictionaries and leaves) after random adds, batch adds and removes
    matches exactly what topic_matches says of every filter it holds, and holds what
    was added (get, items, len)."""
    from mqtt_twisted.codec.topics import topic_matches
    from mqtt_twisted.core.topic_tree import TopicTree

    rng = random.Random(7)
    words = ["a", "b", "", "$x"]
    for _ in range(40):
        tree: TopicTree[int] = TopicTree()
        held: dict[tuple[str, str], int] = {}

        def some_filter() -> str:
            levels = [rng.choice([*words, "+"]) for _ in range(rng.randint(1, 4))]
            if rng.random() < 0.3:
                levels[-1] = "#"
            return "/".join(levels)

        for step in range(120):
            owner = rng.choice("xyz")
            if rng.random() < 0.35 and held:
                f, o = rng.choice(sorted(held))
                assert tree.remove(f, o) == held.pop((f, o))
            elif rng.random() < 0.5:
                items = [(some_filter(), step * 10 + i) for i in range(rng.randint(1, 4))]
                new = {f for f, _ in items if (f, owner) not in held}
                assert tree.add_many(owner, items) == len(new)
                for f, v in items:
                    held[(f, owner)] = v
            else:
                f = some_filter()
                assert tree.add(f, owner, step) == ((f, owner) not in held)
                held[(f, owner)] = step
            assert tree.remove(some_filter() + "/zz", "nobody") is None
            for topic in ("a", "a/b", "$x/a", "b//a", "", "a/b/a/b", "$x"):
                want = sorted((o, v) for (f, o), v in held.items() if topic_matches(f, topic))
                assert sorted(tree.match(topic)) == want, (topic, held)
        assert len(tree) == len(held)
        assert sorted(tree.items()) == sorted((f, o, v) for (f, o), v in held.items())
        assert all(tree.get(f, o) == v for (f, o), v in held.items())


# --- one SUBSCRIBE, mixed answers ------------------------------------------------------


def test_mixed_filters_in_one_subscribe_v5() -> None:
    """One v5 SUBSCRIBE of granted, invalid, denied, unsupported and over-quota
    filters gets one code per filter, in order; only the granted ones are indexed."""
    broker, _ = make_broker(BrokerSettings(max_subscriptions=4, maximum_qos=1,
                                           wildcard_subscriptions=True,
                                           shared_subscriptions=False),
                            authorizer=DenySecret())
    c = FakeClient(broker, 5)
    c.connect("mixed")
    ack = c.subscribe("a/+", "a/#/b", "secret/x", "$share/g/t", "b", "c/#", "d", "e",
                      qos=2)[0]
    assert isinstance(ack, SubAck)
    assert ack.reason_codes == [1, RC.TOPIC_FILTER_INVALID, RC.NOT_AUTHORIZED,
                                RC.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED, 1, 1, 1,
                                RC.QUOTA_EXCEEDED]
    session = broker.sessions["mixed"]
    assert sorted(session.subscriptions) == ["a/+", "b", "c/#", "d"]
    assert sorted(f for f, _, _ in broker.tree.items()) == ["a/+", "b", "c/#", "d"]
    assert all(o.qos == 1 for o in session.subscriptions.values())
    assert broker.stats.limit_hits["subscriptions"] == 1


def test_mixed_filters_in_one_subscribe_v3() -> None:
    """The same packet from a 3.1.1 client: 0x80 for every refusal."""
    broker, _ = make_broker(BrokerSettings(max_subscriptions=2), authorizer=DenySecret())
    c = FakeClient(broker, 4)
    c.connect("v3")
    ack = c.subscribe("a/#/b", "x", "secret/y", "y/+", "z", qos=1)[0]
    assert ack.reason_codes == [0x80, 1, 0x80, 1, 0x80]
    assert sorted(broker.sessions["v3"].subscriptions) == ["x", "y/+"]


def test_quota_counts_replacements_in_the_packet() -> None:
    """Against the subscription limit, a filter the session holds (or one earlier in
    the same packet) replaces rather than adds."""
    broker, _ = make_broker(BrokerSettings(max_subscriptions=3))
    c = FakeClient(broker, 5)
    c.connect("q")
    assert c.subscribe("a", "b")[0].reason_codes == [0, 0]
    assert c.subscribe("a", "c", "c", "a", "d", qos=1)[0].reason_codes == [
        1, 1, 1, 1, RC.QUOTA_EXCEEDED]
    assert sorted(broker.sessions["q"].subscriptions) == ["a", "b", "c"]


def test_repeated_filter_last_options_win() -> None:
    """A filter twice in one SUBSCRIBE: both granted, the second's options held
    [MQTT-3.8.4-3]; a publish is delivered once, at that QoS."""
    broker, _ = make_broker()
    sub, pub = FakeClient(broker, 5), FakeClient(broker, 5)
    sub.connect("s")
    pub.connect("p")
    sub.send(Subscribe(1, [Subscription("t", 2), Subscription("t", 1, no_local=True)]))
    assert sub.received()[0].reason_codes == [2, 1]
    options = broker.sessions["s"].subscriptions["t"]
    assert (options.qos, options.no_local) == (1, True)
    assert len(broker.tree) == 1
    pub.publish("t", b"m", qos=2)
    got = publishes(sub.received())
    assert [(m.topic, m.qos) for m in got] == [("t", 1)]


def test_subscription_identifier_and_shared_in_one_packet() -> None:
    """The packet's subscription identifier goes with each of its filters, plain and
    shared; messages on each carry it."""
    broker, _ = make_broker()
    sub, pub = FakeClient(broker, 5), FakeClient(broker, 5)
    sub.connect("s")
    pub.connect("p")
    sub.send(Subscribe(1, [Subscription("a/#"), Subscription("$share/g/b")],
                       {PropertyId.SUBSCRIPTION_IDENTIFIER: 42}))
    assert sub.received()[0].reason_codes == [0, 0]
    pub.publish("a/1", b"x")
    pub.publish("b", b"y")
    got = publishes(sub.received())
    assert [(m.topic, m.properties.get(PropertyId.SUBSCRIPTION_IDENTIFIER)) for m in got] == [
        ("a/1", [42]), ("b", [42])]


def test_shared_no_local_is_a_protocol_error_and_nothing_is_added() -> None:
    """No Local on a shared filter closes the connection [MQTT-3.8.3-4]; the filters
    before it in the packet are not added either (the packet is refused whole)."""
    broker, _ = make_broker()
    c = FakeClient(broker, 5)
    c.connect("nl", clean=False, properties={PropertyId.SESSION_EXPIRY_INTERVAL: 600})
    c.send(Subscribe(1, [Subscription("a"), Subscription("$share/g/a", no_local=True)]))
    assert c.transport.closed
    assert "nl" in broker.sessions  # kept: it outlives its connection
    assert dict(broker.sessions["nl"].subscriptions) == {}
    assert len(broker.tree) == 0


def test_one_store_write_per_subscribe_of_a_persistent_session() -> None:
    """A persistent session's 100 new filters are one addSubscriptions call, held
    by the store; a store without it, or whose own addSubscription the memory store's
    addSubscriptions would skip, gets addSubscription per filter."""
    calls: list[tuple[str, int]] = []

    class Counting(MemoryStore):
        def addSubscriptions(self, clientId: str, subscriptions: dict) -> Any:
            calls.append(("many", len(subscriptions)))
            return super().addSubscriptions(clientId, subscriptions)

    broker, _ = make_broker(store=SysRetainedOverlay(Counting(None)))
    c = FakeClient(broker, 4)
    c.connect("p", clean=False)
    filters = [f"f/{i}" for i in range(100)]
    assert c.subscribe(*filters, qos=1)[0].reason_codes == [1] * 100
    assert calls == [("many", 100)]
    stored = broker.store.store._sessions["p"]
    assert sorted(stored.subscriptions) == sorted(filters)

    class OneByOne(MemoryStore):
        addSubscriptions = None  # type: ignore[assignment]

        def addSubscription(self, clientId: str, topicFilter: str, options: Any) -> Any:
            calls.append(("one", 1))
            return super().addSubscription(clientId, topicFilter, options)

    class OwnOne(OneByOne):
        addSubscriptions = MemoryStore.addSubscriptions  # inherited, its own addSubscription

    for store in (OneByOne, OwnOne):
        calls.clear()
        broker, _ = make_broker(store=store(None))
        c = FakeClient(broker, 4)
        c.connect("p", clean=False)
        assert c.subscribe("x", "y")[0].reason_codes == [0, 0]
        assert calls == [("one", 1), ("one", 1)], store  # the subclass's own each time
        assert sorted(broker.store._sessions["p"].subscriptions) == ["x", "y"]


# --- retained messages -------------------------------------------------------------------


def test_no_retained_search_while_the_store_holds_none() -> None:
    """With no retained message held, a SUBSCRIBE's filters are not searched one by
    one; once one is held, each granted filter is (retain handling permitting)."""
    searched: list[str] = []

    class Spy(MemoryStore):
        def iterRetained(self, topicFilter: str) -> Any:
            searched.append(topicFilter)
            return super().iterRetained(topicFilter)

    broker, _ = make_broker(store=SysRetainedOverlay(Spy(None)))
    c = FakeClient(broker, 5)
    c.connect("r")
    c.subscribe("a", "b/+", "c/#")
    assert searched == []
    broker.route(Message("b/1", b"kept", 0, True))
    c.subscribe("b/+", "d", retain_handling=1)  # b/+ is not new: not searched
    assert searched == ["d"]
    got = c.subscribe("x/#", "b/+", "e")
    assert [p.topic for p in publishes(got)] == ["b/1"]
    assert searched == ["d", "x/#", "b/+", "e"]


def test_retained_per_filter_with_retain_handling() -> None:
    """Retained messages follow the SUBACK for each granted plain filter that asks:
    retain handling 0 always, 1 only when new, 2 never; none for a shared filter."""
    broker, _ = make_broker()
    pub = FakeClient(broker, 5)
    pub.connect("p")
    pub.publish("r/1", b"one", retain=True)
    pub.publish("s/1", b"two", retain=True)
    c = FakeClient(broker, 5)
    c.connect("c")
    c.send(Subscribe(1, [Subscription("r/#", retain_handling=1),
                         Subscription("s/#", retain_handling=2),
                         Subscription("$share/g/r/#")]))
    got = c.received()
    assert isinstance(got[0], SubAck) and got[0].reason_codes == [0, 0, 0]
    assert [(p.topic, p.retain) for p in publishes(got)] == [("r/1", True)]
    c.send(Subscribe(2, [Subscription("r/#", retain_handling=1),
                         Subscription("s/#", retain_handling=0)]))
    assert [p.topic for p in publishes(c.received())] == ["s/1"]


def test_sys_retained_found_when_only_they_are_held() -> None:
    """$SYS retained messages live apart (the overlay): a $SYS filter still finds them
    while the store proper holds none."""
    broker, _ = make_broker(store=SysRetainedOverlay(MemoryStore(None)))
    broker.route(Message("$SYS/broker/version", b"v", 0, True))
    c = FakeClient(broker, 4)
    c.connect("c")
    assert [p.topic for p in publishes(c.subscribe("$SYS/#", "#"))] == ["$SYS/broker/version"]


def test_subscribe_bytes_on_the_wire_decode_alike() -> None:
    """A SUBSCRIBE of 100 filters as bytes: the same SUBACK under both codecs."""
    broker, _ = make_broker()
    c = FakeClient(broker, 5)
    c.connect("w")
    packet = Subscribe(9, [Subscription(f"w/{i}/+", i % 3, bool(i % 2), bool(i % 5),
                                        i % 3) for i in range(100)])
    c.connection.dataReceived(encode(packet, 5))
    ack = c.received()[0]
    assert ack.packet_id == 9 and ack.reason_codes == [i % 3 for i in range(100)]
    held = broker.sessions["w"].subscriptions
    assert [(o.qos, o.no_local, o.retain_as_published, o.retain_handling)
            for o in held.values()] == [(i % 3, bool(i % 2), bool(i % 5), i % 3)
                                        for i in range(100)]
