"""End-to-end MQTT 5.0: SUBSCRIBE options, SUBACK/UNSUBACK reason codes, shared
subscriptions, and v3.1.1 and v5 clients on the same topics (issue 4).

paho-mqtt 2.x clients in MQTTv5 mode (and 3.1.1 mode, ``tests/pahoclient.py``)
against a real broker on 127.0.0.1.
"""

from __future__ import annotations

from twisted.internet.defer import gatherResults, inlineCallbacks, succeed

from mqtt_twisted.codec import (
    Publish,
    PubRec,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
)
from mqtt_twisted.constants import ReasonCode as RC

try:
    from tests.pahov5 import SubscribeOptions, V5TestCase
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from pahov5 import SubscribeOptions, V5TestCase  # type: ignore[no-redef]


def options(qos=0, **kwargs):
    """paho SubscribeOptions: noLocal, retainAsPublished, retainHandling."""
    return SubscribeOptions(qos=qos, **kwargs)


class SubscribeOptionTests(V5TestCase):
    """No local, retain as published, retain handling."""

    @inlineCallbacks
    def settle(self, client, end):
        """Messages ``client`` got before a sentinel it published itself on ``end``."""
        yield client.publish(end, b"", 1)
        got = yield client.collect_until(end)
        return got

    @inlineCallbacks
    def test_no_local(self):
        """With no local a client gets others' messages but not its own [MQTT-3.8.3-3]."""
        me = yield self.paho5("nl-me")
        yield me.subscribe(("nl/t", options(1, noLocal=True)))
        other = yield self.paho5("nl-other")
        yield other.subscribe(("nl/t", 1))
        code = yield me.publish("nl/t", b"mine", 1)
        self.assertEqual(code, 0)  # delivered to the other subscriber
        yield other.publish("nl/t", b"theirs", 1)
        message = yield me.next_message()
        self.assertEqual(message.payload, b"theirs")
        yield me.no_message()
        both = yield other.collect(2)
        self.assertEqual([m.payload for m in both], [b"mine", b"theirs"])

    @inlineCallbacks
    def test_no_local_alone_means_no_matching_subscribers(self):
        """A PUBLISH matching only the sender's no-local subscription gets PUBACK 0x10."""
        me = yield self.paho5("nl-alone")
        yield me.subscribe(("nla/t", options(1, noLocal=True)))
        code = yield me.publish("nla/t", b"x", 1)
        self.assertEqual(code, RC.NO_MATCHING_SUBSCRIBERS)

    @inlineCallbacks
    def test_retain_as_published(self):
        """Retain as published keeps RETAIN [MQTT-3.3.1-13], else it is cleared [MQTT-3.3.1-12]."""
        rap = yield self.paho5("rap-on")
        yield rap.subscribe(("rap/t", options(1, retainAsPublished=True)))
        plain = yield self.paho5("rap-off")
        yield plain.subscribe(("rap/t", 1))
        pub = yield self.paho5("rap-pub")
        yield pub.publish("rap/t", b"r", 1, True)
        yield pub.publish("rap/t", b"n", 1, False)
        self.assertEqual([(m.payload, m.retain) for m in (yield rap.collect(2))],
                         [(b"r", True), (b"n", False)])
        self.assertEqual([(m.payload, m.retain) for m in (yield plain.collect(2))],
                         [(b"r", False), (b"n", False)])

    @inlineCallbacks
    def test_retain_handling(self):
        """Retain handling 0 sends retained messages always, 1 on a new subscription, 2 never."""
        pub = yield self.paho5("rh-pub")
        yield pub.publish("rh/t", b"kept", 1, True)
        c = yield self.paho5("rh-sub")
        yield c.subscribe(("rh/end", 1))

        @inlineCallbacks
        def subscribe(rh):
            yield c.subscribe(("rh/t", options(1, retainHandling=rh)))
            got = yield self.settle(c, "rh/end")
            return [(m.payload, m.retain) for m in got]

        self.assertEqual((yield subscribe(0)), [(b"kept", True)])  # [MQTT-3.3.1-9]
        self.assertEqual((yield subscribe(0)), [(b"kept", True)])  # existing: sent again
        self.assertEqual((yield subscribe(1)), [])  # existing: not sent [MQTT-3.3.1-10]
        yield c.unsubscribe("rh/t")
        self.assertEqual((yield subscribe(1)), [(b"kept", True)])  # new: sent
        yield c.unsubscribe("rh/t")
        self.assertEqual((yield subscribe(2)), [])  # never [MQTT-3.3.1-11]
        yield pub.publish("rh/t", b"live", 1)
        message = yield c.next_message()
        self.assertEqual(message.payload, b"live")  # the subscription itself works


