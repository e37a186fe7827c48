"""``mqtt_twisted.testing.fake_service``: adapters unit-tested against a fake broker.

The MQTT stream adapter and a small line-protocol adapter written here (as a plugin
author would) run on ``StringTransport`` against ``FakeBrokerService``, with no broker,
store or reactor; the fake's own bookkeeping is pinned down after that.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mqtt_twisted.adapters.listener import ListenerSettings
from mqtt_twisted.adapters.mqtt import MQTTStreamFactory
from mqtt_twisted.constants import ReasonCode
from mqtt_twisted.errors import AuthenticationError, StorageError, ValidationError
from mqtt_twisted.interfaces import IBrokerConnection, IBrokerService, IMessageSink
from mqtt_twisted.message import Message
from mqtt_twisted.testing.fake_service import FakeBrokerService, FakeSession


@implementer(IMessageSink)
class LineProtocol(Protocol):
    """A toy adapter: ``SUB filter``, ``UNSUB filter``, ``PUB topic payload`` lines in,
    ``MSG topic payload`` lines out; the client id is the first line."""

    client_id: str | None = None
    buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self.line(line.decode())

    def line(self, line: str) -> None:
        service = self.factory.service
        if self.client_id is None:
            self.client_id = line
            service.openSession(line, self).addCallbacks(
                lambda _: self.transport.write(b"OK\n"), self.refused)
            return
        verb, _, rest = line.partition(" ")
        if verb == "SUB":
            service.subscribe(self.client_id, rest, 1).addCallback(
                lambda granted: self.transport.write(b"GRANTED %d\n" % granted))
        elif verb == "UNSUB":
            service.unsubscribe(self.client_id, rest)
        elif verb == "PUB":
            topic, _, payload = rest.partition(" ")
            d = service.publish(Message(topic, payload.encode(), 1), self.client_id)
            d.addErrback(lambda f: self.transport.write(b"ERROR\n"))

    def refused(self, failure: Any) -> None:
        self.transport.write(b"REFUSED\n")
        self.transport.loseConnection()

    def deliver(self, message: Message, qos: int) -> None:
        self.transport.write(b"MSG %s %s\n" % (message.topic.encode(), message.payload))

    def connectionLost(self, reason: Any = None) -> None:
        if self.client_id is not None:
            self.factory.service.closeSession(self.client_id)


class LineFactory(Factory):
    protocol = LineProtocol

    def __init__(self, service: Any) -> None:
        self.service = service


def line_client(service: FakeBrokerService, client_id: str) -> tuple[Protocol, StringTransport]:
    protocol = LineFactory(service).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(client_id.encode() + b"\n")
    return protocol, transport


class InterfaceTests(SynchronousTestCase):
    """The fake provides the interfaces it stands in for."""

    def test_provides_ibrokerservice(self) -> None:
        """FakeBrokerService provides IBrokerService, its connections IBrokerConnection."""
        service = FakeBrokerService()
        self.assertTrue(verifyObject(IBrokerService, service))
        connection = service.buildConnection(StringTransport(), "peer", None)
        self.assertTrue(verifyObject(IBrokerConnection, connection))


class StreamAdapterTests(SynchronousTestCase):
    """The MQTT stream adapter, driven against the fake: what it hands the broker."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.service = FakeBrokerService(self.clock)
        self.factory = MQTTStreamFactory(self.service, ListenerSettings("mqtt", "tcp:0", 1))

    def connect(self) -> tuple[Any, StringTransport]:
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_bytes_and_events_reach_the_connection(self) -> None:
        """One broker connection per socket, fed the bytes, back-pressure and the close."""
        protocol, transport = self.connect()
        [connection] = self.service.connections
        self.assertEqual(connection.peer, "192.168.1.1:54321")
        self.assertIs(connection.listener, self.factory.listener)
        self.assertIsNone(connection.certificateIdentity)
        protocol.dataReceived(b"\x10\x00")
        protocol.dataReceived(b"\xc0\x00")
        self.assertEqual(bytes(connection.received), b"\x10\x00\xc0\x00")
        connection.transport.write(b"\xd0\x00")  # the broker's side answers
        connection.transport.write(b"\xe0\x00")
        self.assertEqual(transport.value(), b"")  # outside a read: at the next turn,
        self.clock.advance(0)
        self.assertEqual(transport.value(), b"\xd0\x00\xe0\x00")  # as one write
        protocol.pauseProducing()
        self.assertFalse(connection.writing)
        protocol.resumeProducing()
        self.assertTrue(connection.writing)
        protocol.connectionLost(None)
        self.assertTrue(connection.lost)

    def test_connection_limit_counts_refusals(self) -> None:
        """A socket beyond maxConnections is refused and counted in the broker's stats."""
        self.connect()
        self.assertIsNone(self.factory.buildProtocol(None))
        self.assertEqual(self.service.stats.connections_refused, 1)
        self.assertEqual(len(self.service.connections), 1)


