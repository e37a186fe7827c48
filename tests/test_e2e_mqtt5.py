"""End-to-end MQTT 5.0: CONNECT and CONNACK (issue 4, first section).

Session expiry, receive maximum and maximum packet size in both directions,
server keep alive, assigned client identifiers, the capabilities CONNACK
advertises, reason strings and request/response information, against a real
broker on 127.0.0.1 with paho-mqtt 2.x clients in MQTTv5 mode (and raw clients
speaking our codec where a test must break a rule paho will not break).

The other MQTT 5 end-to-end tests are in ``tests/test_e2e_v5_*.py``.  Timers run
on the real clock with intervals of about a second.
"""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks

from mqtt_twisted.codec import (
    Disconnect,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
)
from mqtt_twisted.constants import PropertyId as P
from mqtt_twisted.constants import ReasonCode as RC
from mqtt_twisted.core import inspection
from mqtt_twisted.core.settings import BrokerSettings

try:
    from tests.pahov5 import PacketTypes, V5TestCase, props
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from pahov5 import PacketTypes, V5TestCase, props  # type: ignore[no-redef]

NEVER = 0xFFFFFFFF


class SessionExpiryTests(V5TestCase):
    """Session expiry interval: 0, a value, 0xFFFFFFFF, and DISCONNECT changing it."""

    @inlineCallbacks
    def test_expiry_zero_ends_session_with_connection(self):
        """With no (or a zero) session expiry the session ends when the connection does."""
        client = yield self.paho5("se-zero", clean_start=False)
        yield client.subscribe(("se/zero", 1))
        yield client.disconnect()
        yield self.wait_until(lambda: "se-zero" not in inspection.session_ids(self.broker))
        self.assertEqual(inspection.subscription_count(self.broker), 0)
        again = yield self.paho5("se-zero", clean_start=False)
        self.assertFalse(again.connack.session_present)

    @inlineCallbacks
    def test_expiry_value_keeps_session_then_frees_it(self):
        """A 1 s expiry keeps the session across a quick reconnect, then frees it after 1 s."""
        sei = {"SessionExpiryInterval": 1}
        client = yield self.paho5("se-one", clean_start=False, connect_properties=sei)
        yield client.subscribe(("se/one", 1))
        yield client.kill()
        yield self.wait_until(self.offline("se-one"))
        pub = yield self.paho5("se-pub")
        yield pub.publish("se/one", b"kept", 1)
        back = yield self.paho5("se-one", clean_start=False, connect_properties=sei)
        self.assertTrue(back.connack.session_present)  # [MQTT-3.1.2-23]
        message = yield back.next_message()
        self.assertEqual(message.payload, b"kept")
        yield back.kill()
        yield self.wait_until(self.offline("se-one"))
        gone_at = self.reactor.seconds()
        yield self.sleep(0.5)
        self.assertIn("se-one", inspection.session_ids(self.broker))  # not before the interval
        yield self.wait_until(lambda: "se-one" not in inspection.session_ids(self.broker))
        self.assertGreaterEqual(self.reactor.seconds() - gone_at, 0.9)
        self.assertEqual(inspection.subscription_count(self.broker), 0)  # its state is freed
        fresh = yield self.paho5("se-one", clean_start=False, connect_properties=sei)
        self.assertFalse(fresh.connack.session_present)

    @inlineCallbacks
    def test_expiry_max_value_never_expires(self):
        """0xFFFFFFFF means the session never expires: no expiry timer is set (on a
        broker without a maximum session expiry)."""
        self.service.broker.settings.max_session_expiry = None
        client = yield self.paho5("se-never", clean_start=False,
                                  connect_properties={"SessionExpiryInterval": NEVER})
        yield client.subscribe(("se/never", 1))
        yield client.kill()
        yield self.wait_until(self.offline("se-never"))
        session = self.session("se-never")
        self.assertIsNone(session.expiry_interval)
        self.assertFalse(session.expiry_pending)
        back = yield self.paho5("se-never", clean_start=False,
                                connect_properties={"SessionExpiryInterval": NEVER})
        self.assertTrue(back.connack.session_present)

    @inlineCallbacks
    def test_disconnect_shortens_expiry(self):
        """A DISCONNECT may lower the session expiry (100 s to 1 s): the new value applies."""
        client = yield self.paho5("se-short", clean_start=False,
                                  connect_properties={"SessionExpiryInterval": 100})
        yield client.subscribe(("se/short", 1))
        yield client.disconnect(0, {"SessionExpiryInterval": 1})
        yield self.wait_until(self.offline("se-short"))
        self.assertEqual(self.session("se-short").expiry_interval, 1)
        yield self.wait_until(lambda: "se-short" not in inspection.session_ids(self.broker))

    @inlineCallbacks
    def test_disconnect_expiry_zero_ends_session_now(self):
        """A DISCONNECT setting the expiry to 0 ends a persistent session at once."""
        client = yield self.paho5("se-end", clean_start=False,
                                  connect_properties={"SessionExpiryInterval": 100})
        yield client.subscribe(("se/end", 1))
        yield client.disconnect(0, {"SessionExpiryInterval": 0})
        yield self.wait_until(lambda: "se-end" not in inspection.session_ids(self.broker))

    @inlineCallbacks
    def test_disconnect_cannot_raise_expiry_from_zero(self):
        """DISCONNECT raising the expiry from CONNECT's 0 gets DISCONNECT 0x82; the session ends."""
        raw = yield self.raw5("se-raise")
        raw.send(Disconnect(0, {P.SESSION_EXPIRY_INTERVAL: 30}))
        answer = yield raw.expect(Disconnect)
        self.assertEqual(answer.reason_code, RC.PROTOCOL_ERROR)
        yield raw.wait_closed()
        yield self.wait_until(lambda: "se-raise" not in inspection.session_ids(self.broker))


