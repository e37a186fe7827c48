"""End-to-end MQTT 5.0: PUBLISH features (issue 4, second section).

Topic aliases inbound and outbound, message expiry (live, queued for an offline
session, retained), payload format indicator and content type (and 0x99),
user properties in order and subscription identifiers, between paho-mqtt 2.x
MQTTv5 clients and a real broker on 127.0.0.1.
"""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks

from mqtt_twisted.codec import Disconnect, Publish, PubRec
from mqtt_twisted.constants import PropertyId as P
from mqtt_twisted.constants import ReasonCode as RC
from mqtt_twisted.core.settings import BrokerSettings

try:
    from tests.pahov5 import PacketTypes, V5TestCase, props
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from pahov5 import PacketTypes, V5TestCase, props  # type: ignore[no-redef]

END = "end"


class InboundTopicAliasTests(V5TestCase):
    """Topic aliases from a client: per connection, bounded by our maximum (10)."""

    @inlineCallbacks
    def test_alias_maps_later_publishes_to_topic(self):
        """An inbound alias maps later empty-topic PUBLISHes to its topic [MQTT-3.3.2-12]."""
        sub = yield self.paho5("ta-sub")
        yield sub.subscribe(("alias/a/very/long/topic/name", 1))
        pub = yield self.paho5("ta-pub")
        yield pub.publish("alias/a/very/long/topic/name", b"1", 1, properties={"TopicAlias": 3})
        yield pub.publish("", b"2", 1, properties={"TopicAlias": 3})
        yield pub.publish("", b"3", 0, properties={"TopicAlias": 3})
        got = yield sub.collect(3)
        self.assertEqual([(m.topic, m.wire_topic, m.payload) for m in got],
                         [("alias/a/very/long/topic/name",) * 2 + (b"%d" % i,)
                          for i in (1, 2, 3)])
        self.assertTrue(all(m.alias is None for m in got))

    @inlineCallbacks
    def test_alias_can_be_remapped(self):
        """Sending an alias with a new topic re-maps it."""
        sub = yield self.paho5("tr-sub")
        yield sub.subscribe(("remap/#", 1))
        pub = yield self.paho5("tr-pub")
        yield pub.publish("remap/one", b"a", 1, properties={"TopicAlias": 1})
        yield pub.publish("remap/two", b"b", 1, properties={"TopicAlias": 1})
        yield pub.publish("", b"c", 1, properties={"TopicAlias": 1})
        got = yield sub.collect(3)
        self.assertEqual([(m.topic, m.payload) for m in got],
                         [("remap/one", b"a"), ("remap/two", b"b"), ("remap/two", b"c")])

    @inlineCallbacks
    def test_aliases_do_not_survive_the_connection(self):
        """An alias from a previous connection is unknown: DISCONNECT 0x82 [MQTT-3.3.2-7]."""
        first = yield self.paho5("tc-pub")
        yield first.publish("carry/t", b"x", 1, properties={"TopicAlias": 2})
        yield first.disconnect()
        second = yield self.paho5("tc-pub")
        second.client.publish("", b"y", 0, False, props(PacketTypes.PUBLISH, TopicAlias=2))
        gone = yield second.disconnected
        self.assertEqual((gone.rc, gone.from_server), (RC.PROTOCOL_ERROR, True))

    @inlineCallbacks
    def test_alias_above_maximum_disconnects_0x94(self):
        """An alias above the topic alias maximum CONNACK gave (10) gets DISCONNECT 0x94."""
        client = yield self.paho5("tm-pub")
        self.assertEqual(client.connack.prop("TopicAliasMaximum"), 10)
        yield client.publish("max/t", b"ok", 1, properties={"TopicAlias": 10})
        client.client.publish("max/t", b"x", 0, False, props(PacketTypes.PUBLISH, TopicAlias=11))
        gone = yield client.disconnected
        self.assertEqual((gone.rc, gone.from_server), (RC.TOPIC_ALIAS_INVALID, True))


