"""An SSE stream whose client does not keep up holds what it could not write in its own
backlog (``_httpstream.Backlog``: the messages themselves, bounded as a session queue),
not in its session: 500 streams that stopped reading held 500,000 ``Outbound`` records,
which every full garbage collection walked (bystander p99 161-206 ms, issue 14)."""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from mqtt_twisted.adapters._httpstream import Backlog
from mqtt_twisted.core import inspection
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.message import Message

try:
    from tests.httpbroker import HTTPBrokerTestCase
    from tests.test_http_streams import RawClient
except ImportError:  # pytest's rootdir-relative import
    from httpbroker import HTTPBrokerTestCase  # type: ignore[no-redef]
    from test_http_streams import RawClient  # type: ignore[no-redef]


def test_bounded_by_count_oldest_dropped() -> None:
    backlog = Backlog(3, 0)
    dropped = [backlog.add(Message("t", b"%d" % n)) for n in range(5)]
    assert dropped == [0, 0, 0, 1, 1] and backlog.dropped == 2
    assert [backlog.pop().payload for _ in range(len(backlog))] == [b"2", b"3", b"4"]
    assert backlog.size == 0 and not backlog


def test_bounded_by_bytes_as_a_queued_copy() -> None:
    """Payload and topic, as ``session.queued_size`` counts a queued copy; a message
    larger than the whole bound is dropped itself."""
    backlog = Backlog(100, 30)
    assert backlog.add(Message("t", b"x" * 9)) == 0  # 10 bytes
    assert backlog.add(Message("t", b"y" * 19)) == 0  # 20: 30 in all
    assert backlog.add(Message("t", b"z" * 9)) == 1  # the oldest goes
    assert backlog.size == 30 and len(backlog) == 2
    assert backlog.add(Message("t", b"w" * 30)) == 1 and len(backlog) == 2
    assert backlog.dropped == 2


def test_a_reading_streams_backlog_drops_nothing() -> None:
    """Unbounded while it only waits for the writer's next turn (a burst routed in one
    turn to a stream that reads), bounded again once messages come while paused."""
    backlog = Backlog(3, 0)
    assert [backlog.add(Message("t", b"%d" % n), bounded=False) for n in range(5)] == [0] * 5
    assert len(backlog) == 5 and backlog.dropped == 0
    assert backlog.add(Message("t", b"5")) == 3  # paused now: back within 3
    assert [backlog.pop().payload for _ in range(len(backlog))] == [b"3", b"4", b"5"]


class BacklogStreamTests(HTTPBrokerTestCase):
    """Over real sockets: a client that stops reading, then reads again."""

    settings = BrokerSettings(max_queued=50)
    http_keys = {"stallTimeout": "0", "heartbeat": "0"}

    @inlineCallbacks
    def test_a_client_that_reads_again_gets_the_backlog_in_order(self) -> Any:
        """Nothing is held in the session meanwhile and it is never paused (no publisher
        is held back for a stream); the backlog's newest 50 come when the client reads
        again, after what the socket held, the ids in sequence; the dropped are counted."""
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.http_port)
        request = (b"GET /subscribe?topic=b HTTP/1.1\r\nHost: x\r\n"
                   b"Accept: text/event-stream\r\n\r\n")
        client = yield connectProtocol(endpoint, RawClient(request, reading=False))
        self.addCleanup(lambda: client.transport.abortConnection())
        yield self.wait_until(lambda: self.site.resource.subscriptions)
        (stream,) = self.site.resource.subscriptions
        payload = b"p" * 4000
        sent = 0
        while not stream.producer_paused:
            self.broker.route(Message("b", b"%06d" % sent + payload))
            sent += 1
            if sent % 20 == 0:
                yield self.sleep(0.01)  # let the socket fill
        first_held = sent
        for _ in range(200):
            self.broker.route(Message("b", b"%06d" % sent + payload))
            sent += 1
        self.assertEqual(len(stream.backlog), 50)
        self.assertEqual(inspection.held_messages(self.broker, stream.client_id), ())
        self.assertFalse(inspection.connection_info(self.broker, stream.client_id).paused)
        self.assertEqual(self.broker.stats.messages_dropped, 150)

        client.transport.resumeProducing()
        frames = re.compile(rb'id: (\d+)\ndata: \{"id":"\d+","topic":"b",[^}]*?"payload":"(\d{6})')

        def numbered() -> list[tuple[int, int]]:  # (the chunked body's frames are whole)
            return [(int(i), int(n)) for i, n in frames.findall(client.data)]

        # (20 s: the client's 4 KiB receive window reopens on the kernel's persist timer.)
        yield self.wait_until(lambda: numbered() and numbered()[-1][1] == sent - 1, timeout=20)
        ids, numbers = zip(*numbered())
        self.assertEqual(list(ids), list(range(1, len(ids) + 1)))  # no gap in the ids written
        # What the socket and twisted.web held, then the backlog's newest 50.
        self.assertEqual(list(numbers), list(range(first_held)) + list(range(sent - 50, sent)))
        self.assertEqual(len(stream.backlog), 0)


