"""Nothing acknowledged is lost: a real broker process on the Redis store, killed and restarted.

Each test starts a redis-server (tests/redisserver.py) and runs the broker as
``twistd -n mqttbroker --store redis://...`` in a child process, which it kills
with SIGKILL and starts again on the same Redis.  The clients are small raw MQTT
clients on our codec, so that a test decides every acknowledgement: a subscriber
can hold messages in flight, and the QoS 2 receiver keeps the packet ids it has
not released, as [MQTT-4.3.3] asks of a real one.  Redis itself is stopped and
started again in the middle of a test to pin down what the broker does meanwhile
(docs/stores.md, "While Redis is unreachable").
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from typing import Any

from twisted.internet.defer import Deferred, DeferredQueue, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial import unittest

from mqtt_twisted.codec import (
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    StreamDecoder,
    SubAck,
    Subscribe,
    Subscription,
    encode,
)
from mqtt_twisted.constants import PropertyId

try:
    from tests.redisserver import RedisServer, _Output, free_port, temp_dir
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from redisserver import RedisServer, _Output, free_port, temp_dir  # type: ignore[no-redef]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Seconds a single wait may take.
WAIT = 15.0
_P = PropertyId


class BrokerProcess:
    """``twistd -n mqttbroker`` in a child process, on a fresh port each time it starts."""

    def __init__(self, reactor: Any, store_url: str, directory: str, *options: str) -> None:
        self.reactor = reactor
        self.store_url = store_url
        self.directory = directory
        self.options = list(options)
        self.port = 0
        self.process: _Output | None = None
        self.transport: Any = None
        self.logs: list[bytes] = []

    @inlineCallbacks
    def start(self) -> Any:
        """Start it and wait until it accepts connections (the store is open by then)."""
        self.port = free_port()
        if self.process is not None:
            self.logs.append(bytes(self.process.output))
        args = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "mqttbroker",
                "--listen", f"tcp:{self.port}:interface=127.0.0.1",
                "--store", self.store_url, "--sys-interval", "0", *self.options]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
        self.process = _Output()
        self.transport = self.reactor.spawnProcess(self.process, sys.executable, args, env=env,
                                                   path=self.directory)
        waited = 0.0
        while True:
            if self.process.exited:
                raise RuntimeError("the broker exited:\n" + self.output())
            try:
                probe = yield connectProtocol(
                    TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port), Protocol())
                probe.transport.abortConnection()
                return self
            except Exception:
                pass
            if waited > 30:
                raise RuntimeError("the broker did not listen in time:\n" + self.output())
            yield deferLater(self.reactor, 0.05, lambda: None)
            waited += 0.05

    def output(self) -> str:
        data = b"".join(self.logs) + (bytes(self.process.output) if self.process else b"")
        return data.decode("utf-8", "replace")

    def kill(self, signal: str = "KILL") -> Deferred[None]:
        """SIGKILL (no shutdown of any kind) and wait for it to be gone."""
        process = self.process
        if process is None or process.exited:
            d: Deferred[None] = Deferred()
            d.callback(None)
            return d
        ended = process.ended()
        self.transport.signalProcess(signal)
        return ended


class Client(Protocol):
    """A raw MQTT client that acknowledges as told, counting what it delivers.

    As a QoS 2 receiver it keeps the ids of the PUBLISHes it has taken and not yet
    seen released (PUBREL), and treats a PUBLISH with such an id as a resend, not a
    new message (MQTT 5 §4.3.3).  This state outlives its connections, as it would
    in a client that keeps its session.
    """

    def __init__(self, reactor: Any, version: int = 4) -> None:
        self.reactor = reactor
        self.version = version
        self.auto_ack = True
        self.unreleased: set[int] = set()
        self.delivered: list[Publish] = []
        self.publishes: list[Publish] = []  # every PUBLISH received, resends too
        self.pubrels: list[int] = []
        self.acks: DeferredQueue[Packet] = DeferredQueue()
        self._reset()

    def _reset(self) -> None:
        self.decoder = StreamDecoder(self.version)
        self.closed = False
        self.disconnect_reason: int | None = None
        self._closed_waiters: list[Deferred[None]] = []

    # --- the connection ---

    @inlineCallbacks
    def connect(self, port: int, client_id: str, clean: bool = True,
                properties: dict | None = None) -> Any:
        """Open a connection (again) and CONNECT; fires with the CONNACK."""
        self._reset()
        yield connectProtocol(TCP4ClientEndpoint(self.reactor, "127.0.0.1", port), self)
        self.send(Connect(client_id, self.version, clean, 0, None, None, None,
                          properties or {}))
        connack = yield self.expect(ConnAck)
        return connack

    def dataReceived(self, data: bytes) -> None:
        for packet in self.decoder.feed(data):
            if isinstance(packet, Publish):
                self._on_publish(packet)
            elif isinstance(packet, PubRel):
                self.pubrels.append(packet.packet_id)
                if self.auto_ack:
                    self.release(packet.packet_id)
            elif isinstance(packet, Disconnect):
                self.disconnect_reason = packet.reason_code
            else:
                self.acks.put(packet)

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True
        waiters, self._closed_waiters = self._closed_waiters, []
        for d in waiters:
            d.callback(None)

    def send(self, packet: Packet) -> None:
        self.transport.write(encode(packet, self.version))

    def drop(self) -> Deferred[None]:
        """Close the socket (no DISCONNECT)."""
        d = self.wait_closed()
        self.transport.abortConnection()
        return d

    def wait_closed(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.closed:
            d.callback(None)
        else:
            self._closed_waiters.append(d)
        return d.addTimeout(WAIT, self.reactor)

    @inlineCallbacks
    def expect(self, packet_type: type) -> Any:
        packet = yield self.acks.get().addTimeout(WAIT, self.reactor)
        if not isinstance(packet, packet_type):
            raise AssertionError(f"expected {packet_type.__name__}, got {packet!r}")
        return packet

    # --- messages ---

    def _on_publish(self, packet: Publish) -> None:
        self.publishes.append(packet)
        if packet.qos == 2:
            if packet.packet_id not in self.unreleased:  # else: a resend, not a new message
                self.unreleased.add(packet.packet_id)  # type: ignore[arg-type]
                self.delivered.append(packet)
            if self.auto_ack:
                self.send(PubRec(packet.packet_id))  # type: ignore[arg-type]
        else:
            self.delivered.append(packet)
            if packet.qos == 1 and self.auto_ack:
                self.send(PubAck(packet.packet_id))  # type: ignore[arg-type]

    def release(self, packet_id: int) -> None:
        """PUBREL received: forget the id, complete the flow."""
        self.unreleased.discard(packet_id)
        self.send(PubComp(packet_id))

    def payloads(self) -> Counter[bytes]:
        return Counter(p.payload for p in self.delivered)

    @inlineCallbacks
    def subscribe(self, topic_filter: str, qos: int) -> Any:
        self.send(Subscribe(1, [Subscription(topic_filter, qos)]))
        suback = yield self.expect(SubAck)
        return suback

    @inlineCallbacks
    def publish(self, topic: str, payload: bytes, qos: int, packet_id: int,
                retain: bool = False, properties: dict | None = None) -> Any:
        """PUBLISH and wait for the acknowledgement (QoS 2: the whole flow)."""
        self.send(Publish(topic, payload, qos, retain, False, packet_id if qos else None,
                          properties or {}))
        if qos == 1:
            ack = yield self.expect(PubAck)
            return ack
        if qos == 2:
            ack = yield self.expect(PubRec)
            self.send(PubRel(packet_id))
            yield self.expect(PubComp)
            return ack
        return None


class RestartTestCase(unittest.TestCase):
    """A redis-server and a broker process on it for each test."""

    timeout = 180
    broker_options: tuple[str, ...] = ()
    store_query = ""

    @inlineCallbacks
    def setUp(self) -> Any:
        from twisted.internet import reactor

        self.reactor = reactor
        url = yield self.start_store()
        self.broker = BrokerProcess(reactor, url + self.store_query,
                                    temp_dir(self), *self.broker_options)
        self.addCleanup(self.broker.kill)
        yield self.broker.start()
        self.clients: list[Client] = []
        self.addCleanup(self._drop_clients)

    @inlineCallbacks
    def start_store(self) -> Any:
        """Start the store's server (a redis-server here); fires with the --store URL."""
        self.redis = RedisServer(self.reactor, temp_dir(self))
        yield self.redis.start()
        self.addCleanup(self.redis.stop)
        return self.redis.url()

    def _drop_clients(self) -> None:
        for client in self.clients:
            if client.transport is not None and not client.closed:
                client.transport.abortConnection()

    def client(self, version: int = 4) -> Client:
        client = Client(self.reactor, version)
        self.clients.append(client)
        return client

    @inlineCallbacks
    def connected(self, client_id: str, version: int = 4, clean: bool = True,
                  properties: dict | None = None) -> Any:
        client = self.client(version)
        connack = yield client.connect(self.broker.port, client_id, clean, properties)
        self.assertEqual(connack.reason_code, 0, self.broker.output())
        return client

    @inlineCallbacks
    def kill_and_restart(self) -> Any:
        """kill -9 the broker, then start a new one on the same Redis."""
        yield self.broker.kill()
        for client in self.clients:
            if not client.closed:
                yield client.wait_closed()
        yield self.broker.start()

    @inlineCallbacks
    def until(self, condition: Any, what: str, timeout: float = WAIT) -> Any:
        """Wait (polling the reactor) until ``condition()`` holds."""
        waited = 0.0
        while not condition():
            if waited > timeout:
                raise AssertionError(f"timed out waiting for {what}\n{self.broker.output()}")
            yield deferLater(self.reactor, 0.02, lambda: None)
            waited += 0.02