class SessionExpiryCapTests(V5TestCase):
    """BrokerSettings(max_session_expiry=...) caps what clients ask for."""

    settings = BrokerSettings(max_session_expiry=1)

    @inlineCallbacks
    def test_capped_expiry_told_in_connack_and_applied(self):
        """A client asking for more than the cap gets the cap in CONNACK, and it applies."""
        client = yield self.paho5("cap", clean_start=False,
                                  connect_properties={"SessionExpiryInterval": NEVER})
        self.assertEqual(client.connack.prop("SessionExpiryInterval"), 1)
        yield client.kill()
        yield self.wait_until(self.offline("cap"))
        self.assertEqual(self.session("cap").expiry_interval, 1)
        yield self.wait_until(lambda: "cap" not in inspection.session_ids(self.broker))

    @inlineCallbacks
    def test_expiry_within_cap_not_echoed(self):
        """A client asking for no more than the cap gets no SESSION_EXPIRY_INTERVAL back."""
        client = yield self.paho5("within", connect_properties={"SessionExpiryInterval": 1})
        self.assertIsNone(client.connack.prop("SessionExpiryInterval"))


class ReceiveMaximumTests(V5TestCase):
    """Receive maximum towards the client: never more unacknowledged QoS 1/2 out."""

    @inlineCallbacks
    def test_client_receive_maximum_respected(self):
        """At most receive-maximum (2) QoS 1 PUBLISHes are unacked [MQTT-3.3.4-9]."""
        sub = yield self.paho5("rm-sub", manual_ack=True,
                               connect_properties={"ReceiveMaximum": 2})
        yield sub.subscribe(("rm/t", 1))
        pub = yield self.paho5("rm-pub")
        for i in range(6):
            yield pub.publish("rm/t", b"%d" % i, 1)
        first = yield sub.collect(2)
        yield sub.no_message()
        self.assertEqual(len(self.session("rm-sub").inflight_ids), 2)
        got = list(first)
        while len(got) < 6:
            sub.ack(got[len(got) - 2])
            got.append((yield sub.next_message()))
            self.assertLessEqual(len(self.session("rm-sub").inflight_ids), 2)
        self.assertEqual([m.payload for m in got], [b"%d" % i for i in range(6)])
        for message in got[-2:]:
            sub.ack(message)
        yield self.wait_until(lambda: not self.session("rm-sub").inflight_ids)

    @inlineCallbacks
    def test_qos2_counts_until_pubcomp(self):
        """QoS 2 messages count against the client's receive maximum until PUBCOMP."""
        raw = yield self.raw5("rm-q2", properties={P.RECEIVE_MAXIMUM: 1})
        raw.send(Subscribe(1, [Subscription("rm/q2", 2)]))
        yield raw.expect(SubAck)
        pub = yield self.paho5("rm-q2-pub")
        yield pub.publish("rm/q2", b"a", 2)
        yield pub.publish("rm/q2", b"b", 2)
        first = yield raw.expect(Publish)
        raw.send(PubRec(first.packet_id))
        yield raw.expect(PubRel)
        yield self.sleep(0.2)
        self.assertEqual(list(raw.packets.pending), [])  # still waiting for our PUBCOMP
        raw.send(PubComp(first.packet_id))
        second = yield raw.expect(Publish)
        self.assertEqual((first.payload, second.payload), (b"a", b"b"))


