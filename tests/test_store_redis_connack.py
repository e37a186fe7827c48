"""CONNACK of a persistent session with a long queue, Redis store (issue 19: under 10 ms
with 10,000 queued messages): the CONNACK must not wait for the queue to be read or
rewritten.  A real broker on a real redis-server; the bytes the store reads from Redis
between the CONNECT and the CONNACK are counted, and bounded far below one page of the
queue.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from mqtt_twisted.codec import (
    ConnAck,
    Connect,
    Disconnect,
    Publish,
    StreamDecoder,
    SubAck,
    Subscribe,
    Subscription,
    encode,
)
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.message import Message
from mqtt_twisted.store.redis import RedisStore
from mqtt_twisted.testing import start_broker, stop_broker

try:
    from tests.test_store_redis import RedisTestCase
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from test_store_redis import RedisTestCase  # type: ignore[no-redef]

QUEUED = 10_000
#: Bytes the store may read from Redis between CONNECT and CONNACK: a few replies (the
#: client lock, the session's own fields), nowhere near one queued record per in-flight
#: slot (a record here is about 90 bytes; the queue about 0.9 MB).
READ_BOUND = 2048


class _Client(Protocol):
    """A raw MQTT 3.1.1 client: packets in order, each with the Redis bytes read so far."""

    def __init__(self, read_so_far: Any) -> None:
        self.decoder = StreamDecoder(4)
        self.packets: list[tuple[Any, int]] = []
        self.read_so_far = read_so_far
        self._waiting: list[tuple[int, Deferred[None]]] = []

    def dataReceived(self, data: bytes) -> None:
        for packet in self.decoder.feed(data):
            self.packets.append((packet, self.read_so_far()))
        waiting, self._waiting = self._waiting, []
        for n, d in waiting:
            if len(self.packets) >= n:
                d.callback(None)
            else:
                self._waiting.append((n, d))

    def until(self, n: int) -> Deferred[None]:
        """Fires once ``n`` packets have arrived."""
        d: Deferred[None] = Deferred()
        if len(self.packets) >= n:
            d.callback(None)
        else:
            self._waiting.append((n, d))
        return d

    def send(self, packet: Any) -> None:
        self.transport.write(encode(packet, 4))


class ConnackQueueTests(RedisTestCase):

    timeout = 120

    @inlineCallbacks
    def test_connack_reads_nothing_of_a_long_queue(self) -> Any:
        """A persistent session with 10,000 queued QoS 1 messages in Redis reconnects:
        the CONNACK comes first (session present), the store has read at most a few
        replies' worth of bytes from Redis by then, and the in-flight window follows."""
        from twisted.internet import reactor

        store = RedisStore.fromURL(reactor, self.server.url(pool=1))  # start_broker starts it
        settings = BrokerSettings(max_queued=QUEUED + 100, max_inflight=20)
        service, port = yield start_broker(reactor, settings, store)
        self.addCleanup(stop_broker, service)
        read = [0]
        protocol = store._links[0].protocol
        original = protocol.dataReceived

        def counted(data: bytes, *args: Any) -> None:
            read[0] += len(data)
            original(data, *args)

        protocol.dataReceived = counted
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)

        first = yield connectProtocol(endpoint, _Client(lambda: read[0]))
        first.send(Connect("queued", 4, False, 0))
        first.send(Subscribe(1, [Subscription("q/t", 1)]))
        yield first.until(2)
        self.assertEqual([type(p) for p, _ in first.packets], [ConnAck, SubAck])
        first.send(Disconnect())
        first.transport.loseConnection()
        while service.broker.sessions["queued"].connection is not None:
            yield self.wait(0.01)
        for i in range(QUEUED):  # one reactor turn: one batch of 10,000 records
            service.broker.route(Message("q/t", b"%05d" % i + b"x" * 59, 1))
        yield store._links[0].drained()
        self.assertEqual((yield self.raw("HLEN", b"mqtt:out:{queued}")), QUEUED)

        again = yield connectProtocol(endpoint, _Client(lambda: read[0]))
        before = read[0]
        again.send(Connect("queued", 4, False, 0))
        yield again.until(21)
        connack, read_by_then = again.packets[0]
        self.assertIsInstance(connack, ConnAck)
        self.assertTrue(connack.session_present)
        self.assertLessEqual(read_by_then - before, READ_BOUND)
        publishes = [p for p, _ in again.packets[1:]]
        self.assertEqual([type(p) for p in publishes], [Publish] * 20)
        self.assertEqual([p.payload[:5] for p in publishes],
                         [b"%05d" % i for i in range(20)])
        again.transport.loseConnection()