class ReasonCodeTests(V5TestCase):
    """SUBACK and UNSUBACK reason codes, in the order of the request."""

    @inlineCallbacks
    def test_suback_codes_in_order(self):
        """SUBACK codes follow the filters' order, 0x8F for malformed ones [MQTT-3.9.3-1]."""
        raw = yield self.raw5("sa")
        raw.send(Subscribe(1, [Subscription(f, q) for f, q in (
            ("sa/0", 0), ("sa/#/bad", 1), ("sa/1", 1), ("sa/x#", 0), ("sa/2", 2),
            ("$share/g", 1), ("$share/g+/sa", 1))]))
        suback = yield raw.expect(SubAck)
        self.assertEqual(suback.reason_codes, [0, RC.TOPIC_FILTER_INVALID, 1,
                                               RC.TOPIC_FILTER_INVALID, 2,
                                               RC.TOPIC_FILTER_INVALID, RC.TOPIC_FILTER_INVALID])
        self.assertEqual(set(self.session("sa").subscriptions), {"sa/0", "sa/1", "sa/2"})

    @inlineCallbacks
    def test_unsuback_codes(self):
        """UNSUBACK says 0x00 or 0x11 (no subscription existed), in order [MQTT-3.11.3-1]."""
        client = yield self.paho5("ua")
        yield client.subscribe(("ua/a", 1), ("$share/g/ua/b", 1))
        codes = yield client.unsubscribe("ua/a", "ua/nope", "$share/g/ua/b", "ua/a")
        self.assertEqual(codes, [0, RC.NO_SUBSCRIPTION_EXISTED, 0, RC.NO_SUBSCRIPTION_EXISTED])

    @inlineCallbacks
    def test_packet_identifier_in_use_0x91(self):
        """SUBSCRIBE/UNSUBSCRIBE reusing an unreleased QoS 2 packet id gets 0x91 [MQTT-2.2.1-3]."""
        raw = yield self.raw5("pid-reuse")
        raw.send(Publish("pid/t", b"x", 2, False, False, 7))
        yield raw.expect(PubRec)  # no PUBREL: packet id 7 stays in use
        raw.send(Subscribe(7, [Subscription("pid/s", 1)]))
        suback = yield raw.expect(SubAck)
        raw.send(Unsubscribe(7, ["pid/s"]))
        unsuback = yield raw.expect(UnsubAck)
        self.assertEqual((suback.reason_codes, unsuback.reason_codes),
                         ([RC.PACKET_IDENTIFIER_IN_USE], [RC.PACKET_IDENTIFIER_IN_USE]))


class Denier:
    """An authorizer that forbids ``secret/...``, answering directly."""

    def mayPublish(self, identity, clientId, topic):
        return not topic.startswith("secret/")

    def maySubscribe(self, identity, clientId, topicFilter):
        return not topicFilter.startswith("secret/")


class DeferredDenier:
    """The same authorizer, answering with Deferreds (IAuthorizer allows both)."""

    def mayPublish(self, identity, clientId, topic):
        return succeed(not topic.startswith("secret/"))

    def maySubscribe(self, identity, clientId, topicFilter):
        return succeed(not topicFilter.startswith("secret/"))


class NotAuthorizedTests(V5TestCase):
    """0x87 on SUBACK and PUBACK from the authorizer seam."""

    authorizer = Denier()

    @inlineCallbacks
    def test_not_authorized_codes(self):
        """A forbidden filter gets SUBACK 0x87, a forbidden topic PUBACK 0x87 (not delivered)."""
        client = yield self.paho5("na")
        codes = yield client.subscribe(("open/t", 1), ("secret/t", 1))
        self.assertEqual(codes, [1, RC.NOT_AUTHORIZED])
        watcher = yield self.paho5("na-watch")
        yield watcher.subscribe(("#", 1))
        code = yield client.publish("secret/t", b"x", 1)
        self.assertEqual(code, RC.NOT_AUTHORIZED)
        yield watcher.no_message()


class DeferredNotAuthorizedTests(NotAuthorizedTests):
    """The same, with an authorizer answering through Deferreds."""

    authorizer = DeferredDenier()


