"""End-to-end: MQTT 3.1.1 CONNECT rules, sessions, takeover and the QoS flows.

A real broker listens on 127.0.0.1 (``mqtt_twisted.testing.start_broker``);
paho-mqtt 2.x clients talk to it from their own threads, and raw-socket clients
(``tests/pahoclient.py``) drive the flows that need exact control of each packet.
"""

from __future__ import annotations

from twisted.internet.defer import gatherResults, inlineCallbacks

from mqtt_twisted.codec import (
    ConnAck,
    Connect,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    encode,
)
from mqtt_twisted.core import inspection

try:
    from tests.pahoclient import BrokerTestCase
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from pahoclient import BrokerTestCase  # type: ignore[no-redef]


class ConnectTests(BrokerTestCase):
    """CONNECT and CONNACK [MQTT-3.1, MQTT-3.2]."""

    @inlineCallbacks
    def test_connect_accepted(self):
        """A paho 3.1.1 client is accepted with return code 0 and no session present."""
        client = yield self.paho("plain")
        result = yield client.connected
        self.assertEqual(result.rc, 0)
        self.assertFalse(result.session_present)  # [MQTT-3.2.2-1] clean session
        self.assertIn("plain", inspection.session_ids(self.broker))

    @inlineCallbacks
    def test_anonymous_with_credentials_accepted(self):
        """With no authenticator configured, a username/password CONNECT is accepted."""
        client = yield self.paho("creds", username="alice", password="secret")
        result = yield client.connected
        self.assertEqual(result.rc, 0)

    @inlineCallbacks
    def test_pingreq_answered(self):
        """PINGREQ gets PINGRESP [MQTT-3.12.4-1]."""
        raw = yield self.raw("pinger")
        raw.send(PingReq())
        yield raw.expect(PingResp)

    @inlineCallbacks
    def test_unsupported_protocol_level_refused(self):
        """A CONNECT with protocol level 6 gets CONNACK 0x01 and the socket is closed."""
        raw = yield self.raw()
        raw.send_bytes(encode(Connect("level6", 6, protocol_name="MQTT")))
        connack = yield raw.expect(ConnAck)
        self.assertEqual(connack.reason_code, 0x01)  # [MQTT-3.1.2-2]
        self.assertFalse(connack.session_present)
        yield raw.wait_closed()
        self.assertNotIn("level6", inspection.session_ids(self.broker))

    @inlineCallbacks
    def test_first_packet_must_be_connect(self):
        """A connection whose first packet is not CONNECT is closed without an answer."""
        raw = yield self.raw()
        raw.send(Publish("t", b"sneaky"))  # [MQTT-3.1.0-1]
        yield raw.wait_closed()
        self.assertEqual(raw.bytes_received, 0)

    @inlineCallbacks
    def test_second_connect_closes(self):
        """A second CONNECT on a connection is a protocol violation: the socket closes."""
        raw = yield self.raw("twice")
        raw.send(Connect("twice", 4, True, 0))  # [MQTT-3.1.0-2]
        yield raw.wait_closed()
        yield self.wait_until(lambda: "twice" not in inspection.session_ids(self.broker))

    @inlineCallbacks
    def test_empty_client_id_clean_session_gets_assigned_id(self):
        """An empty client id with clean session 1 is accepted under a server-made id."""
        prefix = self.broker.settings.assigned_id_prefix
        first = yield self.paho("")  # [MQTT-3.1.3-6]
        second = yield self.paho("")
        assigned = [cid for cid in inspection.session_ids(self.broker) if cid.startswith(prefix)]
        self.assertEqual(len(assigned), 2)  # [MQTT-3.1.3-7] each one unique
        # Both anonymous clients work side by side.
        yield first.subscribe(("anon/t", 1))
        yield second.publish("anon/t", b"hello", 1)
        message = yield first.next_message()
        self.assertEqual(message.payload, b"hello")

    @inlineCallbacks
    def test_empty_client_id_persistent_session_refused(self):
        """An empty client id with clean session 0 gets CONNACK 0x02 and the socket closes."""
        raw = yield self.raw()
        raw.send(Connect("", 4, False, 0))
        connack = yield raw.expect(ConnAck)
        self.assertEqual(connack.reason_code, 0x02)  # [MQTT-3.1.3-8]
        yield raw.wait_closed()