def _expected(n: int) -> list[tuple[bytes, int]]:
    """n messages, QoS 1 and 2 alternating: (payload, qos)."""
    return [(b"m%02d" % i, 1 + i % 2) for i in range(n)]


class KillTests(RestartTestCase):
    """kill -9 with messages queued and in flight; restart; reconnect."""

    broker_options = ("--max-inflight", "4")

    @inlineCallbacks
    def publish_all(self, messages: list[tuple[bytes, int]]) -> Any:
        """Publish each message and wait for its acknowledgement: from then on it is stored."""
        publisher = yield self.connected("publisher", version=5)
        for pid, (payload, qos) in enumerate(messages, 1):
            ack = yield publisher.publish("q/x", payload, qos, pid)
            self.assertLess(ack.reason_code, 0x80)
        return publisher

    @inlineCallbacks
    def test_offline_queue_survives_kill(self) -> Any:
        """Messages queued for an offline persistent session survive kill -9: all arrive, QoS 2 once."""
        sub = yield self.connected("offline-sub", clean=False)
        yield sub.subscribe("q/#", 2)
        sub.send(Disconnect())
        yield sub.wait_closed()
        messages = _expected(10)
        yield self.publish_all(messages)

        yield self.kill_and_restart()

        connack = yield sub.connect(self.broker.port, "offline-sub", clean=False)
        self.assertEqual((connack.reason_code, connack.session_present), (0, True))
        yield self.until(lambda: len(sub.delivered) >= len(messages), "the queued messages")
        yield self.until(lambda: not sub.unreleased, "the QoS 2 flows to complete")
        counts = sub.payloads()
        self.assertEqual(set(counts), {p for p, _ in messages})
        for payload, qos in messages:
            if qos == 2:
                self.assertEqual(counts[payload], 1, payload)  # exactly once
        self.assertEqual([p.payload for p in sub.delivered[:len(messages)]],
                         [p for p, _ in messages])  # in order
        # The subscription itself survived too: a new message arrives without SUBSCRIBE.
        publisher = yield self.connected("publisher2")
        yield publisher.publish("q/new", b"after", 1, 1)
        yield self.until(lambda: b"after" in sub.payloads(), "a message after the restart")

    @inlineCallbacks
    def test_inflight_messages_survive_kill(self) -> Any:
        """In-flight messages survive kill -9: resent with DUP and same ids, PUBREL resent, QoS 2 once."""
        sub = yield self.connected("inflight-sub", clean=False)
        sub.auto_ack = False
        yield sub.subscribe("q/#", 2)
        messages = _expected(10)
        yield self.publish_all(messages)
        yield self.until(lambda: len(sub.publishes) >= 4, "the in-flight window")
        first = {p.packet_id: p for p in sub.publishes}
        self.assertEqual(len(first), 4)  # --max-inflight 4: the rest is queued
        qos2 = [p for p in sub.publishes if p.qos == 2]
        # PUBREC one QoS 2 message: the broker stores AWAITING_PUBCOMP, then sends PUBREL.
        sub.send(PubRec(qos2[0].packet_id))  # type: ignore[arg-type]
        yield self.until(lambda: sub.pubrels, "PUBREL")
        self.assertEqual(sub.pubrels, [qos2[0].packet_id])

        yield self.kill_and_restart()

        sub.auto_ack = True
        sub.publishes.clear()
        sub.pubrels.clear()
        connack = yield sub.connect(self.broker.port, "inflight-sub", clean=False)
        self.assertEqual((connack.reason_code, connack.session_present), (0, True))
        yield self.until(lambda: len(sub.payloads()) >= len(messages), "every message")
        yield self.until(lambda: not sub.unreleased, "the QoS 2 flows to complete")
        self.assertEqual(sub.pubrels[0], qos2[0].packet_id)  # its PUBREL again, no PUBLISH
        resent = [p for p in sub.publishes if p.packet_id in first and p.dup]
        self.assertEqual(sorted(p.packet_id for p in resent),
                         sorted(pid for pid in first if pid != qos2[0].packet_id))
        for packet in resent:
            self.assertEqual(packet.payload, first[packet.packet_id].payload)
        counts = sub.payloads()
        self.assertEqual(set(counts), {p for p, _ in messages})
        for payload, qos in messages:
            if qos == 2:
                self.assertEqual(counts[payload], 1, payload)

    @inlineCallbacks
    def test_retained_messages_survive_kill(self) -> Any:
        """Retained messages and their v5 properties survive kill -9; a cleared one stays cleared."""
        publisher = yield self.connected("retainer", version=5)
        props = {_P.CONTENT_TYPE: "application/json", _P.USER_PROPERTY: [("a", "1"), ("b", "2")],
                 _P.CORRELATION_DATA: b"\x00\x01", _P.PAYLOAD_FORMAT_INDICATOR: 1,
                 _P.RESPONSE_TOPIC: "reply/here"}
        yield publisher.publish("r/a", b'{"v": 1}', 1, 1, True, props)
        yield publisher.publish("r/b/c", b"two", 2, 2, True)
        yield publisher.publish("r/gone", b"soon gone", 1, 3, True)
        yield publisher.publish("r/gone", b"", 1, 4, True)
        yield publisher.publish("other", b"not matched", 1, 5, True)

        yield self.kill_and_restart()

        sub = yield self.connected("reader", version=5)
        yield sub.subscribe("r/#", 2)
        yield self.until(lambda: len(sub.delivered) >= 2, "the retained messages")
        yield deferLater(self.reactor, 0.2, lambda: None)  # nothing else follows
        got = {p.topic: p for p in sub.delivered}
        self.assertEqual(sorted(got), ["r/a", "r/b/c"])
        self.assertTrue(all(p.retain for p in got.values()))
        self.assertEqual((got["r/a"].payload, got["r/a"].qos), (b'{"v": 1}', 1))
        self.assertEqual(got["r/a"].properties, props)
        self.assertEqual((got["r/b/c"].payload, got["r/b/c"].qos), (b"two", 2))