class VirtualAdapterTests(SynchronousTestCase):
    """A non-MQTT adapter, driven against the fake: sessions, subscriptions, deliveries."""

    def setUp(self) -> None:
        self.service = FakeBrokerService(maximumQoS=1)

    def test_publish_reaches_subscribers(self) -> None:
        """Sessions open, subscribe, publish, and the subscriber's sink gets the message."""
        sub, sub_transport = line_client(self.service, "sub")
        pub, pub_transport = line_client(self.service, "pub")
        sub.dataReceived(b"SUB a/+\n")
        self.assertEqual(sub_transport.value(), b"OK\nGRANTED 1\n")
        pub.dataReceived(b"PUB a/b hello\nPUB x/y nobody\n")
        self.assertEqual(sub_transport.value(), b"OK\nGRANTED 1\nMSG a/b hello\n")
        self.assertEqual(pub_transport.value(), b"OK\n")  # not subscribed itself
        [first, second] = self.service.published
        self.assertEqual((first.message.topic, first.clientId, first.delivered),
                         ("a/b", "pub", 1))
        self.assertEqual((second.message.topic, second.delivered), ("x/y", 0))
        self.assertEqual(self.service.subscribed("sub"), {"a/+": 1})
        sub.dataReceived(b"UNSUB a/+\n")
        self.assertEqual(self.service.subscribed("sub"), {})
        self.assertEqual([c[0] for c in self.service.calls], ["subscribe", "unsubscribe"])

    def test_refusal_and_close(self) -> None:
        """A refused openSession closes the client; a lost connection closes its session."""
        self.service.fail("openSession", AuthenticationError("bad token"))
        _, transport = line_client(self.service, "c")
        self.assertEqual(transport.value(), b"REFUSED\n")
        self.assertTrue(transport.disconnecting)
        self.assertNotIn("c", self.service.sessions)
        protocol, _ = line_client(self.service, "c")
        protocol.connectionLost(None)
        self.assertEqual(self.service.closed, [("c", False)])
        self.assertFalse(self.service.sessions["c"].open)

    def test_publish_failure(self) -> None:
        """A publish the broker does not take is reported by the adapter."""
        protocol, transport = line_client(self.service, "c")
        self.service.fail("publish", StorageError("store down"))
        protocol.dataReceived(b"PUB a hi\nPUB a again\n")
        self.assertEqual(transport.value(), b"OK\nERROR\n")
        self.assertEqual(len(self.service.published), 1)