class TakeoverTests(BrokerTestCase):
    """A CONNECT with a client id in use takes the session over [MQTT-3.1.4-2]."""

    @inlineCallbacks
    def test_second_client_takes_over(self):
        """The first connection is closed; the second connection works."""
        first = yield self.paho("same")
        yield first.subscribe(("takeover/t", 1))
        second = yield self.paho("same")
        yield first.disconnected  # [MQTT-3.1.4-2] the old connection is closed
        self.assertEqual(inspection.connection_count(self.broker), 1)
        yield second.subscribe(("takeover/t", 1))
        yield second.publish("takeover/t", b"after", 1)
        message = yield second.next_message()
        self.assertEqual(message.payload, b"after")
        self.assertEqual(self.broker.stats.takeovers, 1)

    @inlineCallbacks
    def test_takeover_keeps_persistent_session(self):
        """Taking over a clean-session-0 session keeps its subscriptions (session present)."""
        first = yield self.paho("keeper", clean_session=False)
        yield first.subscribe(("keep/t", 1))
        second = yield self.paho("keeper", connect=False, clean_session=False)
        result = yield second.connect()
        self.assertEqual(result.rc, 0)
        self.assertTrue(result.session_present)  # [MQTT-3.2.2-2]
        yield first.disconnected
        publisher = yield self.paho("keep-pub")
        yield publisher.publish("keep/t", b"still subscribed", 1)
        message = yield second.next_message()
        self.assertEqual(message.payload, b"still subscribed")


