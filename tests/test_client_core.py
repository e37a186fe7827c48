"""The sans-IO client core (bytes in, events out) and its Twisted shell on a StringTransport
and a Clock: packet ids, QoS 1/2 in flight, DUP resend, receive maximum, topic aliases,
keepalive."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.client import ClientCore, ClientSession, ConnectError, MQTTClientProtocol
from mqtt_twisted.client.core import (
    Connected,
    ConnectRefused,
    Message,
    PublishDone,
    PublishError,
    SessionLost,
)
from mqtt_twisted.codec import (
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    StreamDecoder,
    SubAck,
    Subscription,
    encode,
)
from mqtt_twisted.constants import PropertyId as P
from mqtt_twisted.errors import MQTTError, ProtocolError


def sent(core: ClientCore) -> list[Any]:
    """The packets the core wants written, decoded as a broker would."""
    data = core.data_to_send()
    decoder = StreamDecoder(core.version)
    return decoder.feed(data)


def connected(version: int = 5, session_present: bool = False, props: dict | None = None,
              **options: Any) -> ClientCore:
    core = ClientCore("c1", version, **options)
    core.connect()
    sent(core)
    events = core.receive(encode(ConnAck(session_present, 0, props or {}), version))
    assert isinstance(events[0], Connected), events
    return core


class CoreTests(SynchronousTestCase):
    """The state machine, driven with bytes."""

    def test_connect_packet(self) -> None:
        """CONNECT carries the options; v5 announces the topic alias maximum."""
        core = ClientCore("me", 5, keep_alive=30, clean_start=False, username="u",
                          password=b"p", receive_maximum=5)
        core.connect()
        [packet] = sent(core)
        self.assertEqual((packet.client_id, packet.keep_alive, packet.clean_start,
                          packet.username, packet.password), ("me", 30, False, "u", b"p"))
        self.assertEqual(packet.properties[P.RECEIVE_MAXIMUM], 5)
        self.assertEqual(packet.properties[P.TOPIC_ALIAS_MAXIMUM], 16)

    def test_refused(self) -> None:
        """A failure CONNACK is a ConnectRefused event; the core is closed."""
        core = ClientCore("c", 4)
        core.connect()
        [event] = core.receive(encode(ConnAck(False, 5), 4))
        self.assertIsInstance(event, ConnectRefused)
        self.assertEqual(event.connack.reason_code, 5)
        self.assertEqual(core.state, "closed")

    def test_qos1_flow(self) -> None:
        """QoS 1: PUBLISH with a fresh id, PUBACK completes it and frees the id."""
        core = connected()
        pid = core.publish("a/b", b"x", 1)
        [packet] = sent(core)
        self.assertEqual((packet.topic, packet.qos, packet.packet_id, packet.dup),
                         ("a/b", 1, pid, False))
        [event] = core.receive(encode(PubAck(pid), 5))
        self.assertEqual(event, PublishDone(pid, 0, {}))
        self.assertEqual(core.inflight, 0)

    def test_qos2_flow(self) -> None:
        """QoS 2: PUBREC makes the core send PUBREL; PUBCOMP completes it."""
        core = connected()
        pid = core.publish("a", b"x", 2)
        sent(core)
        self.assertEqual(core.receive(encode(PubRec(pid), 5)), [])
        self.assertEqual(sent(core), [PubRel(pid)])
        [event] = core.receive(encode(PubComp(pid), 5))
        self.assertEqual(event.packet_id, pid)

    def test_refused_puback(self) -> None:
        """A v5 PUBACK with a failure code completes the publish with that code."""
        core = connected()
        pid = core.publish("a", b"x", 1)
        [event] = core.receive(encode(PubAck(pid, 0x87), 5))
        self.assertEqual(event.reason_code, 0x87)

    def test_unknown_ack_is_a_protocol_error(self) -> None:
        """A PUBACK for an id never sent breaks the protocol."""
        core = connected()
        self.assertRaises(ProtocolError, core.receive, encode(PubAck(7), 5))

    def test_packet_ids_unique_while_in_use(self) -> None:
        """Ids in flight are not reused; completed ones are."""
        core = connected()
        ids = {core.publish("a", b"", 1) for _ in range(100)}
        self.assertEqual(len(ids), 100)
        self.assertNotIn(0, ids)

    def test_receive_maximum_honoured(self) -> None:
        """With the server's receive maximum 2, the third QoS 1 publish waits for an ack
        [MQTT-4.9.0-2]."""
        core = connected(props={P.RECEIVE_MAXIMUM: 2})
        ids = [core.publish("a", b"%d" % i, 1) for i in range(3)]
        self.assertEqual([p.packet_id for p in sent(core)], ids[:2])
        self.assertEqual((core.inflight, core.queued), (2, 1))
        core.receive(encode(PubAck(ids[0]), 5))
        self.assertEqual([p.packet_id for p in sent(core)], [ids[2]])

    def test_dup_resend_on_reconnect(self) -> None:
        """A persistent session resends unacknowledged PUBLISHes with DUP and PUBRELs
        after a CONNACK with session present [MQTT-4.4.0-1]."""
        core = connected(4, clean_start=False)
        p1 = core.publish("a", b"1", 1)
        p2 = core.publish("b", b"2", 2)
        sent(core)
        core.receive(encode(PubRec(p2), 4))
        sent(core)
        self.assertEqual(core.connection_lost(), [])
        core.connect()
        sent(core)
        core.receive(encode(ConnAck(True, 0), 4))
        resent = sent(core)
        self.assertEqual(resent[0], Publish("a", b"1", 1, False, True, p1))
        self.assertEqual(resent[1], PubRel(p2))

    def test_session_not_present_drops_inflight(self) -> None:
        """Session present 0 after a reconnect: the in-flight ids are reported lost."""
        core = connected(4, clean_start=False)
        pid = core.publish("a", b"1", 1)
        core.connection_lost()
        core.connect()
        sent(core)
        [event] = core.receive(encode(ConnAck(False, 0), 4))
        self.assertEqual(event.lost, [pid])
        self.assertEqual(sent(core), [])

    def test_incoming_qos1_and_qos2(self) -> None:
        """Incoming QoS 1 is PUBACKed; QoS 2 is delivered once, PUBRECed, and PUBCOMPed on
        PUBREL; a DUP before PUBREL is not delivered again."""
        core = connected()
        [m1] = core.receive(encode(Publish("t", b"1", 1, packet_id=4), 5))
        self.assertIsInstance(m1, Message)
        self.assertEqual(sent(core), [PubAck(4)])
        [m2] = core.receive(encode(Publish("t", b"2", 2, packet_id=5), 5))
        self.assertEqual(m2.payload, b"2")
        self.assertEqual(core.receive(encode(Publish("t", b"2", 2, dup=True, packet_id=5), 5)),
                         [])
        self.assertEqual(sent(core), [PubRec(5), PubRec(5)])
        core.receive(encode(PubRel(5), 5))
        self.assertEqual(sent(core), [PubComp(5)])

    def test_topic_alias_received(self) -> None:
        """A topic alias set by one PUBLISH resolves an empty topic in the next."""
        core = connected()
        core.receive(encode(Publish("long/topic", b"1", properties={P.TOPIC_ALIAS: 3}), 5))
        [m] = core.receive(encode(Publish("", b"2", properties={P.TOPIC_ALIAS: 3}), 5))
        self.assertEqual(m.topic, "long/topic")
        self.assertNotIn(P.TOPIC_ALIAS, m.publish.properties)

    def test_bad_topic_alias(self) -> None:
        """An unknown alias or one above our maximum is a protocol error."""
        core = connected()
        self.assertRaises(ProtocolError, core.receive,
                          encode(Publish("", b"2", properties={P.TOPIC_ALIAS: 2}), 5))
        core = connected()
        self.assertRaises(ProtocolError, core.receive,
                          encode(Publish("t", b"2", properties={P.TOPIC_ALIAS: 17}), 5))

    def test_keepalive_tick(self) -> None:
        """tick writes PINGREQ once the keep alive passed without a write; a missing
        PINGRESP a keep alive later raises."""
        core = connected(keep_alive=10)
        self.assertEqual(core.tick(4.0), 6.0)
        self.assertEqual(sent(core), [])
        self.assertEqual(core.tick(10.0), 10.0)
        self.assertEqual(sent(core), [PingReq()])
        self.assertRaises(ProtocolError, core.tick, 20.0)

    def test_server_keep_alive_overrides(self) -> None:
        """SERVER_KEEP_ALIVE in the CONNACK replaces ours."""
        core = connected(keep_alive=60, props={P.SERVER_KEEP_ALIVE: 5})
        self.assertEqual(core.tick(0.0), 5.0)

    def test_qos0_while_closed_refused(self) -> None:
        """A QoS 0 publish without a connection raises instead of vanishing."""
        core = ClientCore("c", 4)
        self.assertRaises(MQTTError, core.publish, "a", b"", 0)

    def test_server_disconnect(self) -> None:
        """A v5 DISCONNECT from the broker is an event with its reason code."""
        core = connected()
        [event] = core.receive(encode(Disconnect(0x8B), 5))
        self.assertEqual(event.reason_code, 0x8B)


class ProtocolTests(SynchronousTestCase):
    """The Deferred shell on a StringTransport and a Clock."""

    def make(self, version: int = 4, **options: Any) -> tuple[MQTTClientProtocol, Any, Clock]:
        clock = Clock()
        proto = MQTTClientProtocol(clock, ClientSession(ClientCore("c", version, **options)))
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport, clock

    def packets(self, transport: StringTransport, version: int = 4) -> list[Any]:
        data = transport.value()
        transport.clear()
        return StreamDecoder(version).feed(data)

    def test_connect_fires_with_connack(self) -> None:
        """connect() fires with the CONNACK."""
        proto, transport, _ = self.make()
        d = proto.connect()
        self.assertIsInstance(self.packets(transport)[0], Connect)
        proto.dataReceived(encode(ConnAck(True, 0), 4))
        self.assertEqual(self.successResultOf(d), ConnAck(True, 0))

    def test_connect_refused(self) -> None:
        """A refusal fails connect() with ConnectError carrying the code."""
        proto, _, _ = self.make(5)
        d = proto.connect()
        proto.dataReceived(encode(ConnAck(False, 0x86), 5))
        error = self.failureResultOf(d, ConnectError).value
        self.assertEqual(error.reason_code, 0x86)

    def test_publish_deferreds(self) -> None:
        """QoS 0 fires at once, QoS 1 on PUBACK, QoS 2 on PUBCOMP; a failure code fails."""
        proto, transport, _ = self.make(5)
        proto.connect()
        proto.dataReceived(encode(ConnAck(False, 0), 5))
        transport.clear()
        self.assertIsNone(self.successResultOf(proto.publish("a", b"0", 0)))
        d1 = proto.publish("a", b"1", 1)
        d2 = proto.publish("a", b"2", 2)
        d3 = proto.publish("a", b"3", 1)
        ids = [p.packet_id for p in self.packets(transport, 5)[1:]]
        self.assertNoResult(d1)
        proto.dataReceived(encode(PubAck(ids[0]), 5) + encode(PubRec(ids[1]), 5))
        self.assertEqual(self.successResultOf(d1), 0)
        self.assertNoResult(d2)
        proto.dataReceived(encode(PubComp(ids[1]), 5) + encode(PubAck(ids[2], 0x87), 5))
        self.assertEqual(self.successResultOf(d2), 0)
        self.assertEqual(self.failureResultOf(d3, PublishError).value.reason_code, 0x87)

    def test_subscribe_handler(self) -> None:
        """subscribe fires with the granted codes; the handler gets matching messages."""
        proto, transport, _ = self.make()
        proto.connect()
        proto.dataReceived(encode(ConnAck(False, 0), 4))
        transport.clear()
        got: list[Any] = []
        d = proto.subscribe([("a/+", 1), Subscription("b", 2)], handler=got.append)
        [sub] = self.packets(transport)
        proto.dataReceived(encode(SubAck(sub.packet_id, [1, 0x80]), 4))
        self.assertEqual(self.successResultOf(d), [1, 0x80])
        proto.dataReceived(encode(Publish("a/x", b"hi"), 4) + encode(Publish("c", b"no"), 4))
        self.assertEqual([m.topic for m in got], ["a/x"])

    def test_keepalive_on_clock(self) -> None:
        """PINGREQ goes out after keep_alive seconds idle; without PINGRESP the
        connection is aborted a keep alive later."""
        proto, transport, clock = self.make(keep_alive=10)
        proto.connect()
        proto.dataReceived(encode(ConnAck(False, 0), 4))
        transport.clear()
        clock.advance(9)
        self.assertEqual(transport.value(), b"")
        clock.advance(1)
        self.assertEqual(self.packets(transport), [PingReq()])
        proto.dataReceived(encode(PingResp(), 4))
        clock.advance(10)
        self.assertEqual(self.packets(transport), [PingReq()])
        self.assertFalse(transport.disconnecting)
        clock.advance(10)
        self.assertTrue(transport.disconnecting)

    def test_connection_lost_clean_fails_waiters(self) -> None:
        """Without a persistent session, losing the connection fails QoS 1 waiters."""
        proto, _, _ = self.make()
        proto.connect()
        proto.dataReceived(encode(ConnAck(False, 0), 4))
        d = proto.publish("a", b"1", 1)
        proto.connectionLost(None)
        self.failureResultOf(d)

    def test_persistent_session_survives(self) -> None:
        """A persistent session's waiter fires after the next connection resends with DUP;
        with session present 0 it fails with SessionLost."""
        proto, _, _ = self.make(clean_start=False)
        proto.connect()
        proto.dataReceived(encode(ConnAck(False, 0), 4))
        d = proto.publish("a", b"1", 1)
        lost = proto.publish("b", b"2", 1)
        proto.connectionLost(None)
        self.assertNoResult(d)
        second = MQTTClientProtocol(proto.reactor, proto.session)
        transport = StringTransport()
        second.makeConnection(transport)
        second.connect()
        second.dataReceived(encode(ConnAck(True, 0), 4))
        _, p1, p2 = self.packets(transport)
        self.assertTrue(p1.dup and p2.dup)
        second.dataReceived(encode(PubAck(p1.packet_id), 4))
        self.assertEqual(self.successResultOf(d), 0)
        second.connectionLost(None)
        third = MQTTClientProtocol(proto.reactor, proto.session)
        third.makeConnection(StringTransport())
        third.connect()
        third.dataReceived(encode(ConnAck(False, 0), 4))
        self.failureResultOf(lost, SessionLost)
