"""``haproxy:`` listeners: the PROXY protocol header (v1 and v2) in front of MQTT.

Behind HAProxy every TCP connection comes from the proxy; the header says who the
client is.  The broker must know it before it serves the connection: the per-address
connection rate, the logs and the authenticator's ``Origin.peer`` are about the
client, not the proxy (before: the connection was built before the header was read,
so all three saw the proxy's address, and a remote proxy hit ``maxConnectionRate``
for all its clients together).
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import deferLater
from twisted.trial import unittest

from mqtt_twisted.adapters.listener import parse_listener
from mqtt_twisted.adapters.mqtt import MQTTAdapter
from mqtt_twisted.adapters.proxyheader import ProxyHeader, parse_header
from mqtt_twisted.codec import ConnAck, Connect, encode
from mqtt_twisted.service import BrokerService
from mqtt_twisted.store.memory import MemoryStore

CONNACK = encode(ConnAck(False, 0), 4)


class _Client(protocol.Protocol):
    """Sends ``chunks`` one reactor turn apart; keeps what comes back."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.received = b""
        self.lost: Deferred[None] = Deferred()
        self.pending: Any = None

    def connectionMade(self) -> None:
        self._next()

    def _next(self) -> None:
        from twisted.internet import reactor

        if self.chunks and self.transport is not None:
            self.transport.write(self.chunks.pop(0))
            self.pending = reactor.callLater(0.01, self._next)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        if self.pending is not None and self.pending.active():
            self.pending.cancel()
        self.transport = None
        self.lost.callback(None)


def v2_header(source: str, port: int) -> bytes:
    """A PROXY v2 header for a TCP over IPv4 connection from ``source``:``port``."""
    addresses = (bytes(int(x) for x in source.split(".")) + bytes([127, 0, 0, 1])
                 + struct.pack("!HH", port, 1883))
    return (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11])
            + struct.pack("!H", len(addresses)) + addresses)


class ProxyHeaderTests(unittest.TestCase):
    timeout = 20

    @inlineCallbacks
    def serve(self, keys: str = "") -> Any:
        from twisted.internet import reactor

        self.reactor = reactor
        self.service = BrokerService(reactor, MemoryStore(reactor), None, None, None, 10.0, 0)
        listener = self.service.addListener(MQTTAdapter(), parse_listener(
            "haproxy:tcp:0:interface=127.0.0.1" + keys))
        self.service.startService()
        self.addCleanup(self.service.stopService)
        yield self.service.ready
        port = yield listener.whenListening()
        self.port = port.getHost().port

    @inlineCallbacks
    def send(self, *chunks: bytes) -> Any:
        client = _Client(list(chunks))
        yield TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port).connect(
            protocol.Factory.forProtocol(lambda: client))
        self.addCleanup(lambda: client.transport and client.transport.abortConnection())
        return client

    @inlineCallbacks
    def answered(self, client: _Client, size: int = 4) -> Any:
        """Until ``client`` has ``size`` bytes or is closed."""
        for _ in range(500):
            if len(client.received) >= size or client.lost.called:
                break
            yield deferLater(self.reactor, 0.01, lambda: None)
        return client.received

    def connection(self, client_id: str) -> Any:
        [conn] = [c for c in self.service.broker.connections if c.client_id == client_id]
        return conn

    @inlineCallbacks
    def test_v1_peer_is_the_declared_client(self) -> Any:
        """The connection's peer (logs, ``Origin``) is the address in the header."""
        yield self.serve()
        client = yield self.send(b"PROXY TCP4 10.1.2.3 127.0.0.1 5555 1883\r\n"
                                 + encode(Connect("proxied", 4, True, 0), 4))
        self.assertEqual((yield self.answered(client))[:4], CONNACK)
        self.assertEqual(self.connection("proxied").peer, "10.1.2.3:5555")

    @inlineCallbacks
    def test_v2_header_in_small_pieces(self) -> Any:
        """A v2 header that comes in 3-byte reads is read whole (Twisted's own wrapper
        closed a connection whose first read was shorter than 16 bytes)."""
        yield self.serve()
        data = v2_header("10.7.7.7", 4242) + encode(Connect("pieces", 4, True, 0), 4)
        client = yield self.send(*[data[i:i + 3] for i in range(0, len(data), 3)])
        self.assertEqual((yield self.answered(client))[:4], CONNACK)
        self.assertEqual(self.connection("pieces").peer, "10.7.7.7:4242")

    @inlineCallbacks
    def test_connection_rate_is_per_declared_client(self) -> Any:
        """``maxConnectionRate`` counts the header's address: a second connection from
        one client within the second is refused, another client's is served (before:
        the proxy's loopback address was exempt, so neither was ever limited)."""
        yield self.serve(":maxConnectionRate=1")
        first = yield self.send(b"PROXY TCP4 10.0.0.1 127.0.0.1 1000 1883\r\n"
                                + encode(Connect("one", 4, True, 0), 4))
        self.assertEqual((yield self.answered(first))[:4], CONNACK)
        again = yield self.send(b"PROXY TCP4 10.0.0.1 127.0.0.1 1001 1883\r\n"
                                + encode(Connect("one-again", 4, True, 0), 4))
        yield again.lost
        self.assertEqual(again.received, b"")
        other = yield self.send(b"PROXY TCP4 10.0.0.2 127.0.0.1 1002 1883\r\n"
                                + encode(Connect("two", 4, True, 0), 4))
        self.assertEqual((yield self.answered(other))[:4], CONNACK)
        self.assertEqual(self.service.broker.stats.connection_rate_refusals, 1)

    @inlineCallbacks
    def test_no_header_is_closed(self) -> Any:
        """A connection that does not start with a PROXY header is closed unserved."""
        yield self.serve()
        client = yield self.send(encode(Connect("direct", 4, True, 0), 4))
        yield client.lost
        self.assertEqual(client.received, b"")
        self.assertEqual(len(self.service.broker.connections), 0)

    @inlineCallbacks
    def test_header_deadline(self) -> Any:
        """A header that never ends is cut off at the listener's connectTimeout."""
        yield self.serve(":connectTimeout=0.3")
        client = yield self.send(b"PROXY TCP4 10.0.0.9")
        started = self.reactor.seconds()
        yield client.lost
        self.assertLess(self.reactor.seconds() - started, 5.0)
        self.assertEqual(client.received, b"")

    @inlineCallbacks
    def test_local_command_keeps_the_socket_peer(self) -> Any:
        """A v2 LOCAL header (the proxy's own health check) has no client address: the
        socket's own peer stands."""
        yield self.serve()
        local = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20, 0x00]) + struct.pack("!H", 0)
        client = yield self.send(local + encode(Connect("health", 4, True, 0), 4))
        self.assertEqual((yield self.answered(client))[:4], CONNACK)
        self.assertTrue(self.connection("health").peer.startswith("127.0.0.1:"))


