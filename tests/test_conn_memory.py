"""What an idle connection and a subscription cost: nothing is made before it is needed.

An idle MQTT connection held 2.8 KB of Python objects (bench/conn_memory.py --trace), a
sixth of it a per-connection closure; Mosquitto holds 0.7 KiB.  These tests keep the
parts that were cut from coming back: empty per-session containers, the transport's
drain closure, per-connection decode limits, topic tree nodes with two dicts each.
"""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.adapters._leanserver import LeanServer
from mqtt_twisted.adapters.mqtt import _DRAINING, DrainingServer
from mqtt_twisted.core.session import NO_ENTRIES
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.core.topic_tree import TopicTree, _Leaf
from mqtt_twisted.testing import FakeClient, make_broker
from tests.pahoclient import BrokerTestCase, connect_raw


class IdleSessionTests(SynchronousTestCase):
    def test_idle_session_holds_no_containers_of_its_own(self) -> None:
        broker, _ = make_broker()
        a, b = FakeClient(broker), FakeClient(broker)
        a.connect("a")
        b.connect("b")
        session = broker.sessions["a"]
        self.assertIs(session.subscriptions, NO_ENTRIES)
        self.assertIs(session.inflight, NO_ENTRIES)
        self.assertIsNone(a.connection._aliases_in)
        self.assertIs(a.connection.decoder.limits, b.connection.decoder.limits)

    def test_containers_appear_on_first_use_and_go_with_the_session(self) -> None:
        broker, _ = make_broker()
        sub, pub = FakeClient(broker), FakeClient(broker)
        sub.connect("sub", clean=False)
        pub.connect("pub")
        sub.subscribe("t", qos=1)
        session = broker.sessions["sub"]
        self.assertEqual(list(session.subscriptions), ["t"])
        pub.publish("t", b"x", qos=1)
        self.assertEqual(len(session.inflight), 1)
        sub.unsubscribe("t")
        self.assertEqual(dict(session.subscriptions), {})
        sub.disconnect()
        fresh = FakeClient(broker)
        fresh.connect("sub", clean=True)  # discards the old session
        self.assertIs(session.subscriptions, NO_ENTRIES)
        self.assertIs(session.inflight, NO_ENTRIES)
        self.assertIs(broker.sessions["sub"].subscriptions, NO_ENTRIES)

    def test_unsubscribe_of_an_unknown_filter_on_an_empty_session(self) -> None:
        broker, _ = make_broker()
        c = FakeClient(broker, 5)
        c.connect("c")
        (ack,) = c.unsubscribe("never")
        self.assertEqual(ack.reason_codes, [0x11])  # no subscription existed


class TopicTreeTests(SynchronousTestCase):
    def test_levels_are_dictionaries_and_ends_are_leaves(self) -> None:
        """A level is one dict; where a filter ends with nothing below, its values are
        a leaf in the parent; a filter ending above others keeps its values under
        None in that level's dict, and a filter below a leaf turns it into a node."""
        tree: TopicTree[int] = TopicTree()
        tree.add("a/b/c", "x", 1)
        b = tree._root["a"]["b"]
        self.assertIs(type(b), dict)
        self.assertIs(type(b["c"]), _Leaf)
        self.assertEqual(b["c"], {"x": 1})
        tree.add("a/b", "y", 2)
        self.assertEqual(tree._root["a"]["b"][None], {"y": 2})
        tree.add("a/b/c/d", "z", 3)
        self.assertEqual(tree._root["a"]["b"]["c"], {None: {"x": 1}, "d": {"z": 3}})
        self.assertEqual(sorted(tree.items()), [("a/b", "y", 2), ("a/b/c", "x", 1),
                                                ("a/b/c/d", "z", 3)])
        self.assertEqual(tree.match("a/b/c"), [("x", 1)])
        self.assertEqual(tree.get("a/b/c", "x"), 1)
        self.assertEqual(tree.remove("a/b/c", "x"), 1)
        self.assertEqual(tree._root["a"]["b"]["c"], {"d": {"z": 3}})
        self.assertEqual(tree.match("a/b/c/d"), [("z", 3)])

    def test_remove_where_nothing_is_held(self) -> None:
        tree: TopicTree[int] = TopicTree()
        tree.add("a/b", "x", 1)
        self.assertIsNone(tree.remove("a", "x"))  # an inner node: no values at all
        self.assertIsNone(tree.remove("a/b", "y"))
        self.assertIsNone(tree.remove("a/b/c", "x"))  # below a leaf
        self.assertIsNone(tree.get("a/b/c", "x"))
        self.assertEqual(tree.remove("a/b", "x"), 1)
        self.assertEqual(tree._root, {})  # pruned
        tree.add("a/b", "x", 2)
        self.assertEqual(tree.match("a/b"), [("x", 2)])
        self.assertEqual(len(tree), 1)