class BrokerReceiveMaximumTests(V5TestCase):
    """The broker's own receive maximum, advertised in CONNACK and enforced."""

    settings = BrokerSettings(receive_maximum=2)

    @inlineCallbacks
    def test_receive_maximum_advertised(self):
        """CONNACK tells a v5 client the broker's receive maximum."""
        client = yield self.paho5("rmx")
        self.assertEqual(client.connack.prop("ReceiveMaximum"), 2)

    @inlineCallbacks
    def test_exceeding_receive_maximum_disconnects_0x93(self):
        """A client with more unreleased QoS 2 PUBLISHes than allowed gets DISCONNECT 0x93."""
        raw = yield self.raw5("rmx-raw")
        for pid in (1, 2):
            raw.send(Publish("rmx/t", b"%d" % pid, 2, False, False, pid))
            ack = yield raw.expect(PubRec)
            self.assertEqual(ack.packet_id, pid)
        raw.send(Publish("rmx/t", b"3", 2, False, False, 3))  # no PUBREL sent: a third
        answer = yield raw.expect(Disconnect)
        self.assertEqual(answer.reason_code, RC.RECEIVE_MAXIMUM_EXCEEDED)
        yield raw.wait_closed()

    @inlineCallbacks
    def test_released_messages_free_the_window(self):
        """PUBREL frees a slot: a client within the maximum is never disconnected."""
        raw = yield self.raw5("rmx-ok")
        for pid in range(1, 8):
            raw.send(Publish("rmx/ok", b"x", 2, False, False, pid))
            yield raw.expect(PubRec)
            raw.send(PubRel(pid))
            comp = yield raw.expect(PubComp)
            self.assertEqual(comp.packet_id, pid)
        self.assertFalse(raw.is_closed)


class MaximumPacketSizeTests(V5TestCase):
    """The client's maximum packet size: oversize PUBLISHes are dropped for it alone."""

    @inlineCallbacks
    def test_oversize_outbound_dropped_for_that_client_only(self):
        """A PUBLISH above a client's maximum packet size is dropped for it alone."""
        small = yield self.paho5("mps-small", connect_properties={"MaximumPacketSize": 128})
        yield small.subscribe(("mps/t", 1))
        big = yield self.paho5("mps-big")
        yield big.subscribe(("mps/t", 1))
        pub = yield self.paho5("mps-pub")
        yield pub.publish("mps/t", b"x" * 1000, 1)
        yield pub.publish("mps/t", b"ok", 1)
        message = yield small.next_message()
        self.assertEqual(message.payload, b"ok")  # [MQTT-3.1.2-24] [MQTT-3.1.2-25]
        both = yield big.collect(2)
        self.assertEqual([len(m.payload) for m in both], [1000, 2])
        yield small.no_message()
        self.assertEqual(self.broker.stats.dropped_too_large, 1)
        yield self.wait_until(lambda: not self.session("mps-small").inflight_ids)
        self.assertFalse(small.is_disconnected)


class BrokerMaximumPacketSizeTests(V5TestCase):
    """The broker's maximum packet size, advertised and enforced with 0x95."""

    settings = BrokerSettings(max_packet_size=256)

    @inlineCallbacks
    def test_too_large_inbound_disconnects_0x95(self):
        """CONNACK advertises 256; a larger PUBLISH gets DISCONNECT 0x95 and is not routed."""
        watcher = yield self.paho5("mpx-watch")
        yield watcher.subscribe(("mpx/#", 0))
        client = yield self.paho5("mpx")
        self.assertEqual(client.connack.prop("MaximumPacketSize"), 256)
        client.client.publish("mpx/big", b"y" * 1000, 0)
        gone = yield client.disconnected
        self.assertEqual((gone.rc, gone.from_server), (RC.PACKET_TOO_LARGE, True))
        yield watcher.no_message()