class ParseHeaderTests(unittest.SynchronousTestCase):
    """``parse_header``, sans-IO: every version and family, every way to be wrong."""

    def test_v1_tcp6(self) -> None:
        line = b"PROXY TCP6 2001:db8::1 ::1 40000 1883\r\n"
        info, size = parse_header(line + b"\x10rest")
        self.assertEqual(size, len(line))
        self.assertEqual((info.source.host, info.source.port), ("2001:db8::1", 40000))
        self.assertEqual((info.destination.host, info.destination.port), ("::1", 1883))

    def test_v1_unknown_keeps_no_address(self) -> None:
        self.assertEqual(parse_header(b"PROXY UNKNOWN ffff\r\n"), (ProxyHeader(None, None), 20))

    def test_incomplete_is_none(self) -> None:
        for data in (b"", b"PR", b"PROXY TCP4 10.0.0.1", b"\r\n\r\n\x00",
                     v2_header("10.0.0.1", 1)[:20]):
            self.assertEqual(parse_header(data), (None, 0), data)

    def test_invalid(self) -> None:
        for data in (b"\x10\x0c\x00\x04MQTT", b"PROXY TCP4 10.0.0.1 10.0.0.2 1 99999\r\n",
                     b"PROXY TCP4 ::1 10.0.0.2 1 2\r\n", b"PROXY TCP4 10.0.0.1\r\n",
                     b"PROXY UDP4 10.0.0.1 10.0.0.2 1 2\r\n", b"PROXY " + b"9" * 200,
                     b"PROXZ", b"\r\n\r\n\x00\r\nQUIZ\n\x21\x11\x00\x0c",
                     b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c" + bytes(12),  # version 3
                     b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x04" + bytes(4)):  # too short
            with self.assertRaises(ValueError, msg=data):
                parse_header(data)

    def test_v2_ipv6_with_tlvs(self) -> None:
        addresses = bytes(15) + b"\x01" + bytes(15) + b"\x02" + struct.pack("!HH", 7, 8)
        tlv = b"\x04\x00\x02ab"  # a TLV after the addresses is skipped
        body = addresses + tlv
        data = b"\r\n\r\n\x00\r\nQUIT\n\x21\x21" + struct.pack("!H", len(body)) + body
        info, size = parse_header(data + b"next")
        self.assertEqual(size, len(data))
        self.assertEqual((info.source.host, info.source.port), ("::1", 7))
        self.assertEqual((info.destination.host, info.destination.port), ("::2", 8))

    def test_random_bytes_only_value_errors(self) -> None:
        """Whatever arrives, the parser answers, waits or raises ValueError."""
        import random

        rng = random.Random(7)
        seeds = [b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", v2_header("1.2.3.4", 5)]
        for _ in range(20_000):
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data[:rng.randint(0, len(data))])
            try:
                parse_header(data)
            except ValueError:
                pass
