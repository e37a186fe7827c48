"""A Redis outage in the broker's log: one line when it starts, one when it ends.

Outside testing found a 26 s outage logged as 30 reconnection attempts and 36
failed store writes.  These tests pin down what an operator reads instead
(docs/stores.md, "While Redis is unreachable"): the store logs the outage once and
its end once (with its length and the calls that failed), and no failed call,
refused CONNECT or reconnection attempt gets a line of its own, while clients are
answered as before.  From the bottom up: the OutageLog on a fake clock, the broker's
answers on a sans-IO store, the Redis store on a real redis-server, and
``twistd -n mqttbroker`` in a child process (tests/test_store_restart.py).
"""

from __future__ import annotations

import re
import signal
from typing import Any

from twisted.internet.defer import fail, gatherResults, inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.logger import Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from mqtt_twisted.codec import ConnAck, Disconnect, PubAck, Publish
from mqtt_twisted.core.session import Outbound
from mqtt_twisted.errors import StorageError, StoreUnavailable
from mqtt_twisted.message import Message
from mqtt_twisted.store.memory import MemoryStore, StoredSession
from mqtt_twisted.store.outage import OutageLog
from mqtt_twisted.store.redis import RedisStore
from mqtt_twisted.testing import FakeClient, make_broker

try:
    from tests.redisserver import RedisServer, temp_dir
    from tests.test_store_restart import WAIT, RestartTestCase
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from redisserver import RedisServer, temp_dir  # type: ignore[no-redef]
    from test_store_restart import WAIT, RestartTestCase  # type: ignore[no-redef]

OUTAGE_LINE = re.compile(r"Z warn  \[store\.redis\] Redis at \S+ "
                         r"unreachable \(connection lost\)")
RECOVERY_LINE = re.compile(r"Z info  \[store\.redis\] Redis at \S+ "
                           r"reachable again after (\d+\.\d)s; (\d+) store writes and "
                           r"(\d+) reads failed meanwhile")


class Events(list):
    """The log events emitted while it is installed (a global observer)."""

    def __enter__(self) -> Events:
        globalLogPublisher.addObserver(self.append)
        return self

    def __exit__(self, *exc: Any) -> None:
        globalLogPublisher.removeObserver(self.append)

    def texts(self, namespace: str = "") -> list[str]:
        """The lines written at the default level (info): debug events left out."""
        return [formatEvent(e) for e in self if e.get("log_namespace", "").startswith(namespace)
                and e.get("log_level", LogLevel.info) >= LogLevel.info]


