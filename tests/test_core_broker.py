"""Sans-IO tests of the MQTT 3.1.1 broker core on a fake clock.

``mqtt_twisted.testing.make_broker`` builds a broker on a ``task.Clock`` with a
memory store; ``FakeClient`` feeds it packets and decodes what it writes.  No
reactor runs: time moves only with ``clock.advance``.  The classes are trial
``SynchronousTestCase``s so that both trial and pytest run them.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.adapters.listener import ListenerSettings
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
    UnsubAck,
    Will,
    encode,
)
from mqtt_twisted.core import inspection
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.records import packet_id_for
from mqtt_twisted.testing import FakeClient, FakeTransport, make_broker


def publishes(packets):
    return [p for p in packets if isinstance(p, Publish)]


class BrokerTestCase(SynchronousTestCase):
    settings: BrokerSettings | None = None

    def setUp(self):
        self.broker, self.clock = make_broker(self.settings, connect_timeout=10.0)

    def client(self, client_id=None, **connect):
        """A FakeClient, connected (and its CONNACK checked) when ``client_id`` is given."""
        c = FakeClient(self.broker)
        if client_id is not None:
            packets = c.connect(client_id, **connect)
            self.assertEqual(len(packets), 1)
            self.assertIsInstance(packets[0], ConnAck)
            self.assertEqual(packets[0].reason_code, 0)
            c.connack = packets[0]
        return c

    def session(self, client_id):
        """A snapshot of ``client_id``'s session, which must exist."""
        info = inspection.session_info(self.broker, client_id)
        self.assertIsNotNone(info, f"no session for {client_id!r}")
        return info

    def assertOwnsSession(self, client_id, client):
        """``client``'s connection is the one attached to ``client_id``'s live session."""
        info = inspection.connection_info(self.broker, client.connection)
        self.assertIsNotNone(info, "the broker does not track the connection")
        self.assertEqual((info.client_id, info.attached), (client_id, True))

    def subscriber(self, client_id, *filters, qos=0, **connect):
        c = self.client(client_id, **connect)
        packets = c.subscribe(*filters, qos=qos)
        self.assertEqual(packets, [SubAck(1, [qos] * len(filters))])
        return c


