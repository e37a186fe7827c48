"""End-to-end: topic filters, `$` topics, overlapping subscriptions, SUBACK codes,
retained messages and UNSUBSCRIBE, with paho-mqtt 2.x (MQTT 3.1.1) clients.

Absence is proven with a sentinel: the publisher sends a message on ``end``
last, and a subscriber's messages up to the sentinel are all it will get.
"""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks

from mqtt_twisted.codec import PubAck, Publish, SubAck, Subscribe, Subscription
from mqtt_twisted.errors import AuthorizationError
from mqtt_twisted.message import Message

try:
    from tests.pahoclient import BrokerTestCase
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from pahoclient import BrokerTestCase  # type: ignore[no-redef]

END = "end"


class WildcardTests(BrokerTestCase):
    """The topic router: '+', '#' and '$' topics [MQTT-4.7]."""

    @inlineCallbacks
    def subscriber(self, client_id, *filters):
        client = yield self.paho(client_id)
        codes = yield client.subscribe(*[(f, 2) for f in filters], (END, 2))
        self.assertEqual(codes, [2] * (len(filters) + 1))
        return client

    @inlineCallbacks
    def test_plus_and_hash(self):
        """'+' matches one level, '#' any number including the parent ('a/#' matches 'a')."""
        plus = yield self.subscriber("w-plus", "w/+/c")
        hash_ = yield self.subscriber("w-hash", "w/#")
        exact = yield self.subscriber("w-exact", "w/b")
        all_levels = yield self.subscriber("w-all", "#")
        pub = yield self.paho("w-pub")
        topics = ["w/b/c", "w/b", "w", "w/b/c/d", "w/x/c", "other/b/c", "w/b/"]
        for topic in topics:
            yield pub.publish(topic, topic.encode(), 1)
        yield pub.publish(END, b"", 2)
        got = {}
        for name, client in (("plus", plus), ("hash", hash_), ("exact", exact),
                             ("all", all_levels)):
            # Order across topics is not specified: compare sorted.
            got[name] = sorted(m.topic for m in (yield client.collect_until(END)))
        self.assertEqual(got["plus"], ["w/b/c", "w/x/c"])  # [MQTT-4.7.1-3]
        # [MQTT-4.7.1-2] 'w/#' matches 'w' itself; 'w/b/' has an empty last level.
        self.assertEqual(got["hash"], sorted(["w/b/c", "w/b", "w", "w/b/c/d", "w/x/c", "w/b/"]))
        self.assertEqual(got["exact"], ["w/b"])
        self.assertEqual(got["all"], sorted(topics))

    @inlineCallbacks
    def test_dollar_topics_not_matched_by_leading_wildcards(self):
        """'$SYS/x' is not matched by '#' or '+/x' but is matched by '$SYS/#' and '$SYS/+'."""
        hash_ = yield self.subscriber("d-hash", "#")
        plus = yield self.subscriber("d-plus", "+/x")
        sys_hash = yield self.subscriber("d-sys-hash", "$SYS/#")
        sys_plus = yield self.subscriber("d-sys-plus", "$SYS/+")
        # $SYS topics come from the broker itself (adapters may not publish there).
        yield self.assertFailure(self.service.gateway.publish(Message("$SYS/x", b"", 1)),
                                 AuthorizationError)
        self.broker.route(Message("$SYS/x", b"broker info", 1, False, None, {},
                                  self.reactor.seconds(), None))
        pub = yield self.paho("d-pub")
        yield pub.publish("$app/x", b"client data", 1)  # any '$' topic, also from a client
        yield pub.publish("y/x", b"ordinary", 1)
        yield pub.publish(END, b"", 2)
        # [MQTT-4.7.2-1] a filter starting with a wildcard does not match a '$' topic.
        self.assertEqual([m.topic for m in (yield hash_.collect_until(END))], ["y/x"])
        self.assertEqual([m.topic for m in (yield plus.collect_until(END))], ["y/x"])
        self.assertEqual([m.topic for m in (yield sys_hash.collect_until(END))], ["$SYS/x"])
        self.assertEqual([m.topic for m in (yield sys_plus.collect_until(END))], ["$SYS/x"])

    @inlineCallbacks
    def test_overlapping_subscriptions_deliver_one_copy_at_highest_qos(self):
        """A client whose filters overlap gets one copy, at the highest granted QoS."""
        sub = yield self.paho("overlap")
        codes = yield sub.subscribe(("o/#", 0), ("o/+", 2), ("o/a", 1), (END, 2))
        self.assertEqual(codes, [0, 2, 1, 2])
        pub = yield self.paho("overlap-pub")
        yield pub.publish("o/a", b"once", 2)
        yield pub.publish("o/a/deep", b"only #", 2)
        yield pub.publish(END, b"", 2)
        received = yield sub.collect_until(END)
        # [MQTT-3.3.5-1] one copy per client, at the maximum QoS of the matching filters.
        # (paho hands QoS 2 messages over at PUBREL, so the QoS 0 one may come first.)
        self.assertEqual(sorted((m.topic, m.qos) for m in received),
                         [("o/a", 2), ("o/a/deep", 0)])

    @inlineCallbacks
    def test_invalid_filter_refused_others_granted(self):
        """SUBACK carries 0x80 for an invalid filter; the other filters are granted.

        paho refuses to send invalid filters, so a raw client subscribes."""
        sub = yield self.raw("bad-filter")
        filters = [("good/1", 1), ("a/#/b", 1), ("good/2", 2), ("a+", 0), ("#/x", 0)]
        sub.send(Subscribe(1, [Subscription(f, q) for f, q in filters]))
        suback = yield sub.expect(SubAck)
        self.assertEqual(suback.packet_id, 1)
        self.assertEqual(suback.reason_codes, [1, 0x80, 2, 0x80, 0x80])  # [MQTT-3.9.3-2]
        self.assertEqual(set(self.session("bad-filter").subscriptions),
                         {"good/1", "good/2"})
        pub = yield self.paho("bad-filter-pub")
        yield pub.publish("good/1", b"one", 1)
        yield pub.publish("good/2", b"two", 1)
        for topic in ("good/1", "good/2"):
            packet = yield sub.expect(Publish)
            self.assertEqual((packet.topic, packet.qos), (topic, 1))
            sub.send(PubAck(packet.packet_id))

    @inlineCallbacks
    def test_resubscribe_replaces_qos(self):
        """SUBSCRIBE to a filter already held replaces its QoS [MQTT-3.8.4-3]."""
        sub = yield self.paho("resub")
        yield sub.subscribe(("resub/t", 2))
        codes = yield sub.subscribe(("resub/t", 0))
        self.assertEqual(codes, [0])
        pub = yield self.paho("resub-pub")
        yield pub.publish("resub/t", b"x", 2)
        message = yield sub.next_message()
        self.assertEqual(message.qos, 0)
        yield sub.no_message(0.1)


