"""What an open SSE stream holds that the garbage collector walks (issue 14).

500 streams that never read held ~48,000 tracked objects (twisted.web's ``Request``
and channel, their headers, Deferreds, a ``LoopingCall`` each): ~90 a stream, walked
by the first full collection after they opened (23-28 ms of CPU).  Counted here in
the broker's process over real sockets: the clients are raw sockets made before the
count starts, so everything new is the broker's (accepted connection, channel,
stream, virtual session).
"""

from __future__ import annotations

import gc
import socket
from collections import Counter
from typing import Any

from twisted.internet.defer import inlineCallbacks

try:
    from tests.httpbroker import HTTPBrokerTestCase
except ImportError:  # pytest's rootdir-relative import
    from httpbroker import HTTPBrokerTestCase  # type: ignore[no-redef]

STREAMS = 40
SSE_REQUEST = (b"GET /subscribe?topic=w/%23 HTTP/1.1\r\nHost: x\r\n"
               b"Accept: text/event-stream\r\n\r\n")
#: Tracked objects an open stream may hold, its connection, channel, virtual session,
#: subscription and backlog included: 93 before (twisted.web's Request, its headers
#: and addresses, two Deferreds, a LoopingCall, two closures a channel), 38 measured.
PER_STREAM = 45


def tracked() -> Counter[str]:
    gc.collect()
    return Counter(type(o).__name__ for o in gc.get_objects())


class StreamWeightTests(HTTPBrokerTestCase):
    http_keys = {"stallTimeout": "30", "heartbeat": "15"}

    @inlineCallbacks
    def test_tracked_objects_per_open_stream(self) -> Any:
        """STREAMS live streams hold at most PER_STREAM tracked objects each, and no
        twisted.web Request, Headers or LoopingCall."""
        socks = []
        for _ in range(STREAMS):
            sock = socket.socket()
            self.addCleanup(sock.close)
            socks.append(sock)
        bridge = self.site.resource
        before = tracked()  # the sockets exist already: what is new is the broker's
        for sock in socks:
            sock.connect(("127.0.0.1", self.http_port))
            sock.sendall(SSE_REQUEST)
        yield self.wait_until(lambda: len(bridge.subscriptions) == STREAMS
                              and all(s.state == 1 for s in bridge.subscriptions))
        yield self.sleep(0.05)
        after = tracked()
        grown = after - before
        total = sum(grown.values())
        self.assertLessEqual(total / STREAMS, PER_STREAM, grown.most_common(20))
        for kind in ("BridgeRequest", "Headers", "LoopingCall"):
            self.assertLess(grown[kind], STREAMS // 10, kind)


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """The payload of a chunked body, strictly parsed, and whether it ended with the
    last chunk (``0\\r\\n\\r\\n``) and nothing after it."""
    out, rest = b"", body
    while rest:
        size_line, sep, rest = rest.partition(b"\r\n")
        assert sep, body[-200:]
        size = int(size_line, 16)
        if size == 0:
            return out, rest == b"\r\n"
        assert rest[size:size + 2] == b"\r\n", rest[:size + 10]
        out, rest = out + rest[:size], rest[size + 2:]
    return out, False


class LiveResponseTests(HTTPBrokerTestCase):
    """A live stream holds a small LiveResponse, not twisted.web's Request: its answer
    stays valid HTTP/1.1 chunked, ends with the last chunk, and the connection closes."""

    http_keys = {"stallTimeout": "0", "heartbeat": "0"}

    def read_all(self, sock: socket.socket) -> Any:
        sock.setblocking(False)
        data = [b""]

        def more() -> bool:
            try:
                chunk = sock.recv(1 << 16)
            except BlockingIOError:
                return False
            if not chunk:
                return True
            data[0] += chunk
            return False

        return self.wait_until(more).addCallback(lambda _: data[0])

    @inlineCallbacks
    def test_events_then_close_event_then_last_chunk_then_closed(self) -> Any:
        sock = socket.create_connection(("127.0.0.1", self.http_port))
        self.addCleanup(sock.close)
        sock.sendall(b"GET /subscribe?topic=w HTTP/1.1\r\nHost: x\r\n"
                     b"Accept: text/event-stream\r\n\r\n")
        bridge = self.site.resource
        yield self.wait_until(lambda: len(bridge.subscriptions) == 1)
        (stream,) = bridge.subscriptions
        yield self.wait_until(lambda: stream.state == 1)
        self.assertEqual(type(stream.request).__name__, "LiveResponse")
        from mqtt_twisted.message import Message

        for n in range(3):
            self.broker.route(Message("w", b"m%d" % n))
        yield self.sleep(0.05)
        self.service.gateway.closeSession(stream.client_id, remove=True)
        data = yield self.read_all(sock)
        head, _, body = data.partition(b"\r\n\r\n")
        self.assertIn(b"transfer-encoding: chunked", head.lower())
        payload, ended = dechunk(body)
        self.assertTrue(ended, body[-100:])
        self.assertEqual(payload.count(b'"payload":"m'), 3)
        self.assertTrue(payload.endswith(b'event: close\ndata: {"reason_code":152}\n\n'))
        self.assertEqual(len(bridge.streams), 0)
        yield self.wait_until(lambda: not self.site.channels)

    @inlineCallbacks
    def test_a_client_that_leaves_ends_its_session(self) -> Any:
        sock = socket.create_connection(("127.0.0.1", self.http_port))
        sock.sendall(b"GET /subscribe?topic=w HTTP/1.1\r\nHost: x\r\n"
                     b"Accept: text/event-stream\r\n\r\n")
        bridge = self.site.resource
        yield self.wait_until(lambda: any(s.state == 1 for s in bridge.subscriptions))
        (stream,) = bridge.subscriptions
        client = stream.client_id
        from mqtt_twisted.core import inspection

        self.assertIn(client, inspection.session_ids(self.broker))
        sock.close()
        yield self.wait_until(lambda: client not in inspection.session_ids(self.broker))
        self.assertEqual((len(bridge.streams), len(bridge.subscriptions)), (0, 0))
        yield self.wait_until(lambda: not self.site.channels)
