"""``$SYS`` topics are retained in the broker's memory and never written to the store.

They describe one broker process and change every ``--sys-interval``: in Redis they
cost a dozen writes per interval and, during an outage, most of the failed writes
in the log.  ``SysRetainedOverlay`` (mqtt_twisted/store/overlay.py) keeps them in
the broker; subscribers still get them as retained messages.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from mqtt_twisted.core.systopics import SysTopics
from mqtt_twisted.interfaces import IStore
from mqtt_twisted.message import Message
from mqtt_twisted.service import BrokerService
from mqtt_twisted.store.memory import MemoryStore
from mqtt_twisted.store.overlay import SysRetainedOverlay, is_sys, purge_sys_retained
from mqtt_twisted.testing.store_contract import StoreContract

try:
    from tests.test_store_restart import RestartTestCase
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from test_store_restart import RestartTestCase  # type: ignore[no-redef]


def _result(d: Any) -> Any:
    """The result of an already-fired Deferred (memory store calls)."""
    results: list[Any] = []
    d.addBoth(results.append)
    return results[0]


def _topics(messages: list[Message]) -> list[str]:
    return sorted(m.topic for m in messages)


class OverlayTests(unittest.SynchronousTestCase):
    """The overlay answers $SYS retained calls itself and passes everything else on."""

    def setUp(self) -> None:
        self.store = MemoryStore()
        self.overlay = SysRetainedOverlay(self.store)

    def test_provides_istore(self) -> None:
        """It is an IStore, with the store's name and persistence."""
        self.assertTrue(verifyObject(IStore, self.overlay))
        self.assertEqual((self.overlay.name, self.overlay.persistsMessages), ("memory", False))
        self.assertEqual(self.overlay.saveSession, self.store.saveSession)

    def test_sys_kept_out_of_the_store(self) -> None:
        """$SYS messages are set, got, matched, counted and deleted without the store."""
        for topic in ("$SYS/broker/uptime", "$SYS", "a/b", "$SYSTEM/x"):
            _result(self.overlay.setRetained(Message(topic, b"v", 0, True)))
        self.assertEqual(_topics(_result(self.store.matchRetained("$SYS/#"))), [])
        self.assertEqual(_topics(_result(self.store.matchRetained("$SYSTEM/#"))), ["$SYSTEM/x"])
        self.assertEqual(_topics(_result(self.overlay.matchRetained("$SYS/#"))),
                         ["$SYS", "$SYS/broker/uptime"])
        self.assertEqual(_topics(_result(self.overlay.matchRetained("#"))), ["a/b"])
        self.assertEqual(_result(self.overlay.getRetained("$SYS")).payload, b"v")
        self.assertEqual(_result(self.overlay.countRetained()), 4)
        _result(self.overlay.setRetained(Message("$SYS", b"", 0, True)))  # empty: deletes
        _result(self.overlay.deleteRetained("$SYS/broker/uptime"))
        _result(self.overlay.deleteRetained("a/b"))
        self.assertEqual(_result(self.overlay.countRetained()), 1)
        self.assertEqual(_result(self.store.countRetained()), 1)

    def test_is_sys(self) -> None:
        """Only a first level of exactly $SYS counts."""
        self.assertEqual([is_sys(t) for t in ("$SYS", "$SYS/x", "$SYS/#", "$SYSx", "a/$SYS")],
                         [True, True, True, False, False])

    def test_purge(self) -> None:
        """purge_sys_retained removes what earlier versions stored, and only that."""
        for topic in ("$SYS/broker/uptime", "$SYS", "a/b"):
            _result(self.store.setRetained(Message(topic, b"v", 0, True)))
        self.assertEqual(_result(purge_sys_retained(self.store)), 2)
        self.assertEqual(_topics(_result(self.store.matchRetained("$SYS/#"))), [])
        self.assertEqual(_result(self.store.countRetained()), 1)


class OverlayStoreContractTests(StoreContract, unittest.TestCase):
    """The whole store contract holds through the overlay ($SYS topics included)."""

    def make_store(self) -> Any:
        from twisted.internet import reactor

        return SysRetainedOverlay(MemoryStore(reactor))


class ServiceTests(unittest.SynchronousTestCase):
    """The broker service puts the overlay in front of its store."""

    def test_sys_ticks_never_reach_the_store(self) -> None:
        """A $SYS tick publishes retained values that subscribers can match; the store has none."""
        store = MemoryStore()
        service = BrokerService(Clock(), store, sys_interval=0)
        self.assertIs(service.store, store)
        self.assertGreater(SysTopics(service.broker).tick(), 10)
        self.assertEqual(_result(store.countRetained()), 0)
        found = _result(service.broker.store.matchRetained("$SYS/broker/version"))
        self.assertEqual(_topics(found), ["$SYS/broker/version"])

    def test_start_removes_stored_sys(self) -> None:
        """At start the service deletes the $SYS messages an earlier version stored."""
        store = MemoryStore()
        for topic in ("$SYS/broker/uptime", "kept"):
            _result(store.setRetained(Message(topic, b"v", 0, True)))
        service = BrokerService(Clock(), store, sys_interval=0)
        service.startService()
        self.assertIsNone(_result(service.ready))
        self.assertEqual(_topics(_result(store.matchRetained("#"))), ["kept"])
        self.assertEqual(_topics(_result(store.matchRetained("$SYS/#"))), [])


class BrokerProcessTests(RestartTestCase):
    """``twistd -n mqttbroker --store redis://... --sys-interval 0.2``."""

    broker_options = ("--sys-interval", "0.2")

    @inlineCallbacks
    def test_sys_topics_never_stored(self) -> Any:
        """$SYS values reach a subscriber as retained messages, yet Redis holds no $SYS key."""
        watcher = yield self.connected("sys-watcher")
        yield deferLater(self.reactor, 1.0, lambda: None)  # five $SYS ticks
        yield watcher.subscribe("$SYS/broker/version", 0)
        yield self.until(lambda: watcher.delivered, "the retained $SYS/broker/version")
        self.assertEqual(watcher.delivered[0].topic, "$SYS/broker/version")
        self.assertTrue(watcher.delivered[0].retain)
        redis = self.redis
        self.assertEqual((yield redis.command("KEYS", "*SYS*")), [])
        self.assertEqual([t for t in (yield redis.command("HKEYS", "mqtt:retained"))
                          if t.startswith(b"$")], [])
        self.assertNotIn(b"$SYS", (yield redis.command("SMEMBERS", "mqtt:rtrie:")))