class UnsubscribeTests(BrokerTestCase):
    """UNSUBSCRIBE [MQTT-3.10]."""

    @inlineCallbacks
    def test_unsubscribe_stops_delivery(self):
        """After UNSUBACK nothing more arrives on the removed filter; the others go on."""
        sub = yield self.paho("unsub")
        yield sub.subscribe(("u/1", 1), ("u/2", 1), (END, 1))
        pub = yield self.paho("unsub-pub")
        yield pub.publish("u/1", b"before", 1)
        message = yield sub.next_message()
        self.assertEqual(message.topic, "u/1")
        yield sub.unsubscribe("u/1", "never/subscribed")  # [MQTT-3.10.4-5] UNSUBACK anyway
        yield pub.publish("u/1", b"after", 1)
        yield pub.publish("u/2", b"still", 1)
        yield pub.publish(END, b"", 1)
        received = yield sub.collect_until(END)
        self.assertEqual([(m.topic, m.payload) for m in received], [("u/2", b"still")])
        self.assertEqual(set(self.session("unsub").subscriptions), {"u/2", END})


class RetainedTests(BrokerTestCase):
    """Retained messages [MQTT-3.3.1-5..12]."""

    @inlineCallbacks
    def test_retained_delivered_on_subscribe_then_live_without_flag(self):
        """A retained message reaches a later subscriber with retain=1; a message published
        while it is subscribed is forwarded with retain=0."""
        pub = yield self.paho("ret-pub")
        yield pub.publish("ret/a", b"stored", 1, retain=True)
        sub = yield self.paho("ret-sub")
        codes = yield sub.subscribe(("ret/#", 1))
        self.assertEqual(codes, [1])
        message = yield sub.next_message()
        self.assertEqual((message.topic, message.payload, message.retain, message.qos),
                         ("ret/a", b"stored", True, 1))  # [MQTT-3.3.1-6] [MQTT-3.3.1-8]
        yield pub.publish("ret/a", b"live", 1, retain=True)
        message = yield sub.next_message()
        self.assertEqual((message.payload, message.retain), (b"live", False))  # [MQTT-3.3.1-9]
        # The live message replaced the stored one [MQTT-3.3.1-5].
        later = yield self.paho("ret-later")
        yield later.subscribe(("ret/a", 2))
        message = yield later.next_message()
        self.assertEqual((message.payload, message.retain, message.qos), (b"live", True, 1))

    @inlineCallbacks
    def test_empty_retained_payload_deletes(self):
        """A retained message with an empty payload removes the stored one, and is itself
        not stored [MQTT-3.3.1-10] [MQTT-3.3.1-11]."""
        pub = yield self.paho("del-pub")
        yield pub.publish("del/a", b"to delete", 0, retain=True)
        yield pub.publish("del/b", b"to keep", 0, retain=True)
        first = yield self.paho("del-first")
        yield first.subscribe(("del/#", 0))
        received = yield first.collect(2)
        self.assertEqual(sorted(m.payload for m in received), [b"to delete", b"to keep"])
        yield pub.publish("del/a", b"", 0, retain=True)
        message = yield first.next_message()  # current subscribers still get it, retain=0
        self.assertEqual((message.topic, message.payload, message.retain), ("del/a", b"", False))
        second = yield self.paho("del-second")
        yield second.subscribe(("del/#", 0), (END, 0))
        yield pub.publish(END, b"", 0)
        received = yield second.collect_until(END)
        self.assertEqual([(m.topic, m.payload, m.retain) for m in received],
                         [("del/b", b"to keep", True)])

    @inlineCallbacks
    def test_retained_qos_is_minimum_of_stored_and_granted(self):
        """A retained QoS 2 message is delivered at the subscription's granted QoS, if lower."""
        pub = yield self.paho("retq-pub")
        yield pub.publish("retq/t", b"q2", 2, retain=True)
        sub = yield self.paho("retq-sub")
        yield sub.subscribe(("retq/t", 1))
        message = yield sub.next_message()
        self.assertEqual((message.qos, message.retain), (1, True))

    @inlineCallbacks
    def test_retained_sent_for_each_matching_subscribe(self):
        """Each SUBSCRIBE whose filter matches a retained message gets it again."""
        pub = yield self.paho("rete-pub")
        yield pub.publish("rete/t", b"again", 1, retain=True)
        sub = yield self.paho("rete-sub")
        yield sub.subscribe(("rete/t", 1))
        first = yield sub.next_message()
        yield sub.subscribe(("rete/+", 1))
        second = yield sub.next_message()
        self.assertEqual([(m.payload, m.retain) for m in (first, second)],
                         [(b"again", True), (b"again", True)])

    @inlineCallbacks
    def test_non_retained_publish_not_stored(self):
        """A publish with retain=0 does not replace or create a retained message."""
        pub = yield self.paho("retn-pub")
        yield pub.publish("retn/t", b"kept", 1, retain=True)
        yield pub.publish("retn/t", b"passing", 1, retain=False)
        yield pub.publish("retn/u", b"passing", 1, retain=False)
        sub = yield self.paho("retn-sub")
        yield sub.subscribe(("retn/#", 1), (END, 1))
        yield pub.publish(END, b"", 1)
        received = yield sub.collect_until(END)
        self.assertEqual([(m.topic, m.payload, m.retain) for m in received],
                         [("retn/t", b"kept", True)])
