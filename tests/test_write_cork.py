"""An MQTT stream protocol writes what one read produced as one transport write.

``adapters/mqtt.py`` ``_Cork``: a Twisted transport's ``write`` costs five Python calls
of its own, and a read of many PUBLISHes made one write per packet, to the publisher
(its acks) and to each subscriber. These tests drive the real protocol and broker
service over ``StringTransport`` on a fake clock, and count the transport's writes.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.adapters.listener import ListenerSettings
from mqtt_twisted.adapters.mqtt import MQTTStreamFactory
from mqtt_twisted.codec import (
    Connect,
    Packet,
    Publish,
    StreamDecoder,
    Subscribe,
    Subscription,
    Will,
    encode,
)
from mqtt_twisted.service import BrokerService
from mqtt_twisted.store.memory import MemoryStore


class CountingTransport(StringTransport):
    """Records each write and each close, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[Any] = []

    def write(self, data: bytes) -> None:
        self.events.append(bytes(data))
        super().write(data)

    def loseConnection(self) -> None:
        self.events.append("close")
        super().loseConnection()

    def loseWriteConnection(self) -> None:
        self.events.append("close")
        super().loseConnection()

    def writes(self) -> list[bytes]:
        return [e for e in self.events if isinstance(e, bytes)]

    def packets(self, version: int = 4) -> list[Packet]:
        return StreamDecoder(version).feed(self.value())


class CorkTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.service = BrokerService(self.clock, MemoryStore(self.clock))
        self.service.running = True
        self.factory = MQTTStreamFactory(self.service.gateway,
                                         ListenerSettings("mqtt", "tcp:0", 0), self.clock)

    def client(self, client_id: str, *packets: Packet) -> tuple[Any, CountingTransport]:
        protocol = self.factory.buildProtocol(None)
        transport = CountingTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"".join(encode(p, 4) for p in packets[:1]) if packets
                              else encode(Connect(client_id, 4), 4))
        for p in packets[1:]:
            protocol.dataReceived(encode(p, 4))
        self.clock.advance(0)
        return protocol, transport

    def test_a_reads_answers_are_one_write(self) -> None:
        """CONNECT and five QoS 1 PUBLISHes in one read: CONNACK and the five PUBACKs
        in their order, in one write."""
        protocol = self.factory.buildProtocol(None)
        transport = CountingTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(encode(Connect("pub", 4), 4) + b"".join(
            encode(Publish("t", b"x", 1, packet_id=i), 4) for i in range(1, 6)))
        self.assertEqual(len(transport.writes()), 1)
        packets = transport.packets()
        self.assertEqual([type(p).__name__ for p in packets],
                         ["ConnAck"] + ["PubAck"] * 5)
        self.assertEqual([p.packet_id for p in packets[1:]], [1, 2, 3, 4, 5])

    def test_a_subscriber_gets_a_reads_deliveries_in_one_write(self) -> None:
        """Ten PUBLISHes read from one publisher reach a subscriber as one write, made
        when the publisher's read ends (no reactor turn needed)."""
        _, sub = self.client("sub", Connect("sub", 4),
                             Subscribe(1, [Subscription("t/#", 0)]))
        before = len(sub.writes())
        pub_protocol, _ = self.client("pub")
        pub_protocol.dataReceived(b"".join(
            encode(Publish(f"t/{i}", b"%d" % i, 0), 4) for i in range(10)))
        self.assertEqual(len(sub.writes()), before + 1)
        got = [p for p in sub.packets() if isinstance(p, Publish)]
        self.assertEqual([p.topic for p in got], [f"t/{i}" for i in range(10)])

    def test_writes_outside_a_read_go_at_the_next_turn(self) -> None:
        """A will published when its client's socket is lost (not in a read) reaches the
        subscriber at the reactor's next turn, not never."""
        _, sub = self.client("sub", Connect("sub", 4),
                             Subscribe(1, [Subscription("wills/#", 0)]))
        leaver, _ = self.client(
            "leaver", Connect("leaver", 4, will=Will("wills/leaver", b"gone", 0, False)))
        leaver.connectionLost(None)
        self.assertFalse([p for p in sub.packets() if isinstance(p, Publish)])
        self.clock.advance(0)
        [will] = [p for p in sub.packets() if isinstance(p, Publish)]
        self.assertEqual((will.topic, will.payload), ("wills/leaver", b"gone"))

    def test_a_close_writes_what_is_kept_first(self) -> None:
        """A second CONNECT is a protocol violation: the broker closes the connection,
        and what the read produced before (the PUBACK) is written before the close."""
        protocol = self.factory.buildProtocol(None)
        transport = CountingTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(encode(Connect("c", 4), 4)
                              + encode(Publish("t", b"x", 1, packet_id=7), 4)
                              + encode(Connect("c", 4), 4))
        self.assertIn("close", transport.events)
        closed_at = transport.events.index("close")
        written = b"".join(e for e in transport.events[:closed_at] if isinstance(e, bytes))
        packets = StreamDecoder(4).feed(written)
        self.assertEqual([type(p).__name__ for p in packets], ["ConnAck", "PubAck"])