class RedisOutageTests(RestartTestCase):
    """Redis stopped and started again under a running broker."""

    store_query = "?timeout=1"

    @inlineCallbacks
    def test_redis_down_and_back(self) -> Any:
        """Redis down: QoS 0 flows, stored QoS 1 gets 0x89, CONNECT 0x88/0x03; back: QoS 1 served."""
        listener = yield self.connected("live-listener")
        yield listener.subscribe("live/#", 0)
        talker = yield self.connected("live-talker", version=5)
        durable = yield self.connected("durable-sub", clean=False)
        yield durable.subscribe("dur/#", 1)
        durable.send(Disconnect())
        yield durable.wait_closed()
        publisher = yield self.connected("publisher", version=5)

        yield self.redis.stop()

        talker.send(Publish("live/1", b"still flowing", 0))
        yield self.until(lambda: listener.payloads()[b"still flowing"], "QoS 0 during outage")
        publisher.send(Publish("dur/1", b"needs storage", 1, False, False, 1))
        yield publisher.wait_closed()
        self.assertEqual(publisher.disconnect_reason, 0x89)  # server busy
        self.assertEqual(publisher.acks.pending, [])  # no PUBACK
        for version, refused in ((5, 0x88), (4, 0x03)):
            client = self.client(version)
            connack = yield client.connect(self.broker.port, f"new-v{version}")
            self.assertEqual(connack.reason_code, refused)
            yield client.wait_closed()
        talker.send(Publish("live/2", b"still flowing 2", 0))
        yield self.until(lambda: listener.payloads()[b"still flowing 2"], "QoS 0 after refusals")

        yield self.redis.restart()

        retry = None
        waited = 0.0
        while retry is None:
            candidate = self.client(5)
            connack = yield candidate.connect(self.broker.port, "publisher")
            if connack.reason_code == 0:
                retry = candidate
            else:
                self.assertEqual(connack.reason_code, 0x88)
                yield candidate.wait_closed()
                self.assertLess(waited, 30, "the broker did not recover")
                yield deferLater(self.reactor, 0.2, lambda: None)
                waited += 0.2
        ack = yield retry.publish("dur/2", b"stored again", 1, 1)
        self.assertEqual(ack.reason_code, 0)
        connack = yield durable.connect(self.broker.port, "durable-sub", clean=False)
        self.assertEqual((connack.reason_code, connack.session_present), (0, True))
        yield self.until(lambda: durable.payloads()[b"stored again"], "QoS 1 after recovery")
        self.assertTrue(listener.payloads()[b"still flowing"])
