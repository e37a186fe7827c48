"""HTTP streams that hostile clients hold (issue 14): the concurrent streams of a listener
(``maxStreams=``, 503 with JSON when full) and SSE streams whose client stops reading
(the socket's small send buffer pauses the stream soon, then ``stallTimeout`` cuts it
off), over real sockets."""

from __future__ import annotations

import json
import socket
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from mqtt_twisted.message import Message

try:
    from tests.httpbroker import HTTPBrokerTestCase
except ImportError:  # pytest's rootdir-relative import
    from httpbroker import HTTPBrokerTestCase  # type: ignore[no-redef]

SSE_REQUEST = (b"GET /subscribe?topic=t/%23 HTTP/1.1\r\nHost: x\r\n"
               b"Accept: text/event-stream\r\n\r\n")


class RawClient(Protocol):
    """A socket that sends one request and keeps what comes back; ``reading=False``
    stops reading at once (a client that never reads its stream)."""

    def __init__(self, request: bytes, reading: bool = True) -> None:
        self.request = request
        self.reading = reading
        self.data = b""
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        if not self.reading:
            sock = self.transport.getHandle()  # type: ignore[attr-defined]
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            self.transport.pauseProducing()  # type: ignore[attr-defined]
        self.transport.write(self.request)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)


class MaxStreamsTests(HTTPBrokerTestCase):
    http_keys = {"maxStreams": "2"}

    @inlineCallbacks
    def open_stream(self) -> Any:
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.http_port)
        client = yield connectProtocol(endpoint, RawClient(SSE_REQUEST))
        self.addCleanup(lambda: client.transport.abortConnection())
        yield self.wait_until(lambda: b"event: subscribed" in client.data)
        return client

    @inlineCallbacks
    def test_streams_past_the_limit_get_503(self):
        first = yield self.open_stream()
        yield self.open_stream()
        status, headers, body = yield self.request("GET", "/subscribe?topic=x")  # long poll
        self.assertEqual(status, 503)
        self.assertEqual(json.loads(body)["reason_code"], 0x89)
        self.assertEqual(headers.get("retry-after"), "5")
        first.transport.abortConnection()
        yield first.closed
        yield self.wait_until(lambda: len(self.site.resource.streams) == 1)
        yield self.open_stream()  # a place again

    @inlineCallbacks
    def test_refused_requests_do_not_count(self):
        for _ in range(3):
            status, _, _ = yield self.request("GET", "/subscribe?topic=%23/x")  # a bad filter
            self.assertEqual(status, 400)
        self.assertEqual(len(self.site.resource.streams), 0)
        yield self.open_stream()
        yield self.open_stream()


class StalledStreamTests(HTTPBrokerTestCase):
    """An SSE client that never reads is cut off within stallTimeout of its stream
    filling a small buffer, not after megabytes (the kernel's send buffer, left to
    autotuning, took 2 MB and more on loopback before the stream was paused)."""

    http_keys = {"stallTimeout": "1", "heartbeat": "0"}

    @inlineCallbacks
    def test_unread_stream_is_cut_off_soon(self):
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.http_port)
        client = yield connectProtocol(endpoint, RawClient(SSE_REQUEST, reading=False))
        self.addCleanup(lambda: client.transport.abortConnection())
        yield self.wait_until(lambda: self.site.resource.subscriptions)
        yield self.sleep(0.2)
        started = self.reactor.seconds()
        payload = b"y" * 1000
        for _ in range(50):  # 1 MB over 0.5 s, less than loopback's autotuned send buffer
            for _ in range(20):
                self.service.gateway.publish(Message("t/x", payload))
            yield self.sleep(0.01)
        # (The client does not read, so it would not notice the close: look at our side.)
        yield self.wait_until(lambda: not self.site.channels, timeout=5)
        self.assertFalse(self.site.resource.subscriptions)
        self.assertLess(self.reactor.seconds() - started, 3.5)


class NonAsciiRequestTests(HTTPBrokerTestCase):
    """A HEAD request whose URI has a byte over 0x7F: twisted.web logs a line describing
    the request, whose repr raised UnicodeDecodeError (a traceback in the log; found by
    the live HTTP fuzzer).  The request is answered and nothing is logged as an error."""

    @inlineCallbacks
    def test_head_with_a_non_ascii_uri(self):
        from twisted.logger import globalLogPublisher

        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.http_port)
        client = yield connectProtocol(endpoint, RawClient(
            b"HEAD /publish?topic=f/x&q\x80s=1 HTTP/1.1\r\nHost: x\r\n\r\n"))
        self.addCleanup(lambda: client.transport.abortConnection())
        yield self.wait_until(lambda: b"\r\n\r\n" in client.data)
        self.assertTrue(client.data.startswith(b"HTTP/1.1 405"), client.data[:40])
        from twisted.logger import formatEvent

        text = [formatEvent(e) for e in events]
        self.assertFalse([t for t in text if "Unable to format" in t or "repr error" in t],
                         text)
        self.assertFalse([e for e in events if e.get("log_failure") is not None])

    def test_repr_of_any_request(self):
        from twisted.web.test.requesthelper import DummyChannel

        from mqtt_twisted.adapters._deadline import SafeRequest

        request = SafeRequest(DummyChannel())
        request.method, request.uri, request.clientproto = b"G\xffT", b"/\x80", b"HTTP/1.1"
        self.assertIn("uri=b'/\\x80'", repr(request))