class OutboundTopicAliasLRUTests(V5TestCase):
    """BrokerSettings(outbound_topic_aliases="lru"): the least recently used alias is reused."""

    settings = BrokerSettings(outbound_topic_aliases="lru")

    @inlineCallbacks
    def test_lru_aliases_within_client_maximum(self):
        """lru: aliases stay within the client's maximum, LRU one reused [MQTT-3.3.2-11]."""
        sub = yield self.paho5("lru-sub", connect_properties={"TopicAliasMaximum": 2})
        yield sub.subscribe(("lru/#", 1))
        pub = yield self.paho5("lru-pub")
        sequence = ["a", "a", "b", "a", "c", "b", "c"]
        for i, topic in enumerate(sequence):
            yield pub.publish("lru/" + topic, b"%d" % i, 1)
        got = yield sub.collect(len(sequence))
        self.assertEqual([m.topic for m in got], ["lru/" + t for t in sequence])
        self.assertEqual([(m.wire_topic, m.alias) for m in got], [
            ("lru/a", 1), ("", 1), ("lru/b", 2), ("", 1), ("lru/c", 2), ("lru/b", 1),
            ("", 2)])

    @inlineCallbacks
    def test_aliases_start_afresh_on_a_new_connection(self):
        """A reconnected client gets the full topic again before any alias [MQTT-3.3.2-7]."""
        sub = yield self.paho5("fresh-sub", connect_properties={"TopicAliasMaximum": 4})
        yield sub.subscribe(("fresh/t", 1))
        pub = yield self.paho5("fresh-pub")
        yield pub.publish("fresh/t", b"1", 1)
        yield pub.publish("fresh/t", b"2", 1)
        got = yield sub.collect(2)
        self.assertEqual([(m.wire_topic, m.alias) for m in got], [("fresh/t", 1), ("", 1)])
        yield sub.disconnect()
        again = yield self.paho5("fresh-sub", connect_properties={"TopicAliasMaximum": 4})
        yield again.subscribe(("fresh/t", 1))
        yield pub.publish("fresh/t", b"3", 1)
        message = yield again.next_message()
        self.assertEqual((message.wire_topic, message.alias), ("fresh/t", 1))

    @inlineCallbacks
    def test_no_aliases_without_client_maximum(self):
        """No alias without the client's TOPIC_ALIAS_MAXIMUM, nor to 3.1.1 [MQTT-3.1.2-27]."""
        v5 = yield self.paho5("noalias-v5")
        yield v5.subscribe(("noalias/t", 1))
        v3 = yield self.paho("noalias-v3")
        yield v3.subscribe(("noalias/t", 1))
        pub = yield self.paho5("noalias-pub")
        for i in range(3):
            yield pub.publish("noalias/t", b"%d" % i, 1)
        got = yield v5.collect(3)
        self.assertEqual([(m.wire_topic, m.alias) for m in got], [("noalias/t", None)] * 3)
        got3 = yield v3.collect(3)
        self.assertEqual([m.topic for m in got3], ["noalias/t"] * 3)


class OutboundTopicAliasFirstTests(V5TestCase):
    """BrokerSettings(outbound_topic_aliases="first"): the first topics keep their aliases."""

    settings = BrokerSettings(outbound_topic_aliases="first")

    @inlineCallbacks
    def test_first_topics_get_aliases_later_ones_do_not(self):
        """With maximum 1, the first topic sent keeps alias 1; others go out in full."""
        sub = yield self.paho5("first-sub", connect_properties={"TopicAliasMaximum": 1})
        yield sub.subscribe(("first/#", 1))
        pub = yield self.paho5("first-pub")
        for topic in ("a", "b", "a", "b"):
            yield pub.publish("first/" + topic, b"x", 1)
        got = yield sub.collect(4)
        self.assertEqual([(m.topic, m.wire_topic, m.alias) for m in got], [
            ("first/a", "first/a", 1), ("first/b", "first/b", None), ("first/a", "", 1),
            ("first/b", "first/b", None)])


class MessageExpiryTests(V5TestCase):
    """Message expiry interval: expired copies are not delivered; the rest age."""

    @inlineCallbacks
    def test_queued_messages_expire_and_intervals_are_reduced(self):
        """Offline queue: expired messages dropped, the rest aged [MQTT-3.3.2-5] [MQTT-3.3.2-6]."""
        sei = {"SessionExpiryInterval": 60}
        sub = yield self.paho5("mx-sub", clean_start=False, connect_properties=sei)
        yield sub.subscribe(("mx/t", 1))
        yield sub.disconnect()
        yield self.wait_until(self.offline("mx-sub"))
        pub = yield self.paho5("mx-pub")
        yield pub.publish("mx/t", b"short", 1, properties={"MessageExpiryInterval": 1})
        yield pub.publish("mx/t", b"long", 1, properties={"MessageExpiryInterval": 60})
        yield pub.publish("mx/t", b"forever", 1)
        yield self.sleep(1.3)
        again = yield self.paho5("mx-sub", clean_start=False, connect_properties=sei)
        self.assertTrue(again.connack.session_present)
        got = yield again.collect(2)
        self.assertEqual([m.payload for m in got], [b"long", b"forever"])
        remaining = got[0].prop("MessageExpiryInterval")
        self.assertTrue(57 <= remaining <= 59, remaining)
        self.assertIsNone(got[1].prop("MessageExpiryInterval"))
        yield again.no_message()
        self.assertEqual(self.broker.stats.messages_expired, 1)

    @inlineCallbacks
    def test_retained_message_expires(self):
        """An expired retained message is not sent; a live one is, its interval reduced."""
        pub = yield self.paho5("mxr-pub")
        yield pub.publish("mxr/short", b"s", 1, True, properties={"MessageExpiryInterval": 1})
        yield pub.publish("mxr/long", b"l", 1, True, properties={"MessageExpiryInterval": 60})
        yield self.sleep(1.3)
        sub = yield self.paho5("mxr-sub")
        yield sub.subscribe(("mxr/#", 1))
        message = yield sub.next_message()
        self.assertEqual((message.topic, message.retain), ("mxr/long", True))
        remaining = message.prop("MessageExpiryInterval")
        self.assertTrue(57 <= remaining <= 59, remaining)
        yield sub.no_message()

    @inlineCallbacks
    def test_live_message_keeps_its_interval(self):
        """A message forwarded at once keeps its whole expiry interval [MQTT-3.3.2-6]."""
        sub = yield self.paho5("mxl-sub")
        yield sub.subscribe(("mxl/t", 1))
        pub = yield self.paho5("mxl-pub")
        yield pub.publish("mxl/t", b"x", 1, properties={"MessageExpiryInterval": 30})
        yield pub.publish("mxl/t", b"y", 1, properties={"MessageExpiryInterval": 1})
        got = yield sub.collect(2)
        self.assertEqual([m.prop("MessageExpiryInterval") for m in got], [30, 1])


