"""The per-connection sets as dicts' keys (core/keyset.py): same answers as a set, a
third of its memory at the sizes bench/compare.py holds (5,000 and 19,900)."""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.adapters import _leanpoll
from mqtt_twisted.codec.packets import Disconnect
from mqtt_twisted.core.keyset import KeySet
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.testing import FakeClient, make_broker
from tests.pahoclient import BrokerTestCase, connect_raw


class KeySetTests(SynchronousTestCase):
    def test_answers_as_a_set(self) -> None:
        members = KeySet.fromkeys([3, 1])
        members.add(2)
        members.add(3)  # (already there: no change, no error)
        self.assertIsInstance(members, KeySet)
        self.assertEqual(list(members), [3, 1, 2])  # (insertion order)
        self.assertEqual(len(members), 3)
        self.assertIn(2, members)
        members.remove(3)
        members.discard(3)  # (not there: nothing)
        self.assertRaises(KeyError, members.remove, 3)
        self.assertEqual(set(members), {1, 2})
        self.assertEqual(set(members) - {1}, {2})
        self.assertEqual(repr(members), "KeySet([1, 2])")

    def test_a_third_of_a_sets_memory_where_sets_are_at_their_largest(self) -> None:
        """5,000 members: a set's table is 32,768 slots (105 bytes a member); 19,900:
        131,072 (the resize at 19,661).  A KeySet: about 30 and 33 bytes."""
        for n in (5000, 19_900):
            as_set, as_keys = set(), KeySet()
            for i in range(n):  # (grown one at a time, as connections come)
                as_set.add(i + 1_000_000)
                as_keys.add(i + 1_000_000)
            per_set, per_keys = sys.getsizeof(as_set) / n, sys.getsizeof(as_keys) / n
            self.assertGreater(per_set, 100, n)
            self.assertLess(per_keys, 40, n)

    def test_the_brokers_connections(self) -> None:
        broker, _ = make_broker()
        a = FakeClient(broker)
        a.connect("a")
        self.assertIsInstance(broker.connections, KeySet)
        self.assertEqual([c.client_id for c in broker.connections], ["a"])
        a.disconnect()
        self.assertEqual(len(broker.connections), 0)


class ReactorSetsTests(BrokerTestCase):
    settings = BrokerSettings()

    @inlineCallbacks
    def test_the_epoll_reactors_descriptor_sets_are_keysets(self) -> Any:
        """Once a plain TCP MQTT listener serves lean, the epoll reactor's read and
        write sets are KeySets (once: the same objects after), holding what they held;
        a connection's descriptor enters and leaves the read set as before."""
        if not _leanpoll.install(self.reactor):
            self.skipTest("not Twisted's epoll reactor")
        reads, writes = self.reactor._reads, self.reactor._writes
        self.assertIsInstance(reads, KeySet)
        self.assertIsInstance(writes, KeySet)
        client = yield connect_raw(self.reactor, self.port)
        yield client.connect("sets-1")
        [conn] = [c for c in self.broker.connections if c.client_id == "sets-1"]
        server = conn.transport
        fd = server.fileno()
        self.assertIn(fd, self.reactor._reads)
        self.assertIn(server, self.reactor.getReaders())
        client.send(Disconnect())
        yield client.wait_closed()
        yield self.wait_until(lambda: server.fileno() == -1)
        self.assertNotIn(fd, self.reactor._reads)
        self.assertIs(self.reactor._reads, reads)
        self.assertIs(self.reactor._writes, writes)
