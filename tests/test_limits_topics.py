"""Sans-IO tests of the limits on what clients make the broker hold: topic levels and
length, subscriptions per session, retained messages (issue 14, docs/limits.md)."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from mqtt_twisted.codec import ConnAck, Disconnect, PubAck, Publish, Will
from mqtt_twisted.constants import ReasonCode as RC
from mqtt_twisted.core import inspection
from mqtt_twisted.core.limits import RetainedQuota, retained_cost, short_topic, topic_refusal
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.errors import InvalidTopicName, QuotaExceeded
from mqtt_twisted.gateway import Gateway
from mqtt_twisted.message import Message
from mqtt_twisted.testing import FakeClient, make_broker


def deep(levels: int, prefix: str = "a") -> str:
    return "/".join([prefix] + ["x"] * (levels - 1))


def publishes(packets: list) -> list[Publish]:
    return [p for p in packets if isinstance(p, Publish)]


def test_defaults() -> None:
    """128 levels (EMQX; Mosquitto 200), 4 KiB topics, 1,000 subscriptions per session,
    1,000,000 retained messages or 512 MiB of them."""
    s = BrokerSettings()
    assert (s.max_topic_levels, s.max_topic_length, s.max_subscriptions) == (128, 4096, 1000)
    assert (s.max_retained_messages, s.max_retained_bytes) == (1_000_000, 512 << 20)
    assert (s.max_retained_per_client, s.max_retained_bytes_per_client) == (100_000, 128 << 20)


def test_topic_refusal_counts_levels_and_utf8_bytes() -> None:
    """128 levels pass, 129 do not; the length is in UTF-8 bytes, not characters."""
    s = BrokerSettings()
    assert topic_refusal(s, deep(128)) is None
    assert "129 topic levels" in topic_refusal(s, deep(129))  # type: ignore[operator]
    assert topic_refusal(s, "é" * 2048) is None  # 4096 bytes
    assert "4098 bytes" in topic_refusal(s, "é" * 2049)  # type: ignore[operator]
    assert short_topic(s) == 127


def test_v5_publish_to_a_deep_topic_is_disconnect_0x90() -> None:
    """A PUBLISH of 129 levels is refused (DISCONNECT 0x90) and not routed nor retained."""
    broker, _ = make_broker()
    sub, pub = FakeClient(broker, 5), FakeClient(broker, 5)
    sub.connect("s")
    sub.subscribe("#")
    pub.connect("p")
    out = pub.publish(deep(129), b"x", retain=True)
    assert isinstance(out[-1], Disconnect) and out[-1].reason_code == RC.TOPIC_NAME_INVALID
    assert publishes(sub.received()) == []
    assert broker.retained_quota.count == 0


def test_v3_publish_to_a_long_topic_closes() -> None:
    """v3 has no DISCONNECT from the server: a topic over 4 KiB closes the connection."""
    broker, _ = make_broker()
    pub = FakeClient(broker, 4)
    pub.connect("p")
    pub.publish("t/" + "x" * 4095)
    assert pub.transport.closed


def test_topics_within_the_limits_still_flow() -> None:
    """128 levels and 4,096 bytes are delivered as before."""
    broker, _ = make_broker()
    sub, pub = FakeClient(broker, 4), FakeClient(broker, 4)
    sub.connect("s")
    sub.subscribe("#")
    pub.connect("p")
    pub.publish(deep(128), b"1")
    pub.publish("x" * 4096, b"2")
    assert [p.payload for p in publishes(sub.received())] == [b"1", b"2"]


def test_deep_filters_are_refused_in_suback() -> None:
    """A filter over the limits gets SUBACK 0x8F (v5) / 0x80 (v3); the others are granted."""
    broker, _ = make_broker()
    c5, c3 = FakeClient(broker, 5), FakeClient(broker, 4)
    c5.connect("c5")
    c3.connect("c3")
    assert c5.subscribe(deep(129, "+"), "ok/#")[0].reason_codes == [RC.TOPIC_FILTER_INVALID, 0]
    assert c3.subscribe("x" * 4097)[0].reason_codes == [0x80]
    assert inspection.subscription_count(broker) == 1


def test_shared_filters_count_their_whole_length() -> None:
    """$share/g/ plus a filter is limited as a whole."""
    broker, _ = make_broker(BrokerSettings(max_topic_levels=4))
    c = FakeClient(broker, 5)
    c.connect("c")
    assert c.subscribe("$share/g/a/b", "$share/g/a/b/c")[0].reason_codes == [
        0, RC.TOPIC_FILTER_INVALID]


def test_will_topic_over_the_limits_refuses_connect() -> None:
    """v5: CONNACK 0x90; v3: the connection closes without CONNACK."""
    broker, _ = make_broker()
    c5 = FakeClient(broker, 5)
    ack = c5.connect("w5", will=Will(deep(129), b"bye"))[0]
    assert isinstance(ack, ConnAck) and ack.reason_code == RC.TOPIC_NAME_INVALID
    c3 = FakeClient(broker, 4)
    assert c3.connect("w3", will=Will(deep(129), b"bye")) == []
    assert c3.transport.closed


def test_subscriptions_per_session_are_limited() -> None:
    """The 4th filter of a 3-subscription session gets 0x97 (v3: 0x80); replacing one
    it holds and new ones after an UNSUBSCRIBE are granted."""
    broker, _ = make_broker(BrokerSettings(max_subscriptions=3))
    c = FakeClient(broker, 5)
    c.connect("c")
    assert c.subscribe("a", "b", "c", "d")[0].reason_codes == [0, 0, 0, RC.QUOTA_EXCEEDED]
    assert c.subscribe("a", qos=1)[0].reason_codes == [1]
    c.unsubscribe("b")
    assert c.subscribe("d")[0].reason_codes == [0]
    v3 = FakeClient(broker, 4)
    v3.connect("v3")
    assert v3.subscribe("a", "b", "c", "d")[0].reason_codes == [0, 0, 0, 0x80]


def test_retained_count_quota_v5_puback_0x97() -> None:
    """Beyond the retained quota a v5 QoS 1 PUBLISH gets PUBACK 0x97 and is neither
    retained nor routed; replacing and deleting retained messages still work."""
    broker, _ = make_broker(BrokerSettings(max_retained_messages=2))
    sub, pub = FakeClient(broker, 5), FakeClient(broker, 5)
    sub.connect("s")
    sub.subscribe("r/#")
    pub.connect("p")
    assert pub.publish("r/1", b"a", qos=1, retain=True)[0].reason_code == 0
    assert pub.publish("r/2", b"b", qos=1, retain=True)[0].reason_code == 0
    refused = pub.publish("r/3", b"c", qos=1, retain=True)
    assert isinstance(refused[0], PubAck) and refused[0].reason_code == RC.QUOTA_EXCEEDED
    assert [p.topic for p in publishes(sub.received())] == ["r/1", "r/2"]
    assert pub.publish("r/2", b"B", qos=1, retain=True)[0].reason_code == 0  # replaces
    pub.publish("r/1", b"", retain=True)  # deletes
    assert pub.publish("r/3", b"c", qos=1, retain=True)[0].reason_code == 0
    assert (broker.retained_quota.count, broker.stats.limit_hits["retained"]) == (2, 1)
    assert broker.store.countRetained().result == 2


def test_retained_bytes_quota_v3_is_dropped() -> None:
    """v3 has no refusal: the PUBLISH is acknowledged and dropped, the client stays."""
    broker, _ = make_broker(BrokerSettings(max_retained_bytes=retained_cost("t", bytes(100))))
    pub = FakeClient(broker, 4)
    pub.connect("p")
    assert pub.publish("t", bytes(100), qos=1, retain=True) == [PubAck(1)]
    assert pub.publish("u", bytes(1), qos=1, retain=True) == [PubAck(2)]
    assert not pub.transport.closed
    assert broker.store.countRetained().result == 1
    assert broker.stats.limit_hits["retained"] == 1


def test_v5_qos0_retained_over_quota_is_dropped_without_disconnect() -> None:
    """A quota is not a protocol violation: v5 QoS 0 is dropped, the client stays."""
    broker, _ = make_broker(BrokerSettings(max_retained_messages=1))
    pub = FakeClient(broker, 5)
    pub.connect("p")
    assert pub.publish("s", b"x", retain=True) == []
    assert pub.publish("t", b"x", retain=True) == []
    assert not pub.transport.closed
    assert broker.store.countRetained().result == 1


def test_zero_means_no_limit() -> None:
    """0 turns the count and byte limits off, as --max-connections 0 does."""
    s = BrokerSettings(max_retained_messages=0, max_retained_bytes=0, max_subscriptions=0)
    broker, _ = make_broker(s)
    c = FakeClient(broker, 5)
    c.connect("c")
    assert c.subscribe(*[f"f/{i}" for i in range(1500)])[0].reason_codes == [0] * 1500
    for i in range(3):
        assert c.publish(f"r/{i}", bytes(1000), qos=1, retain=True)[0].reason_code < 0x80


def test_retained_quota_accounting() -> None:
    """Replacing counts the difference, deleting frees, forgetting (expiry) frees; a
    message over a limit is refused and counts nothing."""
    quota = RetainedQuota(BrokerSettings(max_retained_messages=2))
    assert quota.admit(Message("a/b", b"12345", 0, True))
    assert (quota.count, quota.bytes) == (1, retained_cost("a/b", b"12345"))
    assert quota.admit(Message("a/b", b"1", 0, True))
    assert (quota.count, quota.bytes) == (1, retained_cost("a/b", b"1"))
    assert quota.admit(Message("a/b", b"", 0, True))
    assert (quota.count, quota.bytes) == (0, 0)
    assert quota.admit(Message("c", b"1", 0, True))
    assert quota.admit(Message("d", b"1", 0, True))
    assert not quota.allows("e", b"1")
    assert not quota.admit(Message("e", b"1", 0, True))
    assert (quota.count, set(quota.sizes)) == (2, {"c", "d"})
    assert quota.admit(Message("d", b"22", 0, True))  # a replacement is no new message
    quota.forget("c")
    quota.forget("d")
    assert (quota.count, quota.bytes, quota.sizes) == (0, 0, {})


def test_one_client_cannot_take_the_whole_retained_quota() -> None:
    """Past its own share a client's retained PUBLISH gets PUBACK 0x97 (and is not
    routed) while another client still retains; replacing its own message is no new
    one, and a message it set that someone else deletes no longer counts to it."""
    broker, _ = make_broker(BrokerSettings(max_retained_per_client=2))
    sub, hog, other = FakeClient(broker, 5), FakeClient(broker, 5), FakeClient(broker, 5)
    sub.connect("s")
    sub.subscribe("r/#")
    hog.connect("hog")
    other.connect("other")
    assert hog.publish("r/1", b"a", qos=1, retain=True)[0].reason_code == 0
    assert hog.publish("r/2", b"b", qos=1, retain=True)[0].reason_code == 0
    refused = hog.publish("r/3", b"c", qos=1, retain=True)
    assert isinstance(refused[0], PubAck) and refused[0].reason_code == RC.QUOTA_EXCEEDED
    assert not hog.transport.closed
    assert other.publish("r/3", b"c", qos=1, retain=True)[0].reason_code == 0
    assert hog.publish("r/2", b"B", qos=1, retain=True)[0].reason_code == 0  # its own
    assert hog.publish("r/3", b"C", qos=1, retain=True)[0].reason_code == RC.QUOTA_EXCEEDED
    other.publish("r/1", b"", retain=True)  # deletes hog's r/1: it counts no more
    assert hog.publish("r/3", b"C", qos=1, retain=True)[0].reason_code == 0  # takes r/3
    assert [p.topic for p in publishes(sub.received())] == ["r/1", "r/2", "r/3", "r/2",
                                                              "r/1", "r/3"]
    quota = broker.retained_quota
    assert (quota.held_by("hog"), quota.held_by("other")[0]) == (
        (2, retained_cost("r/2", b"B") + retained_cost("r/3", b"C")), 0)
    assert broker.stats.limit_hits["retained"] == 2
    assert broker.store.countRetained().result == 2


def test_per_client_retained_bytes() -> None:
    """The bytes a client's retained messages cost are bounded too (v3: dropped)."""
    broker, _ = make_broker(BrokerSettings(
        max_retained_bytes_per_client=retained_cost("t", bytes(100))))
    hog, other = FakeClient(broker, 4), FakeClient(broker, 4)
    hog.connect("hog")
    other.connect("other")
    assert hog.publish("t", bytes(100), qos=1, retain=True) == [PubAck(1)]
    assert hog.publish("u", bytes(1), qos=1, retain=True) == [PubAck(2)]  # dropped
    assert other.publish("u", bytes(100), qos=1, retain=True) == [PubAck(1)]
    assert broker.store.countRetained().result == 2
    assert broker.stats.limit_hits["retained"] == 1