class PersistentSessionTests(BrokerTestCase):
    """Clean session 0 keeps subscriptions and the QoS 1/2 messages for an offline client."""

    @inlineCallbacks
    def test_messages_kept_while_offline(self):
        """QoS 1/2 messages published while a persistent subscriber is away all arrive, in
        order per topic, when it reconnects with session present; QoS 0 ones do not."""
        sub = yield self.paho("sleeper", clean_session=False)
        codes = yield sub.subscribe(("offline/one", 1), ("offline/two", 2))
        self.assertEqual(codes, [1, 2])
        yield sub.kill()  # abrupt: no DISCONNECT
        yield self.wait_until(self.offline("sleeper"))
        pub = yield self.paho("offline-pub")
        for i in range(10):
            yield pub.publish("offline/one", b"one-%d" % i, 1)
            if i % 2:
                yield pub.publish("offline/two", b"two-%d" % i, 2)
        yield pub.publish("offline/one", b"qos0", 0)  # QoS 0 is not kept for it
        again = yield self.paho("sleeper", connect=False, clean_session=False)
        result = yield again.connect()
        self.assertTrue(result.session_present)  # [MQTT-3.2.2-2]
        received = yield again.collect(15)
        ones = [(m.payload, m.qos) for m in received if m.topic == "offline/one"]
        twos = [(m.payload, m.qos) for m in received if m.topic == "offline/two"]
        self.assertEqual(ones, [(b"one-%d" % i, 1) for i in range(10)])  # [MQTT-4.6.0-6]
        self.assertEqual(twos, [(b"two-%d" % i, 2) for i in range(1, 10, 2)])
        yield again.no_message()

    @inlineCallbacks
    def test_session_kept_after_disconnect(self):
        """A clean DISCONNECT of a clean-session-0 client keeps its session too."""
        sub = yield self.paho("polite", clean_session=False)
        yield sub.subscribe(("polite/t", 1))
        yield sub.disconnect()
        yield self.wait_until(self.offline("polite"))
        pub = yield self.paho("polite-pub")
        yield pub.publish("polite/t", b"queued", 1)
        again = yield self.paho("polite", connect=False, clean_session=False)
        result = yield again.connect()
        self.assertTrue(result.session_present)
        message = yield again.next_message()
        self.assertEqual((message.payload, message.qos), (b"queued", 1))

    @inlineCallbacks
    def test_clean_session_discards_stored_session(self):
        """Reconnecting with clean session 1 discards the stored session and its messages."""
        sub = yield self.paho("forgetful", clean_session=False)
        yield sub.subscribe(("forget/t", 1))
        yield sub.disconnect()
        yield self.wait_until(self.offline("forgetful"))
        pub = yield self.paho("forget-pub")
        yield pub.publish("forget/t", b"lost", 1)
        clean = yield self.paho("forgetful", connect=False, clean_session=True)
        result = yield clean.connect()
        self.assertFalse(result.session_present)  # [MQTT-3.1.2-6]
        yield clean.no_message()
        yield clean.disconnect()
        yield self.wait_until(lambda: "forgetful" not in inspection.session_ids(self.broker))
        persistent = yield self.paho("forgetful", connect=False, clean_session=False)
        result = yield persistent.connect()
        self.assertFalse(result.session_present)  # nothing survived the clean session
        yield pub.publish("forget/t", b"not subscribed", 1)
        yield persistent.no_message()

    @inlineCallbacks
    def test_subscriber_dropping_mid_stream_gets_every_message(self):
        """A persistent QoS 1 subscriber killed in the middle of a stream gets every
        message once it reconnects (duplicates allowed, order of first copies kept)."""
        total = 100
        sub = yield self.paho("dropper", clean_session=False)
        yield sub.subscribe(("stream/t", 1))
        pub = yield self.paho("stream-pub")
        killed = []

        def kill_at_30(message):
            if message.payload == b"30" and not killed:
                killed.append(sub.kill())

        sub.on_receive = kill_at_30
        # The first half streams in while the subscriber dies at message 30 ...
        yield gatherResults([pub.publish("stream/t", b"%d" % i, 1) for i in range(50)])
        yield self.wait_until(lambda: bool(killed))
        yield killed[0]
        yield self.wait_until(self.offline("dropper"))
        # ... and the second half is published while it is away.
        yield gatherResults([pub.publish("stream/t", b"%d" % i, 1) for i in range(50, total)])
        again = yield self.paho("dropper", connect=False, clean_session=False)
        result = yield again.connect()
        self.assertTrue(result.session_present)
        payloads = [m.payload for m in sub.received]
        seen = set(payloads)
        while len(seen) < total:
            message = yield again.next_message()
            payloads.append(message.payload)
            seen.add(message.payload)
        self.assertEqual(seen, {b"%d" % i for i in range(total)})
        first_copies = list(dict.fromkeys(payloads))
        self.assertEqual(first_copies, [b"%d" % i for i in range(total)])  # [MQTT-4.6.0-6]

    @inlineCallbacks
    def test_inflight_resent_with_dup_in_order(self):
        """Unacknowledged QoS 1 messages are resent with DUP=1 and their packet ids, in the
        original order, before the messages queued while offline [MQTT-4.4.0-1]."""
        raw = yield self.raw("unacker", clean=False)
        raw.send(Subscribe(1, [Subscription("inflight/t", 1)]))
        suback = yield raw.expect(SubAck)
        self.assertEqual(suback.reason_codes, [1])
        pub = yield self.paho("inflight-pub")
        for i in range(5):
            yield pub.publish("inflight/t", b"first-%d" % i, 1)
        originals = []
        for _ in range(5):
            packet = yield raw.expect(Publish)
            self.assertFalse(packet.dup)
            originals.append(packet)
        yield raw.abort()  # never acknowledged
        yield self.wait_until(self.offline("unacker"))
        for i in range(3):
            yield pub.publish("inflight/t", b"later-%d" % i, 1)
        again = yield self.raw()
        self.addCleanup(again.abort)
        connack = yield again.connect("unacker", clean=False)
        self.assertTrue(connack.session_present)
        resent = []
        for _ in range(5):
            resent.append((yield again.expect(Publish)))
        self.assertEqual([(p.packet_id, p.payload, p.qos) for p in resent],
                         [(p.packet_id, p.payload, p.qos) for p in originals])
        self.assertTrue(all(p.dup for p in resent))  # [MQTT-3.3.1-1]
        later = []
        for _ in range(3):
            later.append((yield again.expect(Publish)))
        self.assertEqual([p.payload for p in later], [b"later-%d" % i for i in range(3)])
        self.assertFalse(any(p.dup for p in later))
        for packet in resent + later:
            again.send(PubAck(packet.packet_id))
        yield self.wait_until(lambda: not self.session("unacker").inflight_ids)