class PersistentStreamTests(HTTPBrokerTestCase):
    """A persistent client's stream (``client=``) still pauses its session, whose
    queue outlives the stream as the session does."""

    settings = BrokerSettings(max_queued=10)
    http_keys = {"stallTimeout": "0", "heartbeat": "0"}

    @inlineCallbacks
    def test_queued_in_the_session(self) -> Any:
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.http_port)
        request = (b"GET /subscribe?topic=q&client=keeper&qos=1 HTTP/1.1\r\nHost: x\r\n"
                   b"Accept: text/event-stream\r\n\r\n")
        client = yield connectProtocol(endpoint, RawClient(request, reading=False))
        self.addCleanup(lambda: client.transport.abortConnection())
        yield self.wait_until(lambda: self.site.resource.subscriptions)
        (stream,) = self.site.resource.subscriptions
        self.assertIsNone(stream.backlog)
        sent = 0
        while not stream.producer_paused:
            self.broker.route(Message("q", b"x" * 4000, qos=1))
            sent += 1
            if sent % 20 == 0:
                yield self.sleep(0.01)
        for _ in range(20):
            self.broker.route(Message("q", b"late", qos=1))
        held = inspection.held_messages(self.broker, "keeper")
        self.assertEqual([m.payload for m in held], [b"late"] * 10)
        self.assertTrue(inspection.connection_info(self.broker, "keeper").paused)


class PacedWriterTests(HTTPBrokerTestCase):
    """Over real sockets: a PUBLISH to many live streams is written by the bridge's
    writer in later turns (``adapters/_ssewriter.py``), not in its own turn."""

    http_keys = {"stallTimeout": "0", "heartbeat": "0"}

    @inlineCallbacks
    def test_routed_now_written_at_the_next_turns(self) -> Any:
        """Right after ``route`` the 20 streams' events are only in their backlogs and
        the writer's line; then every client gets them, in order, ids in sequence."""
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.http_port)
        request = (b"GET /subscribe?topic=w HTTP/1.1\r\nHost: x\r\n"
                   b"Accept: text/event-stream\r\n\r\n")
        clients = []
        for _ in range(20):
            client = yield connectProtocol(endpoint, RawClient(request))
            self.addCleanup(client.transport.abortConnection)
            clients.append(client)
        bridge = self.site.resource
        yield self.wait_until(lambda: len(bridge.subscriptions) == 20
                              and all(b"subscribed" in c.data for c in clients))
        for n in range(3):
            self.broker.route(Message("w", b"m%d" % n))
        self.assertEqual(sorted(len(s.backlog) for s in bridge.subscriptions), [3] * 20)
        self.assertEqual(set(bridge.writer.ready), bridge.subscriptions)
        self.assertFalse(any(b"m0" in c.data for c in clients))
        frames = re.compile(rb'id: (\d+)\ndata: \{"id":"(\d+)","topic":"w",[^}]*?"payload":"m(\d)"')
        yield self.wait_until(lambda: all(len(frames.findall(c.data)) == 3 for c in clients))
        for client in clients:
            self.assertEqual(frames.findall(client.data),
                             [(b"1", b"1", b"0"), (b"2", b"2", b"1"), (b"3", b"3", b"2")])
        self.assertEqual(bridge.writer.ready, {})

    @inlineCallbacks
    def test_what_waits_is_written_before_the_close_event(self) -> Any:
        """A stream that ends (its session removed) in the turn of a delivery writes
        that event before ``event: close``."""
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.http_port)
        request = (b"GET /subscribe?topic=e HTTP/1.1\r\nHost: x\r\n"
                   b"Accept: text/event-stream\r\n\r\n")
        client = yield connectProtocol(endpoint, RawClient(request))
        self.addCleanup(client.transport.abortConnection)
        bridge = self.site.resource
        yield self.wait_until(lambda: bridge.subscriptions and b"subscribed" in client.data)
        (stream,) = bridge.subscriptions
        self.broker.route(Message("e", b"last words"))
        self.service.gateway.closeSession(stream.client_id, remove=True)
        yield client.closed
        body = client.data
        self.assertIn(b"last words", body)
        self.assertLess(body.index(b"last words"), body.index(b"event: close"))