class PayloadFormatTests(V5TestCase):
    """Payload format indicator and content type pass through unaltered."""

    @inlineCallbacks
    def test_format_and_content_type_pass_through(self):
        """Format indicator and content type pass unaltered [MQTT-3.3.2-4] [MQTT-3.3.2-20]."""
        v5 = yield self.paho5("pf-v5")
        yield v5.subscribe(("pf/#", 1))
        v3 = yield self.paho("pf-v3")
        yield v3.subscribe(("pf/#", 1))
        pub = yield self.paho5("pf-pub")
        yield pub.publish("pf/json", b'{"a": 1}', 1, properties={
            "PayloadFormatIndicator": 1, "ContentType": "application/json"})
        yield pub.publish("pf/bin", b"\x00\xff", 1, properties={
            "PayloadFormatIndicator": 0, "ContentType": "application/octet-stream"})
        got = yield v5.collect(2)
        self.assertEqual([(m.prop("PayloadFormatIndicator"), m.prop("ContentType"))
                          for m in got],
                         [(1, "application/json"), (0, "application/octet-stream")])
        got3 = yield v3.collect(2)
        self.assertEqual([m.payload for m in got3], [b'{"a": 1}', b"\x00\xff"])

    @inlineCallbacks
    def test_payload_not_validated_by_default(self):
        """Without validate_utf8_payload a non-UTF-8 payload claiming UTF-8 is delivered."""
        sub = yield self.paho5("pfn-sub")
        yield sub.subscribe(("pfn/t", 1))
        pub = yield self.paho5("pfn-pub")
        code = yield pub.publish("pfn/t", b"\xff\xfe", 1,
                                 properties={"PayloadFormatIndicator": 1})
        self.assertEqual(code, 0)
        message = yield sub.next_message()
        self.assertEqual(message.payload, b"\xff\xfe")


class PayloadValidationTests(V5TestCase):
    """BrokerSettings(validate_utf8_payload=True): 0x99 for a false UTF-8 claim."""

    settings = BrokerSettings(validate_utf8_payload=True)

    @inlineCallbacks
    def test_invalid_utf8_qos1_refused_with_puback_0x99(self):
        """A QoS 1 payload that is not the UTF-8 it claims gets PUBACK 0x99; valid ones pass."""
        sub = yield self.paho5("pv-sub")
        yield sub.subscribe(("pv/t", 1))
        pub = yield self.paho5("pv-pub")
        bad = yield pub.publish("pv/t", b"\xff\xfe", 1, properties={"PayloadFormatIndicator": 1})
        self.assertEqual(bad, RC.PAYLOAD_FORMAT_INVALID)
        good = yield pub.publish("pv/t", "héllo".encode(), 1,
                                 properties={"PayloadFormatIndicator": 1})
        self.assertEqual(good, 0)
        binary = yield pub.publish("pv/t", b"\xff\xfe", 1,
                                   properties={"PayloadFormatIndicator": 0})
        self.assertEqual(binary, 0)
        got = yield sub.collect(2)
        self.assertEqual([m.payload for m in got], ["héllo".encode(), b"\xff\xfe"])
        yield sub.no_message()
        self.assertFalse(pub.is_disconnected)

    @inlineCallbacks
    def test_invalid_utf8_qos2_refused_with_pubrec_0x99(self):
        """At QoS 2 the refusal is PUBREC 0x99."""
        raw = yield self.raw5("pv-q2")
        raw.send(Publish("pv/t", b"\xc3\x28", 2, False, False, 5,
                         {P.PAYLOAD_FORMAT_INDICATOR: 1}))
        rec = yield raw.expect(PubRec)
        self.assertEqual((rec.packet_id, rec.reason_code), (5, RC.PAYLOAD_FORMAT_INVALID))

    @inlineCallbacks
    def test_invalid_utf8_qos0_disconnects_0x99(self):
        """At QoS 0, which has no acknowledgement, the client is disconnected with 0x99."""
        raw = yield self.raw5("pv-q0")
        raw.send(Publish("pv/t", b"\xff", 0, False, False, None,
                         {P.PAYLOAD_FORMAT_INDICATOR: 1}))
        answer = yield raw.expect(Disconnect)
        self.assertEqual(answer.reason_code, RC.PAYLOAD_FORMAT_INVALID)
        yield raw.wait_closed()


