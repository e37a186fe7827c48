"""Absolute deadlines on HTTP requests of ``http=`` and ``ws=`` listeners: a request head
or body trickled a byte at a time is cut off (408), where the idle timer, restarted by
every byte, never fired (issue 14, docs/limits.md)."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import TestCase

from mqtt_twisted.adapters import http, websocket
from mqtt_twisted.adapters.listener import ListenerSettings, parse_listener
from mqtt_twisted.testing.fake_service import FakeBrokerService

try:
    from tests.httpbroker import HTTPBrokerTestCase, _parse_http, check_answer
    from tests.test_http_badinput import RawHTTP
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from httpbroker import HTTPBrokerTestCase, _parse_http, check_answer  # type: ignore[no-redef]
    from test_http_badinput import RawHTTP  # type: ignore[no-redef]

HEAD = (b"POST /publish?topic=t HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/octet-stream\r\n")


def settings(adapter: str, **keys: Any) -> ListenerSettings:
    return ListenerSettings(adapter, "tcp:0", 0, 10.0, **keys)


class _Harness:
    """One channel of a site on a fake clock and a string transport."""

    def __init__(self, site: Any, reactor: MemoryReactorClock) -> None:
        self.reactor = reactor
        self.channel = site.buildProtocol(None)
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)

    def trickle(self, data: bytes, every: float) -> None:
        for i in range(len(data)):
            if self.closed():
                return
            self.channel.dataReceived(data[i:i + 1])
            self.reactor.advance(every)

    def closed(self) -> bool:
        return self.transport.disconnecting or self.transport.disconnected

    def status(self) -> int | None:
        value = self.transport.value()
        if not value.startswith(b"HTTP/1.1 "):
            return None
        return int(value[9:12])


class DeadlineChannelTests(TestCase):
    """Sans-socket: the site's channel on a MemoryReactorClock."""

    def http(self, **keys: Any) -> _Harness:
        reactor = MemoryReactorClock()
        site = http.build_site(reactor, FakeBrokerService(reactor), settings("http", **keys))
        return _Harness(site, reactor)

    def test_trickled_head_is_cut_off_at_the_deadline(self) -> None:
        """A head sent one byte every 4 s (each byte restarting the 10 s idle timer) gets
        408 with a JSON error once 10 s have passed since the connection."""
        h = self.http()
        h.trickle(HEAD, every=4.0)
        self.assertTrue(h.closed())
        self.assertEqual(h.status(), 408)
        self.assertLessEqual(h.reactor.seconds(), 12.0)
        body = h.transport.value().split(b"\r\n\r\n", 1)[1]
        self.assertIn("request head", json.loads(body)["error"])

    def test_head_deadline_follows_the_option(self) -> None:
        """requestTimeout=2 cuts a trickled head after 2 s; 0 switches the deadline off
        (the idle timer is then all there is)."""
        h = self.http(requestTimeout=2.0)
        h.trickle(HEAD, every=0.5)
        self.assertEqual(h.status(), 408)
        self.assertLessEqual(h.reactor.seconds(), 2.5)
        h = self.http(requestTimeout=0.0)
        h.trickle(HEAD, every=4.0)
        self.assertFalse(h.closed())

    def test_slow_body_is_cut_off(self) -> None:
        """A body that keeps up less than minBodyRate bytes per second is refused 408 at
        the first check, although bytes keep coming."""
        h = self.http(minBodyRate=100.0)
        h.channel.dataReceived(HEAD + b"Content-Length: 100000\r\n\r\n")
        for _ in range(12):
            if h.closed():
                break
            h.channel.dataReceived(b"x" * 50)  # 50 bytes/s
            h.reactor.advance(1.0)
        self.assertEqual(h.status(), 408)
        self.assertIn(b"request body", h.transport.value())

    def test_a_body_that_keeps_up_is_not_cut_off(self) -> None:
        """150 bytes/s against a 100 bytes/s floor passes two checks and is answered."""
        h = self.http(minBodyRate=100.0)
        h.channel.dataReceived(HEAD + b"Content-Length: 3000\r\n\r\n")
        for _ in range(20):
            h.channel.dataReceived(b"x" * 150)
            h.reactor.advance(1.0)
        self.assertNotEqual(h.status(), 408)
        self.assertIsNotNone(h.status())

    def test_a_prompt_request_is_untouched(self) -> None:
        """A whole request in one piece is answered, and no deadline is left pending."""
        h = self.http()
        h.channel.dataReceived(HEAD + b"Content-Length: 2\r\n\r\nhi")
        self.assertNotEqual(h.status(), 408)
        self.assertIsNone(h.channel._deadline)

    def test_idle_keep_alive_connection_is_closed(self) -> None:
        """A kept-alive connection that sends nothing after its answer is closed after the
        idle timeout (10 s, the listener's connectTimeout): an idle socket cannot hold a connection place for ever."""
        h = self.http()
        h.channel.dataReceived(HEAD + b"Content-Length: 2\r\n\r\nhi")
        self.assertIsNotNone(h.status())
        h.reactor.advance(9.5)
        self.assertFalse(h.closed())
        h.reactor.advance(1.0)
        self.assertTrue(h.closed())
        reactor = MemoryReactorClock()  # connectTimeout=3 (--connect-timeout 3)
        h = _Harness(http.build_site(reactor, FakeBrokerService(reactor),
                                     ListenerSettings("http", "tcp:0", 0, 3.0)), reactor)
        h.channel.dataReceived(HEAD + b"Content-Length: 2\r\n\r\nhi")
        h.reactor.advance(3.5)
        self.assertTrue(h.closed())

    def test_websocket_upgrade_request_has_a_deadline(self) -> None:
        """A ws= listener's upgrade request trickled in is cut off at requestTimeout."""
        reactor = MemoryReactorClock()
        site = websocket.build_site(reactor, FakeBrokerService(reactor),
                                    settings("ws", requestTimeout=3.0))[0]
        h = _Harness(site, reactor)
        h.trickle(b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n", every=1.0)
        self.assertEqual(h.status(), 408)
        self.assertLessEqual(reactor.seconds(), 4.0)


class ListenerKeyTests(TestCase):
    """The deadlines are --request-timeout and --min-body-rate, per listener as keys."""

    def test_keys_and_defaults(self) -> None:
        """Defaults 10 s and 1 KiB/s; requestTimeout= and minBodyRate= override them."""
        s = parse_listener("http=tcp:8081")
        self.assertEqual((s.requestTimeout, s.minBodyRate), (10.0, 1024.0))
        s = parse_listener("http=tcp:8081:requestTimeout=3:minBodyRate=10", "mqtt", None,
                           0, 10.0, None, 5.0, 1.0)
        self.assertEqual((s.requestTimeout, s.minBodyRate), (3.0, 10.0))


class TrickleOverSocketTests(HTTPBrokerTestCase):
    """A real http= listener and a real socket trickling its request head."""

    http_endpoint = "tcp:0:interface=127.0.0.1:requestTimeout=1"

    @inlineCallbacks
    def test_trickled_head_gets_408_and_close(self) -> Any:
        """One byte every 0.2 s: 408 (an answer docs/openapi.json documents) and the
        socket closed after about 1 s."""
        client = yield connectProtocol(
            TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.http_port), RawHTTP())
        self.addCleanup(lambda: client.is_closed or client.transport.abortConnection())
        started = self.reactor.seconds()
        for i in range(len(HEAD)):
            if client.is_closed:
                break
            client.transport.write(HEAD[i:i + 1])
            yield deferLater(self.reactor, 0.2, lambda: None)
        yield client.wait_closed(self.reactor)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 408 "))
        self.assertLess(self.reactor.seconds() - started, 3.0)
        status, headers, body = _parse_http(client.received)
        check_answer(self, "POST", "http://127.0.0.1/publish", status, headers, body)
