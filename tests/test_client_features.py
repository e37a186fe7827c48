"""The client's outgoing topic aliases, enhanced authentication, manual acks (the client's
receive maximum), async iteration and WebSocket framing, without a broker: the sans-IO
core with bytes, the protocol on a StringTransport, and the WebSocket transport against
an in-process Autobahn server that splits and joins MQTT packets across frames."""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, ensureDeferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from mqtt_twisted.auth.scram import ScramAuthenticator
from mqtt_twisted.client import ClientCore, ClientSession, MQTTClientProtocol, connect_client
from mqtt_twisted.client._aliases import TopicAliases
from mqtt_twisted.client.auth import ScramClientAuth
from mqtt_twisted.client.core import AuthMethodError, Message, Reauthenticated
from mqtt_twisted.client.websocket import WebSocketError
from mqtt_twisted.codec import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    StreamDecoder,
    encode,
)
from mqtt_twisted.constants import PropertyId as P
from mqtt_twisted.errors import MQTTError, ProtocolError
from mqtt_twisted.interfaces import IClientAuthMethod
from mqtt_twisted.records import Credentials


def sent(core: ClientCore) -> list[Any]:
    return StreamDecoder(core.version).feed(core.data_to_send())


def connected(props: dict | None = None, **options: Any) -> ClientCore:
    core = ClientCore("c1", 5, **options)
    core.connect()
    sent(core)
    core.receive(encode(ConnAck(False, 0, props or {}), 5))
    return core


class TopicAliasTests(SynchronousTestCase):
    """Outgoing topic aliases (v5)."""

    def test_lru_table(self) -> None:
        """New topics take free aliases; a full table gives the least recently used
        topic's alias to the new one; never above the maximum."""
        table = TopicAliases(2)
        self.assertEqual(table.assign("a"), ("a", 1))
        self.assertEqual(table.assign("b"), ("b", 2))
        self.assertEqual(table.assign("a"), ("", 1))  # a is now the most recent
        self.assertEqual(table.assign("c"), ("c", 2))  # b was the least recent
        self.assertEqual(table.assign("b"), ("b", 1))
        self.assertEqual(len(table), 2)
        self.assertEqual(TopicAliases(0).assign("a"), ("a", None))

    def test_alias_only_publish(self) -> None:
        """With the server's Topic Alias Maximum, a repeated topic goes out as an empty
        topic with its alias; QoS 0 and QoS 1 share one table."""
        core = connected({P.TOPIC_ALIAS_MAXIMUM: 5})
        core.publish("long/topic", b"1", 0)
        core.publish("long/topic", b"2", 1)
        first, second = sent(core)
        self.assertEqual((first.topic, first.properties[P.TOPIC_ALIAS]), ("long/topic", 1))
        self.assertEqual((second.topic, second.properties[P.TOPIC_ALIAS]), ("", 1))

    def test_no_aliases_without_server_maximum(self) -> None:
        """No Topic Alias Maximum in CONNACK (or topic_aliases=False): no alias is sent."""
        for core in (connected(), connected({P.TOPIC_ALIAS_MAXIMUM: 5}, topic_aliases=False)):
            core.publish("t", b"1")
            core.publish("t", b"2")
            self.assertEqual([p.properties for p in sent(core)], [{}, {}])

    def test_reset_on_reconnect_and_resend_has_topic(self) -> None:
        """A new connection starts a new table [MQTT-3.3.2-7]; a DUP resend carries its
        topic (the in-flight copy never holds the alias-only form)."""
        core = connected({P.TOPIC_ALIAS_MAXIMUM: 5}, clean_start=False,
                         properties={P.SESSION_EXPIRY_INTERVAL: 60})
        core.publish("x/y", b"1", 1)
        pid = core.publish("x/y", b"2", 1)
        self.assertEqual([p.topic for p in sent(core)], ["x/y", ""])
        core.connection_lost()
        core.connect()
        sent(core)
        core.receive(encode(ConnAck(True, 0, {P.TOPIC_ALIAS_MAXIMUM: 5}), 5))
        resent = sent(core)
        self.assertEqual([(p.topic, p.dup) for p in resent], [("x/y", True), ("", True)])
        self.assertEqual(resent[1].packet_id, pid)

    def test_user_alias_refused(self) -> None:
        """A TOPIC_ALIAS property of the caller's would clash with the table: ValueError."""
        core = connected({P.TOPIC_ALIAS_MAXIMUM: 5})
        self.assertRaises(ValueError, core.publish, "t", b"", 0, False, {P.TOPIC_ALIAS: 1})