class SharedSubscriptionTests(V5TestCase):
    """``$share/{group}/{filter}`` with v5 and v3.1.1 members."""

    @inlineCallbacks
    def test_round_robin_mixed_versions(self):
        """A group gives each message to one member in turn, v3.1.1 and v5 members alike."""
        a = yield self.paho("rr-a-v3")
        yield a.subscribe(("$share/rr/sh/t", 1))
        b = yield self.paho5("rr-b-v5")
        yield b.subscribe(("$share/rr/sh/t", 1))
        c = yield self.paho5("rr-c-v5")
        yield c.subscribe(("$share/rr/sh/t", 1))
        plain = yield self.paho5("rr-plain")
        yield plain.subscribe(("sh/t", 1))
        pub = yield self.paho5("rr-pub")
        for i in range(6):
            yield pub.publish("sh/t", b"%d" % i, 1, properties={"UserProperty": [("n", str(i))]})
        for member, expected in ((a, [b"0", b"3"]), (b, [b"1", b"4"]), (c, [b"2", b"5"])):
            got = yield member.collect(2)
            self.assertEqual([m.payload for m in got], expected)
        self.assertEqual(b.received[0].user_properties, [("n", "1")])
        everything = yield plain.collect(6)
        self.assertEqual(len(everything), 6)
        yield gatherResults([m.no_message() for m in (a, b, c, plain)])

    @inlineCallbacks
    def test_each_group_gets_one_copy(self):
        """Two groups on the same filter each get one copy of every message."""
        g1 = []
        for name in ("g1-x", "g1-y"):
            member = yield self.paho5(name)
            yield member.subscribe(("$share/one/grp/#", 1))
            g1.append(member)
        g2 = yield self.paho("g2-z")
        yield g2.subscribe(("$share/two/grp/#", 1))
        pub = yield self.paho5("grp-pub")
        for i in range(4):
            yield pub.publish("grp/t", b"%d" % i, 1)
        got2 = yield g2.collect(4)
        self.assertEqual([m.payload for m in got2], [b"%d" % i for i in range(4)])
        x, y = yield gatherResults([g1[0].collect(2), g1[1].collect(2)])
        self.assertEqual(sorted(m.payload for m in x + y), [b"%d" % i for i in range(4)])

    @inlineCallbacks
    def test_no_retained_on_shared_subscribe(self):
        """A shared subscribe gets no retained messages; live ones still arrive."""
        pub = yield self.paho5("shr-pub")
        yield pub.publish("shr/t", b"kept", 1, True)
        member = yield self.paho5("shr-member")
        yield member.subscribe(("$share/g/shr/t", 1), ("shr/end", 1))
        yield member.publish("shr/end", b"", 1)
        self.assertEqual((yield member.collect_until("shr/end")), [])
        yield pub.publish("shr/t", b"live", 1)
        message = yield member.next_message()
        self.assertEqual((message.payload, message.retain), (b"live", False))

    @inlineCallbacks
    def test_unacked_messages_go_to_another_member(self):
        """A non-persistent member's unacked QoS 1 messages go to another member when it leaves."""
        quitter = yield self.paho5("ho-quitter", manual_ack=True)
        yield quitter.subscribe(("$share/ho/ho/t", 1))
        stayer = yield self.paho("ho-stayer-v3")
        yield stayer.subscribe(("$share/ho/ho/t", 1))
        pub = yield self.paho5("ho-pub")
        for i in range(4):
            yield pub.publish("ho/t", b"%d" % i, 1)
        unacked = yield quitter.collect(2)
        self.assertEqual([m.payload for m in unacked], [b"0", b"2"])
        mine = yield stayer.collect(2)
        self.assertEqual([m.payload for m in mine], [b"1", b"3"])
        yield quitter.kill()
        moved = yield stayer.collect(2)
        self.assertEqual(sorted(m.payload for m in moved), [b"0", b"2"])
        self.assertTrue(all(m.qos == 1 for m in moved))
        yield stayer.no_message()

    @inlineCallbacks
    def test_online_members_preferred(self):
        """While a persistent member is offline, new messages go to the online members."""
        away = yield self.paho5("on-away", clean_start=False,
                                connect_properties={"SessionExpiryInterval": 60})
        yield away.subscribe(("$share/on/on/t", 1))
        here = yield self.paho5("on-here")
        yield here.subscribe(("$share/on/on/t", 1))
        yield away.disconnect()
        yield self.wait_until(self.offline("on-away"))
        pub = yield self.paho5("on-pub")
        for i in range(4):
            yield pub.publish("on/t", b"%d" % i, 1)
        got = yield here.collect(4)
        self.assertEqual([m.payload for m in got], [b"%d" % i for i in range(4)])
        self.assertFalse(self.session("on-away").queued)

    @inlineCallbacks
    def test_unsubscribed_member_gets_no_more(self):
        """A member that unsubscribes leaves the group: the others get everything."""
        leaver = yield self.paho5("un-leaver")
        yield leaver.subscribe(("$share/un/un/t", 1))
        other = yield self.paho5("un-other")
        yield other.subscribe(("$share/un/un/t", 1))
        codes = yield leaver.unsubscribe("$share/un/un/t")
        self.assertEqual(codes, [0])
        pub = yield self.paho5("un-pub")
        for i in range(3):
            yield pub.publish("un/t", b"%d" % i, 1)
        got = yield other.collect(3)
        self.assertEqual(len(got), 3)
        yield leaver.no_message()

    @inlineCallbacks
    def test_no_local_on_shared_subscription_is_protocol_error(self):
        """No local on a shared subscription gets DISCONNECT 0x82 [MQTT-3.8.3-4]."""
        client = yield self.paho5("sh-nl")
        client.client.subscribe([("$share/g/nl/t", options(0, noLocal=True))])
        gone = yield client.disconnected
        self.assertEqual((gone.rc, gone.from_server), (RC.PROTOCOL_ERROR, True))