class QoS2Tests(BrokerTestCase):
    """QoS 2 reaches each subscriber exactly once, also across reconnects [MQTT-4.3.3]."""

    @inlineCallbacks
    def test_qos2_end_to_end(self):
        """A QoS 2 message between paho clients arrives once, at QoS 2."""
        sub = yield self.paho("q2-sub")
        yield sub.subscribe(("q2/t", 2))
        pub = yield self.paho("q2-pub")
        yield pub.publish("q2/t", b"exactly once", 2)
        message = yield sub.next_message()
        self.assertEqual((message.payload, message.qos), (b"exactly once", 2))
        yield sub.no_message()

    @inlineCallbacks
    def test_subscriber_reconnects_after_pubrec(self):
        """A subscriber that sent PUBREC and dropped before PUBCOMP gets PUBREL again on
        reconnect, not the PUBLISH [MQTT-4.4.0-1]."""
        raw = yield self.raw("q2-raw-sub", clean=False)
        raw.send(Subscribe(1, [Subscription("q2r/t", 2)]))
        yield raw.expect(SubAck)
        pub = yield self.paho("q2r-pub")
        yield pub.publish("q2r/t", b"once", 2)
        publish = yield raw.expect(Publish)
        self.assertEqual(publish.qos, 2)
        raw.send(PubRec(publish.packet_id))
        pubrel = yield raw.expect(PubRel)
        self.assertEqual(pubrel.packet_id, publish.packet_id)
        yield raw.abort()  # gone before PUBCOMP
        yield self.wait_until(self.offline("q2-raw-sub"))
        again = yield self.raw()
        self.addCleanup(again.abort)
        connack = yield again.connect("q2-raw-sub", clean=False)
        self.assertTrue(connack.session_present)
        pubrel = yield again.expect(PubRel)
        self.assertEqual(pubrel.packet_id, publish.packet_id)
        again.send(PubComp(pubrel.packet_id))
        again.send(PingReq())
        yield again.expect(PingResp)  # nothing else (no second PUBLISH) came first
        yield self.wait_until(lambda: not self.session("q2-raw-sub").inflight_ids)

    @inlineCallbacks
    def test_subscriber_reconnects_before_pubrec(self):
        """A subscriber that dropped before PUBREC gets the PUBLISH again with DUP=1 and the
        same packet id."""
        raw = yield self.raw("q2-early", clean=False)
        raw.send(Subscribe(1, [Subscription("q2e/t", 2)]))
        yield raw.expect(SubAck)
        pub = yield self.paho("q2e-pub")
        yield pub.publish("q2e/t", b"again", 2)
        publish = yield raw.expect(Publish)
        yield raw.abort()
        yield self.wait_until(self.offline("q2-early"))
        again = yield self.raw()
        self.addCleanup(again.abort)
        yield again.connect("q2-early", clean=False)
        resent = yield again.expect(Publish)
        self.assertEqual((resent.packet_id, resent.payload, resent.qos, resent.dup),
                         (publish.packet_id, b"again", 2, True))
        again.send(PubRec(resent.packet_id))
        pubrel = yield again.expect(PubRel)
        again.send(PubComp(pubrel.packet_id))
        yield self.wait_until(lambda: not self.session("q2-early").inflight_ids)

    @inlineCallbacks
    def test_publisher_resends_publish_after_reconnect(self):
        """A publisher that got PUBREC, dropped before PUBREL and resends the PUBLISH with
        DUP=1 on reconnect has its message delivered once [MQTT-4.3.3-9]."""
        sub = yield self.paho("q2p-sub")
        yield sub.subscribe(("q2p/t", 2))
        raw = yield self.raw("q2-raw-pub", clean=False)
        raw.send(Publish("q2p/t", b"only once", 2, False, False, 7))
        pubrec = yield raw.expect(PubRec)
        self.assertEqual(pubrec.packet_id, 7)
        yield raw.abort()  # gone before PUBREL
        yield self.wait_until(self.offline("q2-raw-pub"))
        again = yield self.raw()
        self.addCleanup(again.abort)
        connack = yield again.connect("q2-raw-pub", clean=False)
        self.assertTrue(connack.session_present)
        again.send(Publish("q2p/t", b"only once", 2, False, True, 7))
        pubrec = yield again.expect(PubRec)
        self.assertEqual(pubrec.packet_id, 7)
        again.send(PubRel(7))
        pubcomp = yield again.expect(PubComp)
        self.assertEqual(pubcomp.packet_id, 7)
        message = yield sub.next_message()
        self.assertEqual((message.payload, message.qos), (b"only once", 2))
        yield sub.no_message()

    @inlineCallbacks
    def test_publisher_resends_pubrel_after_reconnect(self):
        """A publisher that got PUBREC and resends only PUBREL on reconnect gets PUBCOMP;
        the subscriber has the message once."""
        sub = yield self.paho("q2rel-sub")
        yield sub.subscribe(("q2rel/t", 2))
        raw = yield self.raw("q2-rel-pub", clean=False)
        raw.send(Publish("q2rel/t", b"once more", 2, False, False, 9))
        yield raw.expect(PubRec)
        yield raw.abort()
        yield self.wait_until(self.offline("q2-rel-pub"))
        again = yield self.raw()
        self.addCleanup(again.abort)
        yield again.connect("q2-rel-pub", clean=False)
        again.send(PubRel(9))
        pubcomp = yield again.expect(PubComp)
        self.assertEqual(pubcomp.packet_id, 9)
        message = yield sub.next_message()
        self.assertEqual(message.payload, b"once more")
        yield sub.no_message()
        self.assertEqual(self.session("q2-rel-pub").inbound_qos2, set())

    @inlineCallbacks
    def test_duplicate_publish_before_pubrel_routed_once(self):
        """A QoS 2 PUBLISH resent on the same connection before PUBREL is routed once."""
        sub = yield self.paho("q2d-sub")
        yield sub.subscribe(("q2d/t", 2))
        raw = yield self.raw("q2d-pub")
        raw.send(Publish("q2d/t", b"dup", 2, False, False, 3))
        yield raw.expect(PubRec)
        raw.send(Publish("q2d/t", b"dup", 2, False, True, 3))
        yield raw.expect(PubRec)
        raw.send(PubRel(3))
        yield raw.expect(PubComp)
        message = yield sub.next_message()
        self.assertEqual(message.payload, b"dup")
        yield sub.no_message()