class IdleConnectionMemoryTests(BrokerTestCase):
    """Real TCP connections on the reactor: what our own code allocates per idle one."""

    settings = BrokerSettings()
    connections = 150

    @inlineCallbacks
    def test_our_allocations_per_idle_connection(self) -> Any:
        warm = yield connect_raw(self.reactor, self.port)
        yield warm.connect("warm-up")
        self.addCleanup(warm.abort)
        gc.collect()
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        before = tracemalloc.take_snapshot()
        clients = []
        for i in range(self.connections):
            client = yield connect_raw(self.reactor, self.port)
            clients.append(client)
            yield client.connect(f"idle-{i}")
        gc.collect()
        after = tracemalloc.take_snapshot()
        for client in clients:
            yield client.abort()
        # (Log events are kept by the test run's log buffer, not by the broker.)
        ours = [tracemalloc.Filter(True, "*/mqtt_twisted/*"),
                tracemalloc.Filter(False, "*/mqtt_twisted/core/clientlog.py")]
        grown = sum(s.size_diff for s in after.filter_traces(ours).compare_to(
            before.filter_traces(ours), "filename"))
        per = grown / self.connections
        # About 1,700 bytes before the closure, the shim and the empty containers went;
        # 960 after (the connection 328, the session 232, the decoder 96, peer and
        # client id strings, the write method, set and dict growth).
        self.assertLess(per, 1100, f"{per:.0f} bytes of mqtt_twisted objects per connection")
        transports = {type(c.transport) for c in self.broker.connections
                      if hasattr(c.transport, "transport")}
        servers = {type(c.transport.transport) for c in self.broker.connections}
        self.assertEqual(servers, {DrainingServer})
        self.assertTrue(set(servers) <= set(_DRAINING.values()), servers)
        self.assertFalse(any("connectionLost" in vars(c.transport.transport)
                             for c in self.broker.connections))
        self.assertTrue(transports)

    @inlineCallbacks
    def test_keepalive_connections_add_no_delayed_calls(self) -> Any:
        """50 real clients with keep alive 60 add at most one DelayedCall to the reactor
        (the deadline wheel's), not one each (about 670 bytes per connection)."""
        before = {id(c) for c in self.reactor.getDelayedCalls()}
        clients = []
        for i in range(50):
            client = yield connect_raw(self.reactor, self.port)
            clients.append(client)
            yield client.connect(f"ka-{i}", keep_alive=60)
        added = [c for c in self.reactor.getDelayedCalls() if id(c) not in before
                 and getattr(c.func, "__module__", "").startswith("mqtt_twisted")]
        armed = len(self.broker.deadlines)
        for client in clients:
            yield client.abort()
        self.assertLessEqual(len(added), 1, added)
        self.assertEqual(armed, 50)

    @inlineCallbacks
    def test_lean_transport_keeps_no_strings(self) -> Any:
        """The TCP transport stores no log prefix, repr or bound fileno per connection
        (about 210 bytes), yet logs, reprs and polls as Twisted's own does."""
        client = yield connect_raw(self.reactor, self.port)
        yield client.connect("lean")
        [conn] = [c for c in self.broker.connections if c.client_id == "lean"]
        server = conn.transport.transport
        self.assertIsInstance(server, LeanServer)
        self.assertFalse({"logstr", "repstr", "fileno"} & set(vars(server)))
        self.assertEqual(server.fileno(), server.socket.fileno())
        self.assertEqual(server.logPrefix(), "MQTTStreamProtocol")
        self.assertRegex(server.logstr, r"^MQTTStreamProtocol,\d+,127\.0\.0\.1$")
        self.assertRegex(repr(server), r"^<MQTTStreamProtocol #\d+ on \d+>$")
        lost = conn.transport.transport
        yield client.abort()
        yield self.sleep(0.1)
        self.assertEqual(lost.fileno(), -1)


class MemoryStoreLockTests(SynchronousTestCase):
    def test_uncontended_lock_then_a_waiter(self) -> None:
        """The memory store's client id lock is taken at once when free (no acquire
        Deferred chain per CONNECT), and still queues a second CONNECT of the same id
        until the first releases it."""
        from twisted.internet.task import Clock

        from mqtt_twisted.store.memory import MemoryStore

        store = MemoryStore(Clock())
        first = self.successResultOf(store.acquireLock("c", 5))
        second = store.acquireLock("c", 5)
        self.assertNoResult(second)
        first.release()
        held = self.successResultOf(second)
        held.release()
        self.assertEqual(store._locks, {})
        self.successResultOf(store.acquireLock("c", 5)).release()
        self.assertEqual(store._locks, {})