class ServerKeepAliveTests(V5TestCase):
    """BrokerSettings(max_keepalive=1): larger or zero keep alives are replaced."""

    settings = BrokerSettings(max_keepalive=1)

    @inlineCallbacks
    def test_larger_keep_alive_replaced_and_paho_follows(self):
        """Keep alive 60 becomes SERVER_KEEP_ALIVE 1, which paho follows [MQTT-3.2.2-21]."""
        client = yield self.paho5("ka-60", keepalive=60)
        self.assertEqual(client.connack.prop("ServerKeepAlive"), 1)
        self.assertEqual(inspection.connection_info(self.broker, "ka-60").keep_alive, 1)
        yield self.sleep(2.2)
        self.assertFalse(client.is_disconnected)

    @inlineCallbacks
    def test_zero_keep_alive_replaced_and_enforced(self):
        """Keep alive 0 becomes SERVER_KEEP_ALIVE 1, enforced with 0x8D [MQTT-3.1.2-22]."""
        raw = yield self.raw5("ka-0", keep_alive=0)
        self.assertEqual(raw.connack.properties[P.SERVER_KEEP_ALIVE], 1)
        start = self.reactor.seconds()
        answer = yield raw.expect(Disconnect)
        self.assertEqual(answer.reason_code, RC.KEEP_ALIVE_TIMEOUT)
        self.assertGreaterEqual(self.reactor.seconds() - start, 1.4)
        yield raw.wait_closed()

    @inlineCallbacks
    def test_keep_alive_within_maximum_kept(self):
        """A keep alive within the maximum is kept: no SERVER_KEEP_ALIVE [MQTT-3.2.2-22]."""
        raw = yield self.raw5("ka-1", keep_alive=1)
        self.assertNotIn(P.SERVER_KEEP_ALIVE, raw.connack.properties)

    @inlineCallbacks
    def test_v311_keep_alive_above_maximum_refused(self):
        """A 3.1.1 client, which cannot be told another keep alive, is refused (rc 2)."""
        client = yield self.paho("ka-v3", connect=False, keepalive=60)
        result = yield client.connect()
        self.assertEqual(result.rc, RC.CLIENT_IDENTIFIER_NOT_VALID)  # paho 2's name for rc 2


class AssignedClientIdTests(V5TestCase):
    """An empty client id gets a server-made one, returned in CONNACK."""

    @inlineCallbacks
    def test_assigned_client_identifier(self):
        """Empty client ids get unique assigned identifiers [MQTT-3.1.3-6] [MQTT-3.1.3-7]."""
        first = yield self.paho5("")
        second = yield self.paho5("")
        ids = [c.connack.prop("AssignedClientIdentifier") for c in (first, second)]
        prefix = self.broker.settings.assigned_id_prefix
        self.assertTrue(all(i and i.startswith(prefix) for i in ids), ids)
        self.assertNotEqual(ids[0], ids[1])
        self.assertTrue(all(i in inspection.session_ids(self.broker) for i in ids))
        yield first.subscribe(("aci/t", 1))
        yield second.publish("aci/t", b"hi", 1)
        message = yield first.next_message()
        self.assertEqual(message.payload, b"hi")

    @inlineCallbacks
    def test_assigned_id_with_persistent_session(self):
        """v5 allows an empty id with clean start 0: the session outlives the connection."""
        client = yield self.paho5("", clean_start=False,
                                  connect_properties={"SessionExpiryInterval": 60})
        assigned = client.connack.prop("AssignedClientIdentifier")
        yield client.disconnect()
        yield self.wait_until(self.offline(assigned))

    @inlineCallbacks
    def test_no_assigned_id_for_named_client(self):
        """A client that names itself gets no ASSIGNED_CLIENT_IDENTIFIER."""
        client = yield self.paho5("named")
        self.assertIsNone(client.connack.prop("AssignedClientIdentifier"))


