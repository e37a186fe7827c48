"""A closed MQTT connection is freed by its reference count, not left to the cyclic
garbage collector: the protocol and the sans-IO connection pointed at each other, so
each of the live fuzz's 100,000 short connections was a cycle of 8 objects, some of
them promoted to the oldest generation at every young collection, where only a full
collection found them (issue 14; ``adapters/mqtt.py``, ``MQTTStreamProtocol``)."""

from __future__ import annotations

import gc
import socket
import struct
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from mqtt_twisted.codec import Connect, Publish, Subscribe, Subscription, encode
from mqtt_twisted.testing import start_broker, stop_broker


def _clients(port: int, count: int) -> None:
    """Short connections as the fuzz makes them: CONNECT (clean or not), a SUBSCRIBE
    and a PUBLISH, then a close, every third a reset; every fourth never sends CONNECT."""
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        if i % 4:
            sock.sendall(encode(Connect(f"cyc-{i}", 4, i % 2 == 0, 30), 4)
                         + encode(Subscribe(1, [Subscription("c/#", 0)]))
                         + encode(Publish("c/x", b"p", 0)))
        sock.settimeout(0.05)
        try:
            sock.recv(64)
        except OSError:
            pass
        if i % 3 == 0:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


class ClosedConnectionsTests(unittest.TestCase):
    @inlineCallbacks
    def test_no_cycle_left_by_closed_connections(self) -> Any:
        """60 connections opened and closed (clean, persistent, reset, no CONNECT):
        once the broker has seen them go, a collection finds none of their objects."""
        service, port = yield start_broker(reactor)
        self.addCleanup(stop_broker, service)
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        self.addCleanup(gc.set_debug, 0)
        self.addCleanup(gc.garbage.clear)
        yield deferToThread(_clients, port, 60)
        for _ in range(200):  # until the broker has seen every close (at most 10 s)
            if not service.broker.connections and not service.test_factory.active:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        gc.collect()
        left = sorted({type(o).__name__ for o in gc.garbage if _of(o, service)})
        self.assertEqual(left, [])


def _of(thing: Any, service: Any) -> bool:
    """Whether ``thing`` belongs to this test's broker: its protocols, connections and
    sessions. (Other tests in the same process leave garbage of their own, clients and
    connectors, that their cleanup makes collectable while this test runs.)"""
    try:
        return (getattr(thing, "factory", None) is service.test_factory
                or getattr(thing, "broker", None) is service.broker
                or str(getattr(thing, "clientId", None) or "").startswith("cyc-"))
    except Exception:
        return False