class FakeMethod:
    """A challenge-response method: answers each challenge with its reverse."""

    method = "REVERSE"

    def __init__(self) -> None:
        self.finished: list[Any] = []

    def start(self) -> bytes:
        return b"hello"

    def challenge(self, data: bytes | None) -> bytes:
        return (data or b"")[::-1]

    def finish(self, data: bytes | None) -> None:
        if data == b"forged":
            raise ValueError("bad server proof")
        self.finished.append(data)


class EnhancedAuthTests(SynchronousTestCase):
    """The core's side of AUTH exchanges [MQTT-4.12]."""

    def test_connect_exchange(self) -> None:
        """CONNECT carries method and initial data; AUTH 0x18 is answered; CONNACK's
        data goes to finish()."""
        method = FakeMethod()
        core = ClientCore("c", 5, auth=method)
        core.connect()
        [connect] = sent(core)
        self.assertEqual((connect.properties[P.AUTHENTICATION_METHOD],
                          connect.properties[P.AUTHENTICATION_DATA]), ("REVERSE", b"hello"))
        core.receive(encode(Auth(0x18, {P.AUTHENTICATION_METHOD: "REVERSE",
                                        P.AUTHENTICATION_DATA: b"abc"}), 5))
        [answer] = sent(core)
        self.assertEqual((answer.reason_code, answer.properties[P.AUTHENTICATION_DATA]),
                         (0x18, b"cba"))
        core.receive(encode(ConnAck(False, 0, {P.AUTHENTICATION_METHOD: "REVERSE",
                                               P.AUTHENTICATION_DATA: b"ok"}), 5))
        self.assertEqual((core.state, method.finished), ("connected", [b"ok"]))

    def test_reauthenticate(self) -> None:
        """reauthenticate() sends AUTH 0x19; AUTH 0x00 ends it with a Reauthenticated
        event; a second AUTH 0x00 is a protocol error."""
        method = FakeMethod()
        core = connected({P.AUTHENTICATION_METHOD: "REVERSE"}, auth=method)
        core.reauthenticate()
        [auth] = sent(core)
        self.assertEqual((auth.reason_code, auth.properties[P.AUTHENTICATION_DATA]),
                         (0x19, b"hello"))
        self.assertRaises(MQTTError, core.reauthenticate)  # one at a time
        core.receive(encode(Auth(0x18, {P.AUTHENTICATION_METHOD: "REVERSE",
                                        P.AUTHENTICATION_DATA: b"xy"}), 5))
        self.assertEqual(sent(core)[0].properties[P.AUTHENTICATION_DATA], b"yx")
        [event] = core.receive(encode(Auth(0, {P.AUTHENTICATION_METHOD: "REVERSE",
                                               P.AUTHENTICATION_DATA: b"fin"}), 5))
        self.assertIsInstance(event, Reauthenticated)
        self.assertEqual(method.finished[-1], b"fin")
        self.assertRaises(ProtocolError, core.receive,
                          encode(Auth(0, {P.AUTHENTICATION_METHOD: "REVERSE"}), 5))

    def test_bad_server_data(self) -> None:
        """Another method's AUTH, AUTH without our method, and a server proof the method
        rejects all raise; the last as AuthMethodError."""
        core = ClientCore("c", 5, auth=FakeMethod())
        core.connect()
        self.assertRaises(ProtocolError, core.receive,
                          encode(Auth(0x18, {P.AUTHENTICATION_METHOD: "OTHER"}), 5))
        core = ClientCore("c", 5)
        core.connect()
        self.assertRaises(ProtocolError, core.receive,
                          encode(Auth(0x18, {P.AUTHENTICATION_METHOD: "REVERSE"}), 5))
        core = ClientCore("c", 5, auth=FakeMethod())
        core.connect()
        self.assertRaises(AuthMethodError, core.receive, encode(ConnAck(False, 0, {
            P.AUTHENTICATION_METHOD: "REVERSE", P.AUTHENTICATION_DATA: b"forged"}), 5))

    def test_v311_refused(self) -> None:
        """Enhanced authentication needs MQTT 5: ValueError at construction."""
        self.assertRaises(ValueError, ClientCore, "c", 4, auth=FakeMethod())

    def test_scram_against_server_exchange(self) -> None:
        """ScramClientAuth against the broker's own SCRAM exchange (no network): both
        sides agree; the wrong password is refused by the server."""
        verifyObject(IClientAuthMethod, ScramClientAuth("u", "p"))
        server = ScramAuthenticator({"alice": "secret"})
        for password, ok in (("secret", True), ("nope", False)):
            client = ScramClientAuth("alice", password)
            exchange = server.startExchange("SCRAM-SHA-256", Credentials("c", None, None))
            step = self.successResultOf(exchange.step(client.start()))
            answer = client.challenge(step.data)
            result = exchange.step(answer)
            if ok:
                client.finish(self.successResultOf(result).data)
            else:
                self.failureResultOf(result)

    def test_scram_rejects_forged_server(self) -> None:
        """A server-final message that does not verify makes finish() raise."""
        server = ScramAuthenticator({"alice": "secret"})
        client = ScramClientAuth("alice", "secret")
        exchange = server.startExchange("SCRAM-SHA-256", Credentials("c", None, None))
        client.challenge(self.successResultOf(exchange.step(client.start())).data)
        self.assertRaises(ValueError, client.finish, b"v=" + b"A" * 44)
        self.assertRaises(ValueError, ScramClientAuth("a", "b").finish, b"v=x")