class OutageLogTests(unittest.SynchronousTestCase):
    """The tracker: one line per outage and one per recovery, however many connections."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict] = []
        self.outage = OutageLog(self.clock, Logger(observer=self.events.append), "Redis at h:1")

    def test_one_line_each_way(self) -> None:
        """Two connections down then up: one warning, one info line with duration and counts."""
        outage = self.outage
        outage.down(0, "connection lost")
        self.clock.advance(1)
        outage.down(1, "connection lost")
        outage.down(0, "connection lost")
        self.assertEqual(len(self.events), 1)
        self.assertIsInstance(outage.error("x"), StoreUnavailable)
        self.assertIsInstance(outage.error("x", write=False), StoreUnavailable)
        outage.error("x")
        self.clock.advance(2.26)
        outage.up(0)
        self.assertEqual(len(self.events), 1)  # connection 1 is still down
        outage.up(1)
        self.assertEqual(len(self.events), 2)
        event = self.events[1]
        self.assertEqual((event["seconds"], event["writes"], event["reads"]), (3.3, 2, 1))
        self.assertIn("unreachable (connection lost)", _text(self.events[0]))
        self.assertEqual(_text(event), "Redis at h:1 reachable again after 3.3s; 2 store "
                                       "writes and 1 reads failed meanwhile")

    def test_errors_outside_an_outage(self) -> None:
        """Without an outage a failure is a plain StorageError (the broker logs it), uncounted."""
        error = self.outage.error("no")
        self.assertIs(type(error), StorageError)
        self.outage.up(0)  # a first connection coming up is no recovery
        self.assertEqual(self.events, [])

    def test_next_outage_counts_afresh(self) -> None:
        """A second outage starts its own count."""
        self.outage.down(0, "connection lost")
        self.outage.error("x")
        self.outage.up(0)
        self.outage.down(0, "no reply in 5s")
        self.outage.up(0)
        self.assertEqual(len(self.events), 4)
        self.assertIn("(no reply in 5s)", _text(self.events[2]))
        self.assertEqual(self.events[3]["writes"], 0)


def _text(event: dict) -> str:
    return formatEvent(event)


class _DownStore(MemoryStore):
    """A store whose backend is away: locks and message writes fail with ``error``."""

    persistsMessages = True

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error
        self.down = False

    def storeOutbound(self, clientId: str, outbound: Any) -> Any:
        return fail(self.error) if self.down else super().storeOutbound(clientId, outbound)

    def acquireLock(self, clientId: str, timeout: float) -> Any:
        return fail(self.error) if self.down else super().acquireLock(clientId, timeout)


class BrokerAnswersTests(unittest.SynchronousTestCase):
    """The broker answers a failed store the same either way; it logs only what the store
    has not logged already."""

    def run_outage(self, error: Exception) -> tuple[list[Any], list[Any], Any, list[str]]:
        """A v5 publisher's QoS 1 message for an offline persistent session, then a CONNECT,
        while the store fails with ``error``: what each got, and what was logged."""
        store = _DownStore(error)
        broker, _ = make_broker(store=store)
        sub = FakeClient(broker)
        sub.connect("sub", clean=False)
        sub.subscribe("t", qos=1)
        sub.drop()
        pub = FakeClient(broker, 5)
        pub.connect("pub")
        store.down = True
        with Events() as events:
            published = pub.publish("t", b"x", qos=1)
            connected = FakeClient(broker, 5).connect("late")
        return published, connected, broker, events.texts("mqtt_twisted")

    def test_outage_answered_not_logged(self) -> None:
        """StoreUnavailable: no PUBACK, DISCONNECT 0x89, CONNACK 0x88, counted, nothing logged."""
        published, connected, broker, lines = self.run_outage(StoreUnavailable("down"))
        self.assertFalse([p for p in published if isinstance(p, PubAck)])
        self.assertIsInstance(published[-1], Disconnect)
        self.assertEqual(published[-1].reason_code, 0x89)
        self.assertEqual([p.reason_code for p in connected if isinstance(p, ConnAck)], [0x88])
        self.assertEqual(broker.stats.store_errors, 1)
        self.assertEqual(lines, [])

    def test_other_store_errors_still_logged(self) -> None:
        """A plain StorageError gets the same answers and is logged, as before."""
        published, connected, broker, lines = self.run_outage(StorageError("disk full"))
        self.assertEqual(published[-1].reason_code, 0x89)
        self.assertEqual([p.reason_code for p in connected if isinstance(p, ConnAck)], [0x88])
        self.assertEqual(broker.stats.store_errors, 1)
        self.assertEqual(len([t for t in lines if "Store write failed: disk full" in t]), 1)
        self.assertEqual(len([t for t in lines if "Store failed before PubAck" in t]), 1)
        self.assertEqual(len([t for t in lines if "Refused CONNECT of late" in t]), 1)

    def test_store_failed_counts_outage_failures(self) -> None:
        """Broker.store_failed counts a StoreUnavailable but does not log it."""
        broker, _ = make_broker()
        with Events() as events:
            broker.store_failed(Failure(StoreUnavailable("down")))
        self.assertEqual((broker.stats.store_errors, events.texts("mqtt_twisted")), (1, []))


class RedisStoreOutageTests(unittest.TestCase):
    """The Redis store on a real redis-server that is stopped, or stops answering."""

    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:
        from twisted.internet import reactor

        self.reactor = reactor
        self.server = RedisServer(reactor, temp_dir(self))
        yield self.server.start()
        self.addCleanup(self.server.stop)
        self.events = Events()
        self.events.__enter__()
        self.addCleanup(self.events.__exit__)

    @inlineCallbacks
    def store(self, **query: Any) -> Any:
        store = RedisStore.fromURL(self.reactor, self.server.url(**query))
        yield store.start()
        self.addCleanup(store.stop)
        return store

    @inlineCallbacks
    def until_back(self, store: Any) -> Any:
        """Wait for the store's recovery line."""
        waited = 0.0
        while store.outage.active:
            self.assertLess(waited, 20, "no recovery")
            yield deferLater(self.reactor, 0.05, lambda: None)
            waited += 0.05

    def lines(self) -> list[str]:
        """What was logged after the store started, but for the test's own PINGs to Redis."""
        return [t for t in self.events.texts() if "Redis store connected" not in t
                and "OneShotFactory" not in t]

    @inlineCallbacks
    def test_redis_stopped(self) -> Any:
        """Redis stopped: calls fail with StoreUnavailable; two lines in all, no retry lines."""
        store = yield self.store(timeout=0.3)
        yield store.saveSession(StoredSession("c1"))
        yield self.server.stop()
        for _ in range(3):  # about three seconds of backoff and failing calls
            results = yield _settled([store.storeOutbound("c1", _outbound()),
                                      store.countRetained(), store.acquireLock("c2", 5)])
            self.assertTrue(all(isinstance(r, StoreUnavailable) for r in results), results)
            yield deferLater(self.reactor, 0.7, lambda: None)
        yield self.server.restart()
        yield self.until_back(store)
        lines = self.lines()
        self.assertEqual(len(lines), 2, lines)
        self.assertRegex(lines[0], r"Redis at 127\.0\.0\.1:\d+ unreachable \(connection lost\)")
        self.assertRegex(lines[1], r"reachable again after \d+\.\ds; 6 store writes and 3 "
                                   r"reads failed meanwhile")
        self.assertEqual((yield store.loadSession("c1")).clientId, "c1")

    @inlineCallbacks
    def test_redis_stuck(self) -> Any:
        """A Redis that stops answering (SIGSTOP) is an outage too: one line, then one when back."""
        store = yield self.store(timeout=0.3, pool=1)
        self.server.signal(signal.SIGSTOP)
        results = yield _settled([store.listSessions(), store.storeOutbound("c1", _outbound())])
        self.assertTrue(all(isinstance(r, StoreUnavailable) for r in results), results)
        self.assertIn("no reply", str(results[0]))
        self.server.signal(signal.SIGCONT)
        yield self.until_back(store)
        lines = self.lines()
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("unreachable (no reply in 0.3s)", lines[0])
        self.assertIn("1 store writes and 1 reads failed meanwhile", lines[1])

    @inlineCallbacks
    def test_redis_loading_after_restart(self) -> Any:
        """Redis back but still loading its data (-LOADING to every command, a CI run's
        restart): the outage goes on, quietly, until it serves; two lines in all (before:
        a warning for each of the store's 19 scripts, and the outage over too early)."""
        store = yield self.store(timeout=1)
        yield self.server.command("EVAL", "for i = 1, 1000000 do "
                                  "redis.call('SET', 'k' .. i, 'v') end", 0)
        yield self.server.stop()  # (TERM: the append-only file is whole)
        self.assertTrue(store.outage.active)
        restarted = self.server.restart()  # fires once it answers PONG, loaded
        while not restarted.called:  # the store reconnects while Redis loads
            self.assertTrue(store.outage.active, self.lines())
            yield deferLater(self.reactor, 0.02, lambda: None)
        yield restarted
        yield self.until_back(store)
        lines = self.lines()
        self.assertEqual(len(lines), 2, lines)
        self.assertRegex(lines[1], r"reachable again after \d+\.\ds")
        self.assertEqual((yield store.countRetained()), 0)


