"""Bad input to the HTTP bridge never costs other clients: malformed requests, half-sent
and oversized bodies, an SSE client that stops reading, a long-poll client that vanishes.
Each is answered or dropped, with bounded buffering, while a well-behaved client carries on.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from mqtt_twisted.core import inspection
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.message import Message

try:
    from tests.httpbroker import HTTPBrokerTestCase, _parse_http
    from tests.pahoclient import TIMEOUT, with_timeout
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from httpbroker import HTTPBrokerTestCase, _parse_http  # type: ignore[no-redef]
    from pahoclient import TIMEOUT, with_timeout  # type: ignore[no-redef]


class RawHTTP(Protocol):
    """A socket that sends what the test says and keeps what comes back."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[None] = Deferred()
        self.is_closed = False
        self.on_data: Any = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.on_data is not None:
            self.on_data(self)

    def connectionLost(self, reason: Any = None) -> None:
        self.is_closed = True
        self.closed.callback(None)

    def wait_closed(self, reactor: Any) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        self.closed.addBoth(lambda r: (waiter.called or waiter.callback(None), r)[1])
        return with_timeout(waiter, reactor, TIMEOUT)


class BadInputTests(HTTPBrokerTestCase):
    """An HTTP listener with tight limits: 1 KiB bodies, 0.5 s idle deadline, SSE clients
    cut off after 1 s unread; sessions queue 10 messages at most."""

    settings = BrokerSettings(max_queued=10)
    http_endpoint = "tcp:0:interface=127.0.0.1:connectTimeout=0.5"
    http_keys = {"maxPayload": "1024", "stallTimeout": "1", "heartbeat": "0"}

    @inlineCallbacks
    def raw(self, data: bytes = b"") -> Any:
        client = yield connectProtocol(
            TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.http_port), RawHTTP())
        self.addCleanup(lambda: client.is_closed or client.transport.abortConnection())
        if data:
            client.transport.write(data)
        return client

    @inlineCallbacks
    def test_malformed_requests_get_400(self) -> Any:
        """A broken request line, a bad Content-Length or a header without a colon gets 400
        and a close; a stream open meanwhile carries on."""
        stream = yield self.agent_sse("/subscribe?topic=calm")
        yield stream.expect("subscribed")
        for junk in (b"NONSENSE\r\n\r\n",
                     b"POST /publish?topic=a HTTP/1.1\r\nContent-Length: lots\r\n\r\n",
                     b"GET /retained?topic=a HTTP/1.1\r\nno colon here\r\n\r\n"):
            client = yield self.raw(junk)
            yield client.wait_closed(self.reactor)
            self.assertTrue(client.received.startswith(b"HTTP/1.1 400"), client.received)
        yield self.json("POST", "/publish?topic=calm", 200, body=b"still here")
        event = yield stream.expect(None)
        self.assertEqual(event.data["payload"], "still here")

    @inlineCallbacks
    def test_half_sent_body_is_dropped(self) -> Any:
        """A body that stops arriving is dropped at the idle deadline, unpublished; other
        clients publish meanwhile."""
        client = yield self.raw(b"POST /publish?topic=half HTTP/1.1\r\nHost: x\r\n"
                                b"Content-Length: 100\r\n\r\n0123456789")
        started = time.monotonic()
        yield self.json("POST", "/publish?topic=whole", 200, body=b"ok")
        yield client.wait_closed(self.reactor)
        self.assertGreaterEqual(time.monotonic() - started, 0.4)
        self.assertEqual(client.received, b"")
        self.assertEqual(self.broker.stats.messages_received, 1)

    @inlineCallbacks
    def test_oversized_bodies_get_413(self) -> Any:
        """A body over maxPayload is answered 413 (0x95) and the connection closed, whether
        its length is declared (with or without Expect) or it comes chunked."""
        big = self.mktemp()
        with open(big, "wb") as f:
            f.write(b"x" * 5000)
        for extra in ((), ("-H", "Expect:"), ("-H", "Transfer-Encoding: chunked")):
            status, headers, body = yield self.curl(*extra, "--data-binary", f"@{big}",
                                                    method="POST", path="/publish?topic=big")
            self.assertEqual((status, headers["connection"]), (413, "close"), extra)
            self.assertEqual(json.loads(body)["reason_code"], 0x95)
        answer = yield self.json("POST", "/publish?topic=big", 413, body=b"y" * 1025)
        self.assertEqual(answer["reason_code"], 0x95)
        yield self.json("POST", "/publish?topic=small", 200, body=b"z" * 1024)
        self.assertEqual(self.broker.stats.messages_received, 1)

    @inlineCallbacks
    def test_sse_client_that_stops_reading(self) -> Any:
        """A stream left unread is paused; what comes meanwhile waits in the stream's
        backlog (at most max_queued, the oldest dropped and counted), not in its session:
        the session keeps no record per message and is not paused, so no publisher is
        held back for it.  It is cut off after stallTimeout; a reading stream gets
        everything."""
        reader = yield self.agent_sse("/subscribe?topic=flood")
        yield reader.expect("subscribed")
        before = inspection.session_ids(self.broker)
        stuck = yield self.raw()
        stuck.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        subscribed: Deferred[None] = Deferred()
        stuck.on_data = lambda c: (b"event: subscribed" in c.received and not subscribed.called
                                   and subscribed.callback(None))
        stuck.transport.write(b"GET /subscribe?topic=flood HTTP/1.1\r\nHost: x\r\n"
                              b"Accept: text/event-stream\r\n\r\n")
        yield with_timeout(subscribed, self.reactor)
        stuck.transport.pauseProducing()  # reads nothing more
        (stuck_id,) = inspection.session_ids(self.broker) - before
        (stream,) = [s for s in self.site.resource.subscriptions if s.client_id == stuck_id]

        def paused() -> bool:
            return stream.producer_paused

        payload = b"x" * 32768
        numbers = []
        for n in range(600):  # large messages at the reader's pace, until the stuck one pauses
            self.broker.route(Message("flood", b"%04d" % n + payload))
            event = yield reader.expect(None)
            numbers.append(int(event.data["payload"][:4]))
            if paused():
                break
        self.assertEqual(numbers, list(range(len(numbers))))
        self.assertTrue(paused())
        for n in range(15):  # a burst: the paused stream keeps the newest 10
            self.broker.route(Message("flood", b"small %d" % n))
        self.assertEqual([m.payload for m in stream.backlog.messages],
                         [b"small %d" % n for n in range(5, 15)])
        self.assertEqual(inspection.held_messages(self.broker, stuck_id), ())
        self.assertFalse(inspection.connection_info(self.broker, stuck_id).paused)
        self.assertEqual(self.broker.stats.messages_dropped, 5)
        burst = []
        for _ in range(15):
            event = yield reader.expect(None)
            burst.append(event.data["payload"])
        self.assertEqual(burst, [f"small {n}" for n in range(15)])
        # Still unread: cut off once paused for stallTimeout (refilled whenever it drains).
        deadline = time.monotonic() + TIMEOUT
        while stuck_id in inspection.session_ids(self.broker):
            self.assertLess(time.monotonic(), deadline)
            if paused():
                yield self.sleep(0.05)
                continue
            self.broker.route(Message("flood", b"more" + payload))
            yield reader.expect(None)
        stuck.transport.resumeProducing()  # it reads again, and finds the socket closed
        yield stuck.wait_closed(self.reactor)

    @inlineCallbacks
    def test_long_poll_client_that_disappears(self) -> Any:
        """A long-poll client that drops its socket takes its session (and timer) with it."""
        client = yield self.raw(b"GET /subscribe?topic=gone&timeout=30 HTTP/1.1\r\nHost: x\r\n\r\n")
        yield self.wait_until(lambda: any(s.subscriptions for s in inspection.sessions(self.broker)))
        client.transport.abortConnection()
        yield self.wait_until(lambda: not inspection.session_ids(self.broker))
        answer = yield self.request("GET", "/subscribe?topic=gone&timeout=0")
        self.assertEqual(answer[0], 204)

    @inlineCallbacks
    def test_pipelined_requests_after_a_stream(self) -> Any:
        """Requests pipelined on one connection are answered in order."""
        client = yield self.raw(
            b"POST /publish?topic=p HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\na"
            b"GET /retained?topic=p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        yield client.wait_closed(self.reactor)
        first, _, rest = client.received.partition(b"\r\n\r\n")
        self.assertTrue(first.startswith(b"HTTP/1.1 200"))
        second = rest[rest.index(b"HTTP/1.1"):]
        status, _, body = _parse_http(second)
        self.assertEqual((status, json.loads(body)), (200, {"messages": []}))