class QoSTests(BrokerTestCase):
    """Delivered QoS and ordering [MQTT-3.8.4-6, MQTT-4.6.0]."""

    @inlineCallbacks
    def test_delivered_qos_is_minimum_of_publish_and_granted(self):
        """For each of the 9 (publish QoS, granted QoS) pairs the subscriber receives the
        message at min(publish, granted)."""
        subscribers = {}
        for granted in (0, 1, 2):
            client = yield self.paho(f"qos-sub-{granted}")
            codes = yield client.subscribe(("qos/#", granted))
            self.assertEqual(codes, [granted])  # [MQTT-3.9.3-1]
            subscribers[granted] = client
        pub = yield self.paho("qos-pub")
        for qos in (0, 1, 2):
            yield pub.publish(f"qos/{qos}", b"p%d" % qos, qos)
        for granted, client in subscribers.items():
            received = yield client.collect(3)
            got = sorted((m.topic, m.qos) for m in received)
            want = [(f"qos/{qos}", min(qos, granted)) for qos in (0, 1, 2)]
            self.assertEqual(got, want, f"granted QoS {granted}")

    @inlineCallbacks
    def test_order_kept_per_topic(self):
        """200 QoS 1 messages on one topic arrive in the order they were published."""
        sub = yield self.paho("order-sub")
        yield sub.subscribe(("order/t", 1))
        pub = yield self.paho("order-pub")
        yield gatherResults([pub.publish("order/t", b"%03d" % i, 1) for i in range(200)])
        received = yield sub.collect(200)
        self.assertEqual([m.payload for m in received], [b"%03d" % i for i in range(200)])
        self.assertTrue(all(m.qos == 1 for m in received))

    @inlineCallbacks
    def test_order_kept_per_topic_qos2(self):
        """100 QoS 2 messages on one topic arrive once each, in order."""
        sub = yield self.paho("order2-sub")
        yield sub.subscribe(("order2/t", 2))
        pub = yield self.paho("order2-pub")
        yield gatherResults([pub.publish("order2/t", b"%03d" % i, 2) for i in range(100)])
        received = yield sub.collect(100)
        self.assertEqual([m.payload for m in received], [b"%03d" % i for i in range(100)])
        yield sub.no_message(0.1)