class DefaultCapabilitiesTests(V5TestCase):
    """What CONNACK says with the default settings."""

    @inlineCallbacks
    def test_default_connack_properties(self):
        """Default CONNACK: topic alias maximum 10, maximum packet size 1 MiB (the
        default limit, docs/limits.md), every capability flag and other limit absent."""
        client = yield self.paho5("defaults", connect_properties={
            "UserProperty": [("app", "test"), ("app", "again")]})  # accepted, ignored
        connack = client.connack
        self.assertEqual(connack.prop("TopicAliasMaximum"), 10)
        self.assertEqual(connack.prop("MaximumPacketSize"), 1 << 20)
        for name in ("MaximumQoS", "RetainAvailable", "WildcardSubscriptionAvailable",
                     "SharedSubscriptionAvailable", "SubscriptionIdentifierAvailable",
                     "ReceiveMaximum", "ServerKeepAlive",
                     "ResponseInformation", "ReasonString"):
            self.assertIsNone(connack.prop(name), name)


class RestrictedCapabilitiesTests(V5TestCase):
    """Capabilities turned off in BrokerSettings are advertised and enforced."""

    settings = BrokerSettings(maximum_qos=1, retain_available=False, shared_subscriptions=False,
                              wildcard_subscriptions=False, subscription_identifiers=False,
                              topic_alias_maximum=0)

    @inlineCallbacks
    def test_connack_advertises_limits(self):
        """CONNACK advertises maximum QoS 1 and the four availability flags at 0 [MQTT-3.2.2-9]."""
        client = yield self.paho5("caps")
        connack = client.connack
        self.assertEqual(connack.prop("MaximumQoS"), 1)
        self.assertEqual(connack.prop("RetainAvailable"), 0)
        self.assertEqual(connack.prop("WildcardSubscriptionAvailable"), 0)
        self.assertEqual(connack.prop("SharedSubscriptionAvailable"), 0)
        self.assertEqual(connack.prop("SubscriptionIdentifierAvailable"), 0)
        self.assertIsNone(connack.prop("TopicAliasMaximum"))

    @inlineCallbacks
    def test_suback_refuses_unavailable_features(self):
        """SUBACK: 0x9E shared, 0xA2 wildcard; QoS 2 is granted as 1 [MQTT-3.2.2-10]."""
        client = yield self.paho5("caps-sub")
        codes = yield client.subscribe(("$share/g/caps", 0), ("caps/+", 0), ("caps/#", 0),
                                       ("caps/q2", 2))
        self.assertEqual(codes, [RC.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
                                 RC.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
                                 RC.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED, 1])

    @inlineCallbacks
    def test_subscription_identifier_refused_0xa1(self):
        """A SUBSCRIBE with a subscription identifier gets 0xA1 when they are off."""
        client = yield self.paho5("caps-sid")
        codes = yield client.subscribe(("caps/sid", 0), properties={"SubscriptionIdentifier": 3})
        self.assertEqual(codes, [RC.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED])

    @inlineCallbacks
    def test_qos_above_maximum_disconnects_0x9b(self):
        """A QoS 2 PUBLISH beyond maximum QoS 1 gets DISCONNECT 0x9B."""
        client = yield self.paho5("caps-q2")
        client.client.publish("caps/t", b"x", 2)
        gone = yield client.disconnected
        self.assertEqual((gone.rc, gone.from_server), (RC.QOS_NOT_SUPPORTED, True))

    @inlineCallbacks
    def test_retain_unavailable_disconnects_0x9a(self):
        """A retained PUBLISH when retain is unavailable gets DISCONNECT 0x9A."""
        client = yield self.paho5("caps-retain")
        client.client.publish("caps/t", b"x", 0, True)
        gone = yield client.disconnected
        self.assertEqual((gone.rc, gone.from_server), (RC.RETAIN_NOT_SUPPORTED, True))

    @inlineCallbacks
    def test_will_qos_above_maximum_refused_0x9b(self):
        """A will QoS above maximum QoS is refused with CONNACK 0x9B [MQTT-3.2.2-12]."""
        client = yield self.paho5("caps-will-q2", connect=False,
                                  will=("caps/will", b"x", 2, False))
        result = yield client.connect()
        self.assertEqual(result.rc, RC.QOS_NOT_SUPPORTED)

    @inlineCallbacks
    def test_retained_will_refused_0x9a(self):
        """A retained will without retain available is refused, CONNACK 0x9A [MQTT-3.2.2-13]."""
        client = yield self.paho5("caps-will-retain", connect=False,
                                  will=("caps/will", b"x", 0, True))
        result = yield client.connect()
        self.assertEqual(result.rc, RC.RETAIN_NOT_SUPPORTED)

    @inlineCallbacks
    def test_topic_alias_refused_when_maximum_zero(self):
        """With topic alias maximum 0 any inbound alias is invalid: DISCONNECT 0x94."""
        client = yield self.paho5("caps-alias")
        client.client.publish("caps/t", b"x", 0, False, props(PacketTypes.PUBLISH, TopicAlias=1))
        gone = yield client.disconnected
        self.assertEqual((gone.rc, gone.from_server), (RC.TOPIC_ALIAS_INVALID, True))