def test_per_client_accounting_keeps_nothing_for_a_client_that_holds_nothing() -> None:
    """Deleting or expiring a client's last retained message drops its entry; a message
    without a sender (the broker's own, a restored one) counts to nobody."""
    quota = RetainedQuota(BrokerSettings(max_retained_per_client=1))
    assert quota.admit(Message("a", b"1", 0, True, sender="c1"))
    assert not quota.allows("b", b"1", "c1") and quota.allows("b", b"1", "c2")
    assert not quota.admit(Message("b", b"1", 0, True, sender="c1"))
    assert quota.admit(Message("a", b"22", 0, True, sender="c1"))  # a replacement
    assert quota.admit(Message("b", b"1", 0, True))  # nobody's
    assert quota.held_by("c1") == (1, retained_cost("a", b"22"))
    quota.forget("a")
    assert (quota.clients, quota.owners) == ({}, {})
    assert quota.admit(Message("b", b"1", 0, True, sender="c2"))
    assert quota.admit(Message("b", b"", 0, True, sender="c3"))  # c3 deletes c2's
    assert (quota.clients, quota.owners, quota.count, quota.bytes) == ({}, {}, 0, 0)


def test_per_client_zero_means_no_limit() -> None:
    quota = RetainedQuota(BrokerSettings(max_retained_per_client=0,
                                         max_retained_bytes_per_client=0))
    for i in range(5):
        assert quota.admit(Message(f"t/{i}", bytes(1000), 0, True, sender="c"))
    assert quota.held_by("c") == (5, 5 * retained_cost("t/0", bytes(1000)))