class ManualAckTests(SynchronousTestCase):
    """manual_ack: QoS 1/2 wait for ack(); held messages count against our receive
    maximum."""

    def test_held_until_ack(self) -> None:
        """No PUBACK/PUBREC until ack(); a DUP of a held message is not delivered again."""
        core = connected(manual_ack=True)
        [m1] = core.receive(encode(Publish("t", b"1", 1, packet_id=4), 5))
        [m2] = core.receive(encode(Publish("t", b"2", 2, packet_id=5), 5))
        self.assertEqual((m1.payload, m2.payload), (b"1", b"2"))
        self.assertEqual(core.receive(encode(Publish("t", b"2", 2, True, True, 5), 5)), [])
        self.assertEqual(sent(core), [])
        core.ack(m1.publish)
        core.ack(m2.publish)
        core.ack(m2.publish)  # twice: nothing more
        self.assertEqual(sent(core), [PubAck(4), PubRec(5)])
        core.receive(encode(PubRel(5), 5))
        self.assertEqual(sent(core), [PubComp(5)])

    def test_receive_maximum_exceeded(self) -> None:
        """A broker sending more unacknowledged messages than our receive maximum is
        refused with 0x93."""
        core = connected(manual_ack=True, receive_maximum=2)
        core.receive(encode(Publish("t", b"1", 1, packet_id=1), 5))
        core.receive(encode(Publish("t", b"2", 2, packet_id=2), 5))
        with self.assertRaises(ProtocolError) as caught:
            core.receive(encode(Publish("t", b"3", 1, packet_id=3), 5))
        self.assertEqual(caught.exception.reason_code, 0x93)
        core = connected(manual_ack=True, receive_maximum=2)
        [m] = core.receive(encode(Publish("t", b"1", 1, packet_id=1), 5))
        core.ack(m.publish)
        core.receive(encode(Publish("t", b"2", 1, packet_id=2), 5))
        core.receive(encode(Publish("t", b"3", 1, packet_id=3), 5))  # within the limit

    def test_late_ack_after_reconnect(self) -> None:
        """A QoS 1 message held across a lost connection is sent again by the broker; the
        old message's late ack does not acknowledge a new message with the same id."""
        core = connected(manual_ack=True, clean_start=False)
        [old] = core.receive(encode(Publish("t", b"old", 1, packet_id=9), 5))
        core.connection_lost()
        core.connect()
        sent(core)
        core.receive(encode(ConnAck(True, 0), 5))
        [new] = core.receive(encode(Publish("t", b"new", 1, packet_id=9), 5))
        core.ack(old.publish)
        self.assertEqual(sent(core), [])
        core.ack(new.publish)
        self.assertEqual(sent(core), [PubAck(9)])

    def test_announced(self) -> None:
        """CONNECT announces the receive maximum; out-of-range values are refused."""
        core = ClientCore("c", 5, receive_maximum=7)
        core.connect()
        self.assertEqual(sent(core)[0].properties[P.RECEIVE_MAXIMUM], 7)
        self.assertRaises(ValueError, ClientCore, "c", 5, receive_maximum=0)