class UserPropertyTests(V5TestCase):
    """User properties pass through unaltered, in order, duplicates included."""

    PAIRS = [("b", "2"), ("a", "1"), ("b", "3"), ("ünï", "cødé"), ("a", "1")]

    @inlineCallbacks
    def test_user_properties_in_order(self):
        """User properties arrive unaltered and in order [MQTT-3.3.2-17] [MQTT-3.3.2-18]."""
        sub = yield self.paho5("up-sub")
        yield sub.subscribe(("up/t", 2))
        pub = yield self.paho5("up-pub")
        yield pub.publish("up/t", b"x", 2, properties={"UserProperty": list(self.PAIRS)})
        message = yield sub.next_message()
        self.assertEqual(message.user_properties, self.PAIRS)

    @inlineCallbacks
    def test_user_properties_kept_on_retained_message(self):
        """A retained message keeps its user properties for later subscribers."""
        pub = yield self.paho5("upr-pub")
        yield pub.publish("upr/t", b"x", 1, True, properties={"UserProperty": list(self.PAIRS)})
        sub = yield self.paho5("upr-sub")
        yield sub.subscribe(("upr/t", 1))
        message = yield sub.next_message()
        self.assertTrue(message.retain)
        self.assertEqual(message.user_properties, self.PAIRS)


class SubscriptionIdentifierTests(V5TestCase):
    """Subscription identifiers come back with the messages their subscriptions matched."""

    @inlineCallbacks
    def test_identifiers_of_every_matching_subscription(self):
        """One copy carries every matching subscription identifier [MQTT-3.3.4-4]."""
        sub = yield self.paho5("sid-sub")
        yield sub.subscribe(("sid/+", 1), properties={"SubscriptionIdentifier": 7})
        yield sub.subscribe(("sid/#", 1), properties={"SubscriptionIdentifier": 268435455})
        yield sub.subscribe(("sid/x/y", 1))  # no identifier
        pub = yield self.paho5("sid-pub")
        yield pub.publish("sid/a", b"1", 1)
        yield pub.publish("sid/x/y", b"2", 1)
        first, second = yield sub.collect(2)
        self.assertEqual(sorted(first.subscription_ids), [7, 268435455])  # [MQTT-3.3.4-3]
        self.assertEqual(second.subscription_ids, [268435455])
        yield sub.no_message()  # one copy per message [MQTT-3.3.5-1]

    @inlineCallbacks
    def test_identifier_on_retained_delivery(self):
        """Retained messages sent on subscribe carry the new subscription's identifier."""
        pub = yield self.paho5("sidr-pub")
        yield pub.publish("sidr/t", b"kept", 1, True)
        sub = yield self.paho5("sidr-sub")
        yield sub.subscribe(("sidr/t", 1), properties={"SubscriptionIdentifier": 42})
        message = yield sub.next_message()
        self.assertEqual((message.retain, message.subscription_ids), (True, [42]))

    @inlineCallbacks
    def test_resubscribe_without_identifier_removes_it(self):
        """Re-subscribing without an identifier stores its absence: later messages have none."""
        sub = yield self.paho5("sidc-sub")
        yield sub.subscribe(("sidc/t", 1), properties={"SubscriptionIdentifier": 5})
        pub = yield self.paho5("sidc-pub")
        yield pub.publish("sidc/t", b"1", 1)
        yield sub.subscribe(("sidc/t", 1))
        yield pub.publish("sidc/t", b"2", 1)
        first, second = yield sub.collect(2)
        self.assertEqual((first.subscription_ids, second.subscription_ids), ([5], []))

    @inlineCallbacks
    def test_identifier_on_shared_subscription(self):
        """A shared subscription's identifier comes back with the messages it delivers."""
        sub = yield self.paho5("sids-sub")
        yield sub.subscribe(("$share/g/sids/t", 1), properties={"SubscriptionIdentifier": 9})
        pub = yield self.paho5("sids-pub")
        yield pub.publish("sids/t", b"x", 1)
        message = yield sub.next_message()
        self.assertEqual(message.subscription_ids, [9])