class MixedVersionTests(V5TestCase):
    """v3.1.1 and v5 clients on the same topics."""

    @inlineCallbacks
    def test_v5_to_v3_and_back(self):
        """v5 and 3.1.1 clients exchange messages; properties are dropped for 3.1.1."""
        v3 = yield self.paho("mix-v3")
        yield v3.subscribe(("mix/#", 2))
        v5 = yield self.paho5("mix-v5")
        yield v5.subscribe(("mix/#", 2))
        yield v5.publish("mix/from5", b"five", 2, properties={
            "UserProperty": [("k", "v")], "ContentType": "text/plain"})
        # paho hands a QoS 2 message over at PUBREL: a QoS 1 message of another publisher
        # on another topic may overtake it (MQTT orders per publisher and topic only), so
        # the second is published once the first has arrived.
        first3 = yield v3.next_message()
        first5 = yield v5.next_message()
        yield v3.publish("mix/from3", b"three", 1)
        got3 = [first3, *(yield v3.collect(1))]
        self.assertEqual([(m.topic, m.payload, m.qos) for m in got3],
                         [("mix/from5", b"five", 2), ("mix/from3", b"three", 1)])
        got5 = [first5, *(yield v5.collect(1))]
        self.assertEqual([(m.topic, m.payload, m.qos) for m in got5],
                         [("mix/from5", b"five", 2), ("mix/from3", b"three", 1)])
        self.assertEqual(got5[0].user_properties, [("k", "v")])
        self.assertEqual(got5[1].user_properties, [])
        self.assertIsNone(got5[1].prop("ContentType"))

    @inlineCallbacks
    def test_retained_across_versions(self):
        """Retained messages from either version reach new subscribers of the other."""
        v3 = yield self.paho("mixr-v3")
        v5 = yield self.paho5("mixr-v5")
        yield v3.publish("mixr/three", b"3", 1, True)
        yield v5.publish("mixr/five", b"5", 1, True, properties={"ContentType": "x/y"})
        sub5 = yield self.paho5("mixr-sub5")
        yield sub5.subscribe(("mixr/three", 1))
        got = yield sub5.next_message()
        self.assertEqual((got.payload, got.retain), (b"3", True))
        sub3 = yield self.paho("mixr-sub3")
        yield sub3.subscribe(("mixr/five", 1))
        got = yield sub3.next_message()
        self.assertEqual((got.payload, got.retain), (b"5", True))

    @inlineCallbacks
    def test_v3_will_reaches_v5_subscriber(self):
        """A 3.1.1 client's will reaches a v5 subscriber."""
        watcher = yield self.paho5("mixw-watch")
        yield watcher.subscribe(("mixw/will", 1))
        victim = yield self.paho("mixw-v3", will=("mixw/will", b"bye", 1, False))
        yield victim.kill()
        message = yield watcher.next_message()
        self.assertEqual((message.payload, message.qos), (b"bye", 1))