class FakeServiceTests(SynchronousTestCase):
    """The fake's own bookkeeping."""

    def setUp(self) -> None:
        self.service = FakeBrokerService()
        self.sink = SinkRecorder()

    def open(self, client_id: str = "c", clean: bool = True) -> FakeSession:
        return self.successResultOf(self.service.openSession(client_id, self.sink, clean))

    def test_takeover_and_resume(self) -> None:
        """A second openSession takes the first over; clean=False keeps its subscriptions."""
        first = self.open()
        self.successResultOf(self.service.subscribe("c", "t/#", 2))
        second = self.open(clean=False)
        self.assertFalse(first.open)
        self.assertTrue(second.open and second.present)
        self.assertEqual(second.subscriptions, {"t/#": 2})
        third = self.open()
        self.assertFalse(third.present)
        self.assertEqual(third.subscriptions, {})

    def test_close_session(self) -> None:
        """closeSession is True for a known client; remove forgets the session."""
        self.open()
        self.assertTrue(self.service.closeSession("c"))
        self.assertFalse(self.service.sessions["c"].open)
        self.assertTrue(self.service.closeSession("c", remove=True))
        self.assertNotIn("c", self.service.sessions)
        self.assertFalse(self.service.closeSession("c"))
        self.assertEqual(self.service.closed, [("c", False), ("c", True), ("c", False)])

    def test_subscribe_answers(self) -> None:
        """QoS capped at maximumQoS; a bad filter answers its reason code; no session fails."""
        self.service.maximumQoS = 1
        self.open()
        self.assertEqual(self.successResultOf(self.service.subscribe("c", "a", 2)), 1)
        self.assertEqual(self.successResultOf(self.service.subscribe("c", "a/#/b")),
                         ReasonCode.TOPIC_FILTER_INVALID)
        self.failureResultOf(self.service.subscribe("nobody", "a"), ValidationError)
        self.failureResultOf(self.service.unsubscribe("nobody", "a"), ValidationError)
        self.assertTrue(self.successResultOf(self.service.unsubscribe("c", "a")))
        self.assertFalse(self.successResultOf(self.service.unsubscribe("c", "a")))

    def test_routing(self) -> None:
        """Delivery at the lower of message and granted QoS; shared filters match their
        topic filter; $ topics are not matched by wildcards; closed sessions get nothing."""
        self.open("a")
        self.successResultOf(self.service.subscribe("a", "$share/g/s/+", 1))
        self.successResultOf(self.service.subscribe("a", "#", 0))
        self.assertEqual(self.successResultOf(self.service.publish(Message("s/1", b"", 2))), 1)
        self.assertEqual(self.successResultOf(self.service.publish(Message("$SYS/x"))), 0)
        self.service.closeSession("a")
        self.assertEqual(self.successResultOf(self.service.publish(Message("s/1"))), 0)
        self.assertEqual(self.sink.got, [("s/1", 1)])

    def test_fail_once(self) -> None:
        """fail() makes only the next call fail, and only names IBrokerService methods."""
        self.service.fail("subscribe", StorageError("x"))
        self.open()
        self.failureResultOf(self.service.subscribe("c", "a"), StorageError)
        self.assertEqual(self.successResultOf(self.service.subscribe("c", "a")), 0)
        self.service.fail("buildConnection", OSError("no"))
        with self.assertRaises(OSError):
            self.service.buildConnection(StringTransport(), "p", None)
        self.service.fail("closeSession", RuntimeError("no"))
        with self.assertRaises(RuntimeError):
            self.service.closeSession("c")
        for name in ("stats", "nonsense"):
            with self.assertRaises(ValueError):
                self.service.fail(name, RuntimeError())


@implementer(IMessageSink)
class SinkRecorder:
    """Records (topic, qos) of each delivery."""

    def __init__(self) -> None:
        self.got: list[tuple[str, int]] = []

    def deliver(self, message: Message, qos: int) -> None:
        self.got.append((message.topic, qos))


class GatewaySurfaceTests(SynchronousTestCase):
    """The gateway methods an HTTP or CoAP adapter uses, on the fake."""

    def test_authorize_retained_session_and_expiry(self) -> None:
        service = FakeBrokerService()
        self.assertEqual(self.successResultOf(service.authorize("publish", None, "c",
                                                                "$SYS/x")), False)
        service.forbidden.add(("subscribe", "secret/#"))
        self.assertEqual(self.successResultOf(service.authorize("subscribe", None, "c",
                                                                "secret/#")), False)
        self.assertEqual(self.successResultOf(service.authorize("publish", None, "c",
                                                                "a/b")), True)
        service.retained_messages = [Message("r/1", b"x", 0, True),
                                     Message("s/1", b"y", 0, True)]
        self.assertEqual([m.topic for m in self.successResultOf(service.retained("r/#"))],
                         ["r/1"])
        session = self.successResultOf(service.openSession("c", object(), False, None, 30))
        self.assertIs(service.session("c"), session)
        self.assertEqual(session.expiry, 30)
        service.connectionRefused()
        self.assertEqual(service.stats.connections_refused, 1)