class ShellTests(SynchronousTestCase):
    """The protocol's new calls on a StringTransport."""

    def make(self, **options: Any) -> tuple[MQTTClientProtocol, StringTransport]:
        proto = MQTTClientProtocol(Clock(), ClientSession(ClientCore("c", 5, **options)))
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.connect()
        transport.clear()
        return proto, transport

    def test_reauthenticate_deferred(self) -> None:
        """reauthenticate() fires with the final AUTH's properties; a DISCONNECT fails it."""
        proto, _ = self.make(auth=FakeMethod())
        proto.dataReceived(encode(ConnAck(False, 0, {P.AUTHENTICATION_METHOD: "REVERSE"}), 5))
        d = proto.reauthenticate()
        self.assertNoResult(d)
        proto.dataReceived(encode(Auth(0, {P.AUTHENTICATION_METHOD: "REVERSE",
                                           P.AUTHENTICATION_DATA: b"z"}), 5))
        self.assertEqual(self.successResultOf(d)[P.AUTHENTICATION_DATA], b"z")
        d = proto.reauthenticate()
        proto.dataReceived(encode(Disconnect(0x87), 5))
        self.assertEqual(self.failureResultOf(d, MQTTError).value.reason_code, 0x87)

    def test_connect_fails_with_auth_error(self) -> None:
        """A server proof the method rejects fails connect() with AuthMethodError and
        writes DISCONNECT 0x80."""
        proto = MQTTClientProtocol(Clock(), ClientSession(ClientCore("c", 5,
                                                                     auth=FakeMethod())))
        transport = StringTransport()
        proto.makeConnection(transport)
        d = proto.connect()
        transport.clear()
        proto.dataReceived(encode(ConnAck(False, 0, {P.AUTHENTICATION_METHOD: "REVERSE",
                                                     P.AUTHENTICATION_DATA: b"forged"}), 5))
        self.failureResultOf(d, AuthMethodError)
        [disconnect] = StreamDecoder(5).feed(transport.value())
        self.assertEqual(disconnect.reason_code, 0x80)
        self.assertTrue(transport.disconnecting)

    def test_manual_ack_unhandled(self) -> None:
        """With manual_ack, a message no handler takes is acknowledged at once (nobody
        else could, and it would hold a receive maximum slot); a handled one waits."""
        proto, transport = self.make(manual_ack=True)
        proto.dataReceived(encode(ConnAck(False, 0), 5))
        transport.clear()
        proto.dataReceived(encode(Publish("nobody", b"1", 1, packet_id=3), 5))
        self.assertEqual(StreamDecoder(5).feed(transport.value()), [PubAck(3)])
        transport.clear()
        held: list[Message] = []
        proto.on_message = held.append
        proto.dataReceived(encode(Publish("someone", b"2", 2, packet_id=4), 5))
        self.assertEqual(transport.value(), b"")
        proto.ack(held[0])
        self.assertEqual(StreamDecoder(5).feed(transport.value()), [PubRec(4)])

    def test_stream_backpressure(self) -> None:
        """A full stream buffer pauses the transport; reading half of it resumes it; the
        connection's end ends the iteration after the buffered messages."""
        proto, transport = self.make()
        proto.dataReceived(encode(ConnAck(False, 0), 5))
        stream = proto.messages("s/#", buffer=4)
        other: list[Message] = []
        proto.on_message = other.append
        for i in range(4):
            proto.dataReceived(encode(Publish(f"s/{i}", b"%d" % i), 5))
        proto.dataReceived(encode(Publish("elsewhere", b"x"), 5))
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual([m.topic for m in other], ["elsewhere"])
        got: list[str] = []

        async def read() -> None:
            async for message in stream:
                got.append(message.topic)

        done = ensureDeferred(read())
        self.assertEqual(got, ["s/0", "s/1", "s/2", "s/3"])
        self.assertEqual(transport.producerState, "producing")
        self.assertNoResult(done)
        proto.dataReceived(encode(Publish("s/4", b"4"), 5))
        self.assertEqual(got[-1], "s/4")
        proto.connectionLost(None)
        self.successResultOf(done)
        self.assertEqual(proto.session.handlers, [])

    def test_stream_close(self) -> None:
        """close() drops what is buffered, ends the loop and stops taking messages."""
        proto, _ = self.make()
        proto.dataReceived(encode(ConnAck(False, 0), 5))
        stream = proto.messages()
        proto.dataReceived(encode(Publish("a", b"1"), 5))
        stream.close()
        proto.dataReceived(encode(Publish("a", b"2"), 5))
        self.assertEqual(stream.pending, 0)

        async def read() -> list[Any]:
            return [m async for m in stream]

        self.assertEqual(self.successResultOf(ensureDeferred(read())), [])