class GatewayLimitTests(TestCase):
    """The same limits hold for adapters (HTTP, CoAP) through the gateway."""

    def setUp(self) -> None:
        self.broker, _ = make_broker(BrokerSettings(max_subscriptions=1,
                                                    max_retained_messages=1))
        self.gateway = Gateway(self.broker)

    def test_deep_topic_publish_fails(self) -> None:
        """A topic over the limits fails with InvalidTopicName (HTTP 400)."""
        failure = self.failureResultOf(self.gateway.publish(Message(deep(129), b"x", 0)))
        failure.trap(InvalidTopicName)

    def test_retained_over_quota_fails(self) -> None:
        """The second retained message fails with QuotaExceeded (0x97)."""
        self.successResultOf(self.gateway.publish(Message("a", b"x", 0, True)))
        failure = self.failureResultOf(self.gateway.publish(Message("b", b"x", 0, True)))
        failure.trap(QuotaExceeded)
        self.assertEqual(failure.value.reason_code, RC.QUOTA_EXCEEDED)

    def test_retained_over_a_clients_quota_fails(self) -> None:
        """An adapter's client (HTTP, CoAP) has its own share of the retained quota."""
        broker, _ = make_broker(BrokerSettings(max_retained_per_client=1))
        gateway = Gateway(broker)
        self.successResultOf(gateway.publish(Message("a", b"x", 0, True), clientId="h1"))
        failure = self.failureResultOf(
            gateway.publish(Message("b", b"x", 0, True), clientId="h1"))
        failure.trap(QuotaExceeded)
        self.successResultOf(gateway.publish(Message("b", b"x", 0, True), clientId="h2"))

    def test_subscription_quota(self) -> None:
        """An adapter session's second filter gets 0x97, a deep one 0x8F."""
        self.successResultOf(self.gateway.openSession("v", _Sink()))
        client_id = "v"
        self.assertEqual(self.successResultOf(self.gateway.subscribe(client_id, "a")), 0)
        self.assertEqual(self.successResultOf(self.gateway.subscribe(client_id, "b")),
                         RC.QUOTA_EXCEEDED)
        self.assertEqual(self.successResultOf(self.gateway.subscribe(client_id, deep(129))),
                         RC.TOPIC_FILTER_INVALID)


class _Sink:
    """A session sink that keeps what it is sent."""

    def __init__(self) -> None:
        self.messages: list = []

    def deliver(self, message: Message, qos: int) -> None:
        self.messages.append(message)


def test_sys_topics_are_outside_the_retained_quota() -> None:
    """A full quota does not stop the broker's own $SYS updates, nor count them."""
    from mqtt_twisted.core.systopics import SysTopics

    broker, _ = make_broker(BrokerSettings(max_retained_messages=1))
    pub = FakeClient(broker, 4)
    pub.connect("p")
    pub.publish("full", b"x", retain=True)
    SysTopics(broker).tick()
    assert broker.retained_quota.count == 1 and broker.stats.limit_hits["retained"] == 0
    assert broker.store.countRetained().result > 10