def _outbound() -> Any:
    return Outbound(Message("a", b"x", 1), 1, False, None, None, 0, None, 1)


def _settled(calls: list[Any]) -> Any:
    """Fires with each call's result or error, once all are settled."""
    return gatherResults([d.addErrback(lambda f: f.value) for d in calls])


class BrokerProcessOutageTests(RestartTestCase):
    """``twistd -n mqttbroker`` with fast $SYS updates, a persistent subscriber and a
    publisher, while Redis is stopped for four seconds."""

    store_query = "?timeout=1"
    broker_options = ("--sys-interval", "0.2")

    @inlineCallbacks
    def test_outage_logged_once(self) -> Any:
        """Redis down 4 s: one outage line, one recovery line (duration, failed calls), nothing else."""
        durable = yield self.connected("durable-sub", clean=False)
        yield durable.subscribe("dur/#", 1)
        publisher = yield self.connected("publisher", version=5)
        yield deferLater(self.reactor, 0.5, lambda: None)
        before = len(self.broker.output())

        yield self.redis.stop()
        stopped = self.reactor.seconds()
        # A write the publisher caused: no PUBACK, the publisher is told "server busy".
        publisher.send(Publish("dur/1", b"needs storage", 1, False, False, 1))
        yield publisher.wait_closed()
        self.assertEqual(publisher.disconnect_reason, 0x89)
        self.assertEqual(publisher.acks.pending, [])
        # A client that keeps trying to connect is refused every time.
        for _ in range(2):
            client = self.client(5)
            connack = yield client.connect(self.broker.port, "publisher")
            self.assertEqual(connack.reason_code, 0x88)
            yield client.wait_closed()
        remaining = 4.0 - (self.reactor.seconds() - stopped)
        if remaining > 0:
            yield deferLater(self.reactor, remaining, lambda: None)
        yield self.redis.restart()
        yield self.until(lambda: RECOVERY_LINE.search(self.broker.output()),
                         "the recovery line", timeout=WAIT)

        log = self.broker.output()[before:]
        lines = [line for line in log.splitlines() if line.strip()]
        self.assertEqual(len(lines), 2, log)
        self.assertRegex(lines[0], OUTAGE_LINE)
        recovered = RECOVERY_LINE.search(lines[1])
        self.assertIsNotNone(recovered, log)
        seconds, writes, reads = recovered.groups()  # type: ignore[union-attr]
        self.assertGreaterEqual(float(seconds), 3.5, log)
        self.assertGreaterEqual(int(writes), 3, log)  # the PUBLISH, two CONNECTs' locks
        self.assertGreaterEqual(int(reads), 1, log)  # $SYS's count of retained messages

        # Back: the message is stored and acknowledged, and the subscriber gets it.
        retry = yield self.connected("publisher", version=5)
        ack = yield retry.publish("dur/1", b"needs storage", 1, 1)
        self.assertEqual(ack.reason_code, 0)
        yield self.until(lambda: durable.payloads()[b"needs storage"], "the message")
        self.assertEqual((yield self.redis.command("KEYS", "*SYS*")), [])