class SplittingServer(WebSocketServerProtocol):
    """A WebSocket "broker" that answers CONNECT with a CONNACK split over two frames of
    one message, then two PUBLISHes in a single frame."""

    def onConnect(self, request: Any) -> str | None:
        self.factory.offered.append(request.protocols)
        return self.factory.choose

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        packets = StreamDecoder(4).feed(payload)
        if packets and isinstance(packets[0], Connect):
            connack = encode(ConnAck(False, 0), 4)
            self.beginMessage(isBinary=True)
            self.sendMessageFrame(connack[:1])
            self.sendMessageFrame(connack[1:])
            self.endMessage()
            both = encode(Publish("a", b"1"), 4) + encode(Publish("b", b"2"), 4)
            self.sendMessage(both[:3], isBinary=True)  # a packet across messages too
            self.sendMessage(both[3:], isBinary=True)
            if self.factory.text:
                self.sendMessage(b"text", isBinary=False)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.closed.append(code)


class WebSocketFramingTests(TestCase):
    """The WebSocket transport against an in-process Autobahn server."""

    reactor = global_reactor

    @inlineCallbacks
    def serve(self, choose: str | None = "mqtt", text: bool = False) -> Any:
        factory = WebSocketServerFactory()
        factory.protocol = SplittingServer
        factory.choose = choose
        factory.text = text
        factory.offered = []
        factory.closed = []
        port = yield TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        self.factory = factory
        return f"ws://127.0.0.1:{port.getHost().port}/mqtt"

    @inlineCallbacks
    def test_packets_across_and_within_frames(self) -> Any:
        """The subprotocol offered is "mqtt"; a CONNACK in two frames connects; two
        PUBLISHes split across two messages both arrive."""
        url = yield self.serve()
        got: list[Any] = []
        arrived: Deferred[None] = Deferred()

        def on_message(message: Any) -> None:
            got.append(message.topic)
            if len(got) == 2:
                arrived.callback(None)

        proto = yield connect_client(self.reactor, url, "ws", on_message=on_message
                                     ).addTimeout(10, self.reactor)
        yield arrived.addTimeout(10, self.reactor)
        self.assertEqual((self.factory.offered, got), ([["mqtt"]], ["a", "b"]))
        yield proto.disconnect().addTimeout(10, self.reactor)

    @inlineCallbacks
    def test_text_frame_closes(self) -> Any:
        """A text frame from the server closes the WebSocket with 1003 [MQTT-6.0.0-1]."""
        url = yield self.serve(text=True)
        proto = yield connect_client(self.reactor, url, "ws").addTimeout(10, self.reactor)
        yield proto.whenClosed().addTimeout(10, self.reactor)
        self.assertEqual(self.factory.closed, [1003])

    @inlineCallbacks
    def test_no_subprotocol_refused(self) -> Any:
        """A server that does not choose "mqtt" fails connect_client with WebSocketError."""
        url = yield self.serve(choose=None)
        d = connect_client(self.reactor, url, "ws")
        yield self.assertFailure(d.addTimeout(10, self.reactor), WebSocketError)

    def test_bad_url(self) -> None:
        """A malformed ws:// URL is a ValueError at once."""
        self.assertRaises(ValueError, connect_client, self.reactor, "ws://:bad:port", "x")