class ConnectTests(BrokerTestCase):
    """CONNECT validation and CONNACK [MQTT-3.1, MQTT-3.2]."""

    def test_connect_accepted(self):
        """A valid CONNECT gets CONNACK 0 without session present and opens a session."""
        c = self.client()
        self.assertEqual(c.connect("a"), [ConnAck(False, 0)])
        self.assertOwnsSession("a", c)
        self.assertEqual(self.broker.stats.clients_connected, 1)

    def test_unsupported_protocol_level(self):
        """Protocol level 6 gets CONNACK 0x01 and the connection is closed."""
        c = self.client()
        c.send_bytes(encode(Connect("a", 6, protocol_name="MQTT")))
        self.assertEqual(c.received(), [ConnAck(False, 0x01)])  # [MQTT-3.1.2-2]
        self.assertTrue(c.transport.closed)
        self.assertNotIn("a", inspection.session_ids(self.broker))

    def test_first_packet_must_be_connect(self):
        """A first packet other than CONNECT closes the connection without an answer."""
        c = self.client()
        c.send(PingReq())  # [MQTT-3.1.0-1]
        self.assertTrue(c.transport.closed)
        self.assertEqual(c.received(), [])

    def test_second_connect_is_a_violation(self):
        """A second CONNECT closes the connection [MQTT-3.1.0-2]."""
        c = self.client("a")
        c.send(Connect("a", 4, True, 0))
        self.assertTrue(c.transport.closed)
        self.assertEqual(c.received(), [])
        self.assertEqual(self.broker.stats.protocol_errors, 1)

    def test_empty_client_id_with_clean_session_is_assigned_one(self):
        """An empty client id with clean session 1 gets a unique server-assigned id."""
        a = self.client("")  # [MQTT-3.1.3-6]
        b = self.client("")
        ids = {inspection.connection_info(self.broker, c.connection).client_id for c in (a, b)}
        self.assertEqual(len(ids), 2)  # [MQTT-3.1.3-7]
        prefix = self.broker.settings.assigned_id_prefix
        self.assertTrue(all(i.startswith(prefix) for i in ids))
        self.assertEqual(inspection.session_ids(self.broker), ids)

    def test_empty_client_id_without_clean_session_refused(self):
        """An empty client id with clean session 0 gets CONNACK 0x02 and a close."""
        c = self.client()
        self.assertEqual(c.connect("", clean=False), [ConnAck(False, 0x02)])  # [MQTT-3.1.3-8]
        self.assertTrue(c.transport.closed)
        self.assertEqual(inspection.session_ids(self.broker), set())

    def test_connect_timeout(self):
        """A connection without CONNECT is aborted when the connect timeout passes."""
        c = self.client()
        self.clock.advance(9.9)
        self.assertFalse(c.transport.closed)
        self.clock.advance(0.2)
        self.assertTrue(c.transport.aborted)
        self.assertEqual(self.broker.stats.connect_timeouts, 1)

    def test_connect_in_time_cancels_timeout(self):
        """A client that connected in time is not closed by the connect timeout."""
        c = self.client("a")
        self.clock.advance(60)
        self.assertFalse(c.transport.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_listener_connect_timeout_zero_means_none(self):
        """A listener whose connectTimeout is 0 ("no limit") sets no CONNECT deadline, even
        when the broker-wide default is 10 s."""
        transport = FakeTransport()
        listener = ListenerSettings("mqtt", "tcp:1883", 0, 0.0)
        self.broker.build_connection(transport, "peer", listener)
        self.clock.advance(60)
        self.assertFalse(transport.closed)

    def test_listener_connect_timeout_overrides_default(self):
        """A listener's own connectTimeout applies instead of the broker-wide one."""
        transport = FakeTransport()
        listener = ListenerSettings("mqtt", "tcp:1883", 0, 2.0)
        self.broker.build_connection(transport, "peer", listener)
        self.clock.advance(2.1)
        self.assertTrue(transport.aborted)

    def test_nothing_processed_after_refused_connect(self):
        """Packets following a refused CONNECT in the same read are not processed
        [MQTT-3.1.4-5]."""
        watcher = self.subscriber("w", "t")
        c = self.client()
        c.send_bytes(encode(Connect("", 4, False, 0)) + encode(Publish("t", b"sneaked")))
        self.assertEqual(c.received(), [ConnAck(False, 0x02)])
        self.assertEqual(publishes(watcher.received()), [])

    def test_partial_connect_times_out(self):
        """Half a CONNECT does not stop the connect timeout."""
        c = self.client()
        c.send_bytes(encode(Connect("a", 4, True, 0))[:5])
        self.clock.advance(10.1)
        self.assertTrue(c.transport.closed)


class KeepAliveTests(BrokerTestCase):
    """Keep alive [MQTT-3.1.2-24]: closed after 1.5 x keep alive without a packet."""

    def test_closed_after_one_and_a_half_keepalives(self):
        """A silent client with keep alive 10 is closed at 15 s, not before."""
        c = self.client("a", keep_alive=10)
        self.clock.advance(14.9)
        self.assertFalse(c.transport.closed)
        self.clock.advance(0.2)
        self.assertTrue(c.transport.closed)
        self.assertEqual(self.broker.stats.keepalive_timeouts, 1)

    def test_any_packet_resets_keepalive(self):
        """PINGREQ (any packet) restarts the keep alive period and is answered."""
        c = self.client("a", keep_alive=10)
        self.clock.advance(10)
        self.assertEqual(c.ping(), [PingResp()])  # [MQTT-3.12.4-1]
        self.clock.advance(14.9)
        self.assertFalse(c.transport.closed)
        self.clock.advance(0.2)
        self.assertTrue(c.transport.closed)

    def test_keepalive_zero_never_times_out(self):
        """Keep alive 0 turns the mechanism off [MQTT-3.1.2-23]."""
        c = self.client("a", keep_alive=0)
        self.clock.advance(10**6)
        self.assertFalse(c.transport.closed)


class WillTests(BrokerTestCase):
    """Wills [MQTT-3.1.2-8..15]."""

    def setUp(self):
        super().setUp()
        self.watcher = self.subscriber("watcher", "will/#", qos=2)

    def will_publishes(self):
        return publishes(self.watcher.received())

    def test_will_on_drop(self):
        """A connection lost without DISCONNECT publishes the will at its QoS."""
        c = self.client("a", will=Will("will/a", b"bye", 1))
        c.drop()
        [will] = self.will_publishes()
        self.assertEqual((will.topic, will.payload, will.qos, will.retain),
                         ("will/a", b"bye", 1, False))
        self.assertEqual(self.broker.stats.wills_published, 1)

    def test_no_will_after_disconnect(self):
        """DISCONNECT discards the will [MQTT-3.14.4-3]."""
        c = self.client("a", will=Will("will/a", b"bye", 1))
        c.disconnect()
        self.assertEqual(self.will_publishes(), [])
        self.assertEqual(self.broker.stats.wills_published, 0)

    def test_will_on_keepalive_timeout(self):
        """A keep alive timeout publishes the will."""
        c = self.client("a", keep_alive=1, will=Will("will/a", b"timeout", 0))
        self.clock.advance(1.6)
        self.assertTrue(c.transport.closed)
        c.drop()  # the transport reports the close
        self.assertEqual([p.payload for p in self.will_publishes()], [b"timeout"])

    def test_will_on_protocol_violation(self):
        """A connection closed for a protocol violation publishes the will."""
        c = self.client("a", will=Will("will/a", b"violation", 0))
        c.send_bytes(bytes((0x36, 2, 0, 0)))  # PUBLISH with QoS 3 [MQTT-3.3.1-4]
        self.assertTrue(c.transport.closed)
        c.drop()
        self.assertEqual([p.payload for p in self.will_publishes()], [b"violation"])

    def test_will_of_persistent_session_published_once(self):
        """A persistent session's will is published on drop and then forgotten: the next
        connection without a will leaves none behind [MQTT-3.1.2-10]."""
        c = self.client("a", clean=False, will=Will("will/a", b"once", 0))
        c.drop()
        self.assertEqual([p.payload for p in self.will_publishes()], [b"once"])
        again = self.client("a", clean=False)
        again.drop()
        self.assertEqual(self.will_publishes(), [])

    def test_will_on_takeover(self):
        """A connection taken over publishes its will."""
        self.client("a", will=Will("will/a", b"taken", 0))
        self.client("a")
        self.assertEqual([p.payload for p in self.will_publishes()], [b"taken"])

    def test_retained_will(self):
        """A will with retain=1 is stored as a retained message."""
        c = self.client("a", will=Will("will/r", b"retained", 1, True))
        c.drop()
        live = self.will_publishes()
        self.assertEqual([(p.payload, p.retain) for p in live], [(b"retained", False)])
        later = self.client("later")
        packets = later.subscribe("will/r", qos=2)
        [retained] = publishes(packets)
        self.assertEqual((retained.payload, retained.qos, retained.retain),
                         (b"retained", 1, True))


class TakeoverTests(BrokerTestCase):
    """A second connection with a client id in use takes the session over [MQTT-3.1.4-2]."""

    def test_takeover_closes_old_connection(self):
        """The old connection is closed; the new one owns the session."""
        old = self.client("a")
        new = self.client("a")
        self.assertTrue(old.transport.closed)
        self.assertFalse(new.transport.closed)
        self.assertOwnsSession("a", new)
        self.assertEqual(self.broker.stats.takeovers, 1)
        self.assertEqual(self.broker.stats.clients_connected, 1)

    def test_old_connection_lost_later_is_harmless(self):
        """The old transport reporting its close afterwards leaves the new session alone."""
        old = self.client("a")
        new = self.subscriber("a", "t", qos=1)
        old.drop()
        self.assertOwnsSession("a", new)
        self.client("p").publish("t", b"x", 1)
        self.assertEqual([p.payload for p in publishes(new.received())], [b"x"])

    def test_takeover_of_persistent_session_keeps_it(self):
        """Taking over a clean-session-0 session with clean session 0 resumes it."""
        self.subscriber("a", "t", qos=1, clean=False)
        new = self.client("a", clean=False)
        self.assertTrue(new.connack.session_present)  # [MQTT-3.2.2-2]
        self.client("p").publish("t", b"x", 1)
        self.assertEqual([p.payload for p in publishes(new.received())], [b"x"])


class PersistentSessionTests(BrokerTestCase):
    """Clean session 0 [MQTT-3.1.2-4, MQTT-3.1.2-5]."""

    settings = BrokerSettings(max_queued=3)

    def test_offline_messages_queued_and_delivered(self):
        """QoS 1 messages for an offline persistent session arrive on reconnect."""
        sub = self.subscriber("s", "t", qos=1, clean=False)
        sub.drop()
        pub = self.client("p")
        for i in range(3):
            pub.publish("t", b"%d" % i, 1)
        pub.publish("t", b"qos0", 0)  # QoS 0 is not kept for offline sessions
        again = self.client()
        packets = again.connect("s", clean=False)
        self.assertEqual(packets[0], ConnAck(True, 0))
        self.assertEqual([(p.payload, p.qos, p.dup) for p in publishes(packets)],
                         [(b"0", 1, False), (b"1", 1, False), (b"2", 1, False)])

    def test_queue_bound_drops_oldest(self):
        """With max_queued=3, a fourth and fifth message push out the two oldest, and the
        drops are counted."""
        sub = self.subscriber("s", "t", qos=1, clean=False)
        sub.drop()
        pub = self.client("p")
        for i in range(5):
            pub.publish("t", b"%d" % i, 1)
        session = self.session("s")
        self.assertEqual(session.queued, 3)
        self.assertEqual(session.dropped, 2)
        self.assertEqual(self.broker.stats.messages_dropped, 2)
        again = self.client()
        packets = again.connect("s", clean=False)
        self.assertEqual([p.payload for p in publishes(packets)], [b"2", b"3", b"4"])

    def test_clean_session_discards_state(self):
        """CONNECT with clean session 1 discards the stored session [MQTT-3.1.2-6]."""
        sub = self.subscriber("s", "t", qos=1, clean=False)
        sub.drop()
        self.client("p").publish("t", b"lost", 1)
        again = self.client()
        packets = again.connect("s", clean=True)
        self.assertEqual(packets, [ConnAck(False, 0)])
        self.assertEqual(inspection.subscription_count(self.broker), 0)

    def test_clean_session_ends_with_connection(self):
        """A clean-session-1 session and its subscriptions go with the connection."""
        sub = self.subscriber("s", "t", qos=1)
        sub.drop()
        self.assertNotIn("s", inspection.session_ids(self.broker))
        self.assertEqual(inspection.subscription_count(self.broker), 0)

    def test_inflight_resent_with_dup_then_queue(self):
        """Unacknowledged messages are resent with DUP=1 and their packet ids, in order,
        before the queued ones [MQTT-4.4.0-1]."""
        sub = self.subscriber("s", "t", qos=1, clean=False)
        pub = self.client("p")
        for i in range(2):
            pub.publish("t", b"inflight-%d" % i, 1)
        first = publishes(sub.received())
        sub.drop()
        pub.publish("t", b"queued", 1)
        again = self.client()
        packets = publishes(again.connect("s", clean=False))
        self.assertEqual([(p.payload, p.packet_id, p.dup) for p in packets],
                         [(b"inflight-0", first[0].packet_id, True),
                          (b"inflight-1", first[1].packet_id, True),
                          (b"queued", packets[2].packet_id, False)])
        self.assertNotIn(packets[2].packet_id, {first[0].packet_id, first[1].packet_id})

    def test_pubrel_resent_after_pubrec(self):
        """A QoS 2 message PUBREC'd before the drop is completed with PUBREL on reconnect,
        not sent again."""
        sub = self.subscriber("s", "t", qos=2, clean=False)
        self.client("p").publish("t", b"x", 2)
        [publish] = publishes(sub.received())
        sub.send(PubRec(publish.packet_id))
        self.assertEqual(sub.received(), [PubRel(publish.packet_id)])
        sub.drop()
        again = self.client()
        packets = again.connect("s", clean=False)
        self.assertEqual(packets, [ConnAck(True, 0), PubRel(publish.packet_id)])
        again.send(PubComp(publish.packet_id))
        self.assertEqual(self.session("s").inflight_ids, ())


class InflightTests(BrokerTestCase):
    """The outbound window and packet identifiers."""

    settings = BrokerSettings(max_inflight=2)

    def test_window_queues_beyond_max_inflight(self):
        """With max_inflight=2 a third QoS 1 message waits until a PUBACK frees a slot."""
        sub = self.subscriber("s", "t", qos=1)
        pub = self.client("p")
        for i in range(3):
            pub.publish("t", b"%d" % i, 1)
        sent = publishes(sub.received())
        self.assertEqual([p.payload for p in sent], [b"0", b"1"])
        self.assertEqual(self.session("s").queued, 1)
        sub.send(PubAck(sent[0].packet_id))
        [third] = publishes(sub.received())
        self.assertEqual(third.payload, b"2")
        self.assertEqual(self.session("s").queued, 0)

    def test_qos2_slot_freed_by_pubcomp_not_pubrec(self):
        """A QoS 2 message holds its slot until PUBCOMP."""
        sub = self.subscriber("s", "t", qos=2)
        pub = self.client("p")
        for i in range(3):
            pub.publish("t", b"%d" % i, 2, packet_id=10 + i)
            pub.send(PubRel(10 + i))
        first, _second = publishes(sub.received())
        sub.send(PubRec(first.packet_id))
        self.assertEqual(sub.received(), [PubRel(first.packet_id)])
        sub.send(PubComp(first.packet_id))
        [third] = publishes(sub.received())
        self.assertEqual(third.payload, b"2")

    def test_qos0_not_limited_by_window(self):
        """QoS 0 messages are not held back by a full QoS 1/2 window."""
        sub = self.subscriber("s", "t", qos=1)
        pub = self.client("p")
        pub.publish("t", b"a", 1)
        pub.publish("t", b"b", 1)
        sub.received()
        sub.subscribe("q0", qos=0)
        pub.publish("q0", b"zero", 0)
        self.assertEqual([p.payload for p in publishes(sub.received())], [b"zero"])


class PacketIdTests(BrokerTestCase):
    """Packet identifiers in use are never reused [MQTT-2.3.1-2]."""

    def test_allocation_skips_ids_in_flight(self):
        """Wrapping around past 65535, allocation skips the ids still in flight."""
        sub = self.subscriber("s", "t", qos=1)
        pub = self.client("p")
        for i in range(3):
            pub.publish("t", b"%d" % i, 1)
        first = publishes(sub.received())
        self.assertEqual([p.packet_id for p in first], [1, 2, 3])
        sub.send(PubAck(2))
        # Set-up through an internal: nothing public moves the sequence numbers, which
        # packet ids follow (records.packet_id_for).
        self.broker.sessions["s"]._next_seq = 65535  # as if 65 531 more messages had gone by
        for i in range(3):
            pub.publish("t", b"late-%d" % i, 1)
        ids = [p.packet_id for p in publishes(sub.received())]
        self.assertEqual(ids, [65535, 2, 4])  # 1 and 3 are still in flight

    def test_ids_follow_sequence_numbers(self):
        """A message's packet id is the one its sequence number gives when that id is
        free (so a store need not write it), also past 65535."""
        sub = self.subscriber("s", "t", qos=1)
        pub = self.client("p")
        self.broker.sessions["s"]._next_seq = 65534  # (an internal, as above)
        for i in range(3):
            pub.publish("t", b"%d" % i, 1)
        self.assertEqual([p.packet_id for p in publishes(sub.received())], [65534, 65535, 1])
        self.assertEqual([packet_id_for(s) for s in (65534, 65535, 65536)], [65534, 65535, 1])

    def test_acknowledged_ids_reused(self):
        """Ids are unique among messages in flight, never zero."""
        sub = self.subscriber("s", "t", qos=1)
        pub = self.client("p")
        seen = set()
        for i in range(50):
            pub.publish("t", b"%d" % i, 1)
            [p] = publishes(sub.received())
            self.assertNotEqual(p.packet_id, 0)
            self.assertNotIn(p.packet_id, set(self.session("s").inflight_ids) - {p.packet_id})
            seen.add(p.packet_id)
            sub.send(PubAck(p.packet_id))
        self.assertEqual(self.session("s").inflight_ids, ())


class QoSTests(BrokerTestCase):
    """The publisher-side state machines and delivered QoS."""

    def test_qos1_puback(self):
        """A QoS 1 PUBLISH is answered with PUBACK carrying its packet id."""
        pub = self.client("p")
        self.assertEqual(pub.publish("t", b"x", 1, packet_id=42), [PubAck(42)])

    def test_qos2_inbound_dedupe(self):
        """A QoS 2 PUBLISH resent before PUBREL is acknowledged but routed once
        [MQTT-4.3.3-9]; after PUBCOMP the id starts a new message."""
        sub = self.subscriber("s", "t", qos=2)
        pub = self.client("p")
        self.assertEqual(pub.publish("t", b"x", 2, packet_id=5), [PubRec(5)])
        pub.send(Publish("t", b"x", 2, False, True, 5))
        self.assertEqual(pub.received(), [PubRec(5)])
        self.assertEqual(len(publishes(sub.received())), 1)
        pub.send(PubRel(5))
        self.assertEqual(pub.received(), [PubComp(5)])
        self.assertEqual(self.session("p").inbound_qos2, set())
        self.assertEqual(pub.publish("t", b"y", 2, packet_id=5), [PubRec(5)])
        self.assertEqual([p.payload for p in publishes(sub.received())], [b"y"])

    def test_acks_in_publish_order(self):
        """PUBACKs and PUBRECs go out in the order their PUBLISHes came [MQTT-4.6.0-2]
        [MQTT-4.6.0-3]."""
        pub = self.client("p")
        ids = [9, 3, 7, 1, 5]
        pub.send_bytes(b"".join(encode(Publish("t", b"x", 1, False, False, i)) for i in ids))
        self.assertEqual(pub.received(), [PubAck(i) for i in ids])
        ids2 = [20, 12, 15]
        pub.send_bytes(b"".join(encode(Publish("t", b"x", 2, False, False, i)) for i in ids2))
        self.assertEqual(pub.received(), [PubRec(i) for i in ids2])

    def test_incoming_dup_not_propagated(self):
        """A PUBLISH received with DUP=1 is forwarded with DUP=0 [MQTT-3.3.1-3]."""
        sub = self.subscriber("s", "t", qos=1)
        pub = self.client("p")
        pub.send(Publish("t", b"x", 1, False, True, 4))
        self.assertEqual(pub.received(), [PubAck(4)])
        [p] = publishes(sub.received())
        self.assertFalse(p.dup)

    def test_pubrel_for_unknown_id_completes(self):
        """PUBREL for an id not awaiting release still gets PUBCOMP (3.1.1)."""
        pub = self.client("p")
        pub.send(PubRel(77))
        self.assertEqual(pub.received(), [PubComp(77)])

    def test_delivered_qos_is_minimum(self):
        """Delivered QoS is min(publish QoS, granted QoS) for every pair [MQTT-3.8.4-6]."""
        subs = {g: self.subscriber(f"s{g}", "t", qos=g) for g in (0, 1, 2)}
        pub = self.client("p")
        for q in (0, 1, 2):
            pub.publish("t", b"%d" % q, q, packet_id=100 + q if q else None)
            if q == 2:
                pub.send(PubRel(102))
            for g, sub in subs.items():
                [p] = publishes(sub.received())
                self.assertEqual(p.qos, min(q, g), f"publish {q} granted {g}")
                sub.ack(p)

    def test_order_per_topic(self):
        """Messages on one topic reach a subscriber in publish order, across the window."""
        sub = self.subscriber("s", "t", qos=1)
        pub = self.client("p")
        for i in range(100):
            pub.publish("t", b"%03d" % i, 1)
        got = []
        while len(got) < 100:
            batch = publishes(sub.received())
            self.assertTrue(batch)
            for p in batch:
                got.append(p.payload)
                sub.send(PubAck(p.packet_id))
        self.assertEqual(got, [b"%03d" % i for i in range(100)])


class RoutingTests(BrokerTestCase):
    """The topic router [MQTT-4.7]."""

    def test_wildcards(self):
        """'+' is one level; '#' is any number, including the parent level."""
        plus = self.subscriber("plus", "a/+/c")
        hash_ = self.subscriber("hash", "a/#")
        pub = self.client("p")
        for topic in ("a/b/c", "a", "a/b", "b/c"):
            pub.publish(topic, topic.encode())
        self.assertEqual([p.topic for p in publishes(plus.received())], ["a/b/c"])
        self.assertEqual([p.topic for p in publishes(hash_.received())],
                         ["a/b/c", "a", "a/b"])  # [MQTT-4.7.1-2]

    def test_dollar_topics(self):
        """'$' topics are not matched by filters starting with a wildcard [MQTT-4.7.2-1]."""
        hash_ = self.subscriber("hash", "#")
        plus = self.subscriber("plus", "+/x")
        other = self.subscriber("other", "$other/#")
        self.client("p").publish("$other/x", b"info")  # ($SYS itself is the broker's)
        self.assertEqual(publishes(hash_.received()), [])
        self.assertEqual(publishes(plus.received()), [])
        self.assertEqual([p.topic for p in publishes(other.received())], ["$other/x"])

    def test_overlapping_subscriptions_one_copy(self):
        """Overlapping filters of one client give one copy at the highest QoS
        [MQTT-3.3.5-1]."""
        sub = self.client("s")
        sub.subscribe("o/#", qos=0)
        sub.subscribe("o/+", qos=2)
        sub.subscribe("o/a", qos=1)
        self.client("p").publish("o/a", b"x", 2)
        [p] = publishes(sub.received())
        self.assertEqual(p.qos, 2)

    def test_invalid_filter_refused_in_suback(self):
        """SUBACK has 0x80 for an invalid filter and grants the others [MQTT-3.9.3-2]."""
        sub = self.client("s")
        packets = sub.subscribe("ok", "a/#/b", "ok2", qos=1)
        self.assertEqual(packets, [SubAck(1, [1, 0x80, 1])])
        self.assertEqual(set(self.session("s").subscriptions), {"ok", "ok2"})

    def test_unsubscribe_stops_delivery(self):
        """After UNSUBSCRIBE (answered with UNSUBACK) the filter gets nothing."""
        sub = self.subscriber("s", "t", "u")
        self.assertEqual(sub.unsubscribe("t"), [UnsubAck(2)])
        pub = self.client("p")
        pub.publish("t", b"x")
        pub.publish("u", b"y")
        self.assertEqual([p.topic for p in publishes(sub.received())], ["u"])


class RetainedTests(BrokerTestCase):
    """Retained messages [MQTT-3.3.1-5..11]."""

    def test_retained_set_and_sent_on_subscribe(self):
        """A retained message is stored and sent to a new subscriber with retain=1."""
        self.client("p").publish("r", b"kept", 1, retain=True)
        sub = self.client("s")
        packets = sub.subscribe("r", qos=1)
        self.assertIsInstance(packets[0], SubAck)  # [MQTT-3.3.1-9] after the SUBACK...
        [p] = publishes(packets)
        self.assertEqual((p.payload, p.retain, p.qos), (b"kept", True, 1))

    def test_live_forward_clears_retain(self):
        """A retained message published to a current subscriber arrives with retain=0."""
        sub = self.subscriber("s", "r")
        self.client("p").publish("r", b"live", 0, retain=True)
        [p] = publishes(sub.received())
        self.assertFalse(p.retain)

    def test_empty_retained_deletes(self):
        """A retained message with an empty payload removes the stored one
        [MQTT-3.3.1-10]."""
        pub = self.client("p")
        pub.publish("r", b"kept", 0, retain=True)
        pub.publish("r", b"", 0, retain=True)
        packets = self.client("s").subscribe("r")
        self.assertEqual(publishes(packets), [])

    def test_retained_replaced(self):
        """A newer retained message on a topic replaces the older one [MQTT-3.3.1-5]."""
        pub = self.client("p")
        pub.publish("r", b"old", 0, retain=True)
        pub.publish("r", b"new", 0, retain=True)
        [p] = publishes(self.client("s").subscribe("#"))
        self.assertEqual(p.payload, b"new")