class ProblemInformationTests(V5TestCase):
    """Reason strings: on a refused CONNACK; never where the client asked for none."""

    @inlineCallbacks
    def test_no_reason_strings_when_problem_information_off(self):
        """Request problem information 0: no reason string on SUBACK or PUBACK [MQTT-3.1.2-29]."""
        raw = yield self.raw5("rpi", properties={P.REQUEST_PROBLEM_INFORMATION: 0})
        raw.send(Subscribe(1, [Subscription("rpi/#/bad", 0)]))
        suback = yield raw.expect(SubAck)
        self.assertEqual(suback.reason_codes, [RC.TOPIC_FILTER_INVALID])
        self.assertEqual(suback.properties, {})
        raw.send(Publish("rpi/nobody", b"x", 1, False, False, 2))
        puback = yield raw.expect(PubAck)
        self.assertEqual(puback.reason_code, RC.NO_MATCHING_SUBSCRIBERS)
        self.assertEqual(puback.properties, {})


class ResponseInformationTests(V5TestCase):
    """BrokerSettings(response_information=...) and request/response between clients."""

    settings = BrokerSettings(response_information="resp/{client_id}")

    @inlineCallbacks
    def test_response_information_only_when_requested(self):
        """RESPONSE_INFORMATION goes only to clients that request it [MQTT-3.1.2-28]."""
        asking = yield self.paho5("asker",
                                  connect_properties={"RequestResponseInformation": 1})
        self.assertEqual(asking.connack.prop("ResponseInformation"), "resp/asker")
        silent = yield self.paho5("silent")
        self.assertIsNone(silent.connack.prop("ResponseInformation"))
        declining = yield self.paho5("declining",
                                     connect_properties={"RequestResponseInformation": 0})
        self.assertIsNone(declining.connack.prop("ResponseInformation"))

    @inlineCallbacks
    def test_request_response_round_trip(self):
        """Request/response works: response topic and correlation data pass through unaltered."""
        responder = yield self.paho5("responder")
        yield responder.subscribe(("svc/echo", 1))

        def answer(request):
            responder.publish(request.prop("ResponseTopic"), b"echo:" + request.payload, 1,
                              properties={"CorrelationData": request.prop("CorrelationData")})

        responder.on_receive = answer
        requester = yield self.paho5("requester",
                                     connect_properties={"RequestResponseInformation": 1})
        base = requester.connack.prop("ResponseInformation")
        yield requester.subscribe((base + "/#", 1))
        for i, corr in enumerate((b"\x00\x01", b"\xff" * 8)):
            yield requester.publish("svc/echo", b"ping%d" % i, 1, properties={
                "ResponseTopic": base + "/echo", "CorrelationData": corr})
            reply = yield requester.next_message()
            self.assertEqual((reply.topic, reply.payload), (base + "/echo", b"echo:ping%d" % i))
            self.assertEqual(reply.prop("CorrelationData"), corr)  # [MQTT-3.3.2-16]
        request = responder.received[0]
        self.assertEqual(request.prop("ResponseTopic"), base + "/echo")  # [MQTT-3.3.2-15]
        self.assertEqual(request.prop("CorrelationData"), b"\x00\x01")
