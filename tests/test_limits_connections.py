"""Connection rate per source address (--max-connection-rate, listener key
maxConnectionRate=; loopback exempt) and the default connection limit per listener
(docs/limits.md)."""

from __future__ import annotations

import socket

from twisted.internet import reactor as global_reactor
from twisted.internet import threads
from twisted.internet.address import IPv4Address
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mqtt_twisted.adapters.kit import ConnectionLimit, ConnectionRate
from mqtt_twisted.adapters.listener import ListenerSettings
from mqtt_twisted.adapters.mqtt import MQTTStreamFactory
from mqtt_twisted.adapters.websocket import WebSocketAdapter
from mqtt_twisted.codec import Connect, encode
from mqtt_twisted.service import BrokerService
from mqtt_twisted.store.memory import MemoryStore


def _other_address() -> str | None:
    """A non-loopback address of this host that it can connect to itself (or None)."""
    try:  # the source address of a route out (a UDP connect sends nothing)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("198.51.100.1", 9))
            host = s.getsockname()[0]
        with socket.socket() as s:
            s.bind((host, 0))
    except OSError:
        return None
    return None if host.startswith("127.") else host


class ConnectionRateTests(SynchronousTestCase):
    def test_a_second_worth_then_the_rate(self) -> None:
        clock = Clock()
        rate = ConnectionRate(3, clock)
        self.assertEqual([rate.allows("10.0.0.1") for _ in range(4)], [True] * 3 + [False])
        self.assertTrue(rate.allows("10.0.0.2"))  # per source address
        clock.advance(1 / 3 + 0.01)
        self.assertEqual([rate.allows("10.0.0.1"), rate.allows("10.0.0.1")], [True, False])

    def test_loopback_is_exempt(self) -> None:
        rate = ConnectionRate(1, Clock())
        for host in ("127.0.0.1", "127.0.0.9", "::1"):
            self.assertTrue(all(rate.allows(host) for _ in range(100)))
        self.assertEqual(rate.buckets, {})

    def test_memory_stays_bounded_under_many_sources(self) -> None:
        clock = Clock()
        rate = ConnectionRate(5, clock)
        for i in range(3 * ConnectionRate.MAX_TRACKED):
            rate.allows(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
        self.assertLessEqual(len(rate.buckets), ConnectionRate.MAX_TRACKED)

    def test_limit_refuses_over_rate_and_counts(self) -> None:
        clock = Clock()
        service = BrokerService(clock, MemoryStore(clock))
        listener = ListenerSettings("mqtt", "tcp:0", 0, 10.0, maxConnectionRate=2)
        limit = ConnectionLimit(service, listener)
        peer = IPv4Address("TCP", "10.0.0.9", 4242)
        self.assertEqual([limit.admit(peer) for _ in range(3)], [True, True, False])
        self.assertEqual(limit.admit("10.0.0.9:5555"), False)  # the text form too
        self.assertEqual((limit.active, limit.refused, service.stats.connections_refused),
                         (2, 2, 2))

    def test_an_accepted_address_is_admitted_as_its_text(self) -> None:
        """``admit_address`` (the lean accept's one call) answers as ``admit``: the
        rate for another host, loopback exempt, and the listener's limit for all."""
        clock = Clock()
        service = BrokerService(clock, MemoryStore(clock))
        listener = ListenerSettings("mqtt", "tcp:0", 4, 10.0, maxConnectionRate=2)
        limit = ConnectionLimit(service, listener)
        self.assertEqual([limit.admit_address("10.0.0.9", 4242) for _ in range(3)],
                         [True, True, False])
        self.assertEqual([limit.admit_address("127.0.0.1", p) for p in range(3)],
                         [True, True, False])  # (no rate; the limit of 4 reached)
        self.assertEqual((limit.active, limit.refused, limit.rate_refused), (4, 2, 1))
        unlimited = ConnectionLimit(service, ListenerSettings("mqtt", "tcp:0", 0, 10.0))
        self.assertTrue(all(unlimited.admit_address("10.0.0.9", p) for p in range(10)))
        self.assertEqual(unlimited.active, 10)

    def test_off_without_the_key(self) -> None:
        limit = ConnectionLimit(None, ListenerSettings("mqtt", "tcp:0", 0, 10.0))
        self.assertIsNone(limit.rate)


class RealSocketTests(TestCase):
    """A listener on a non-loopback address of this host, 3 connections a second: of 8
    sockets opened at once, 3 get their CONNACK, the others are closed unanswered."""

    @inlineCallbacks
    def test_sockets_past_the_rate_are_closed(self):
        host = _other_address()
        if host is None:
            self.skipTest("no non-loopback address on this host")
        service = BrokerService(global_reactor, MemoryStore(global_reactor))
        yield service.store.start()
        service.running = True
        listener = ListenerSettings("mqtt", f"tcp:0:interface={host}", 0, 10.0,
                                    maxConnectionRate=3)
        factory = MQTTStreamFactory(service.gateway, listener)
        port = yield TCP4ServerEndpoint(global_reactor, 0, interface=host).listen(factory)
        self.addCleanup(service.stopService)
        self.addCleanup(port.stopListening)
        number = port.getHost().port

        def clients() -> list[bytes]:
            answers = []
            socks = [socket.create_connection((host, number), 5) for _ in range(8)]
            for i, s in enumerate(socks):
                try:
                    s.sendall(encode(Connect(f"c{i}", 4)))
                    answers.append(s.recv(4))
                except OSError:
                    answers.append(b"")
                s.close()
            return answers

        answers = yield threads.deferToThread(clients)
        self.assertEqual(sum(a[:1] == b"\x20" for a in answers), 3)
        self.assertEqual(factory.limit.refused, 5)


class WebSocketRateTests(TestCase):
    """ws= listeners take the address's connection rate at TCP accept, as MQTT
    listeners do (it was taken at onOpen, after the whole upgrade request)."""

    def test_site_refuses_at_accept(self) -> None:
        """Past the rate the site builds no channel at all (the socket is closed
        unanswered); the sockets it accepted are not charged again on upgrade."""
        clock = Clock()
        service = BrokerService(clock, MemoryStore(clock))
        listener = ListenerSettings("ws", "tcp:0", 0, 10.0, maxConnectionRate=2)
        site = WebSocketAdapter().buildFactory(clock, service.gateway, listener)
        peer = IPv4Address("TCP", "10.0.0.9", 4242)
        built = [site.buildProtocol(peer) for _ in range(3)]
        self.assertIsNotNone(built[0])
        self.assertIsNotNone(built[1])
        self.assertIsNone(built[2])
        self.assertEqual(service.broker.stats.connection_rate_refusals, 1)
        self.assertTrue(site.ws_factory.limit.admit("10.0.0.9:4242", rate=False))
        self.assertTrue(site.ws_factory.limit.admit("10.0.0.9:4243", rate=False))
        self.assertEqual(service.broker.stats.connection_rate_refusals, 1)

    @inlineCallbacks
    def test_sockets_past_the_rate_are_closed_before_the_upgrade(self):
        """3 a second on a non-loopback address: of 6 sockets opened at once, 3 are
        upgraded and get their CONNACK; 3 are closed before they send anything."""
        host = _other_address()
        if host is None:
            self.skipTest("no non-loopback address on this host")
        service = BrokerService(global_reactor, MemoryStore(global_reactor))
        yield service.store.start()
        service.running = True
        listener = ListenerSettings("ws", f"tcp:0:interface={host}", 0, 10.0,
                                    maxConnectionRate=3)
        site = WebSocketAdapter().buildFactory(global_reactor, service.gateway, listener)
        port = yield TCP4ServerEndpoint(global_reactor, 0, interface=host).listen(site)
        self.addCleanup(service.stopService)
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        upgrade = (b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                   b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n")

        def clients() -> list[bytes]:
            answers = []
            socks = [socket.create_connection((host, number), 5) for _ in range(6)]
            for i, s in enumerate(socks):
                try:
                    s.settimeout(0.5)  # refused at accept: closed before any request
                    try:
                        answers.append(s.recv(1))
                        s.close()
                        continue
                    except TimeoutError:
                        s.settimeout(5)
                    s.sendall(upgrade)
                    head = b""
                    while b"\r\n\r\n" not in head:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        head += chunk
                    if head.startswith(b"HTTP/1.1 101"):
                        connect = encode(Connect(f"w{i}", 4))  # one masked binary frame
                        s.sendall(bytes([0x82, 0x80 | len(connect)]) + bytes(4) + connect)
                        head += s.recv(16)
                    answers.append(head)
                except OSError:
                    answers.append(b"")
                s.close()
            return answers

        answers = yield threads.deferToThread(clients)
        upgraded = [a for a in answers if a.startswith(b"HTTP/1.1 101")]
        self.assertEqual(len(upgraded), 3, answers)
        self.assertTrue(all(a.endswith(b"\x82\x04\x20\x02\x00\x00") for a in upgraded),
                        upgraded)  # CONNACK 0 in a binary frame
        self.assertEqual(answers.count(b""), 3, answers)
        self.assertEqual(service.broker.stats.connection_rate_refusals, 3)
