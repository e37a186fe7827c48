"""The etcd store against a real etcd (Debian's etcd-server 3.4; tests/etcdserver.py).

The contract suite runs in tests/test_store_contract.py; here: URL parsing, the
plugin, two brokers sharing one etcd (sessions, retained messages, locks, a dead
node's locks expiring with its lease), the key layout, group commit, etcd going
away and coming back, the SIGKILL durability tests of tests/test_store_restart.py
on etcd, and what ``twistd mqttbroker`` says about an unreachable etcd, a bad URL
and ``--cluster`` with etcd.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.plugin import getPlugins
from twisted.trial import unittest
from twisted.web.pages import notFound
from twisted.web.server import Site
from zope.interface.verify import verifyObject

from mqtt_twisted import plugins
from mqtt_twisted.errors import StorageError, StoreUnavailable
from mqtt_twisted.interfaces import ILock, IStore, IStorePlugin
from mqtt_twisted.records import SubscriptionOptions
from mqtt_twisted.store import _etcdhttp as op
from mqtt_twisted.store._etcdlanes import Lanes
from mqtt_twisted.store.etcd import EtcdOptions, EtcdStore, parse_url
from mqtt_twisted.store.memory import StoredSession
from mqtt_twisted.testing.store_contract import message, outbound
from tests import test_store_restart as restart
from tests.etcdserver import EtcdServer, Gateway, cluster, fresh_prefix
from tests.redisserver import free_port, temp_dir
from tests.test_twistd_run import ENDS_WITHIN, TwistdTestCase, _listen


class ParseURLTests(unittest.SynchronousTestCase):
    """``--store etcd://...``: defaults, every option, and a clear error for each bad part."""

    def test_defaults(self) -> None:
        """etcd:// alone is 127.0.0.1:2379, prefix mqtt."""
        self.assertEqual(parse_url("etcd://"), EtcdOptions())
        self.assertEqual(parse_url("etcd://h"), EtcdOptions(host="h"))

    def test_everything(self) -> None:
        """Host, port, a prefix (nested too) and every query option."""
        o = parse_url("etcd://10.0.0.1:2479/tenant/a?pool=2&timeout=1.5&connect_timeout=3"
                      "&lock_lease=4&max_txn_ops=1024")
        self.assertEqual(o, EtcdOptions("10.0.0.1", 2479, "tenant/a", 2, 1.5, 3.0, 4.0, 1024))
        self.assertEqual(parse_url("etcd://[::1]:1/").host, "::1")

    def test_errors(self) -> None:
        """Each bad part is a ValueError naming it."""
        for url, needle in (("redis://x", "etcd://"), ("etcd://x:notaport", "port"),
                            ("etcd://x?nope=1", "nope"), ("etcd://x?pool=0", "pool"),
                            ("etcd://x?timeout=abc", "timeout"),
                            ("etcd://x?lock_lease=1", "lock_lease"),
                            ("etcd://x?max_txn_ops=2", "max_txn_ops"),
                            ("etcd://u:p@x", "passwords")):
            with self.assertRaises(ValueError) as caught:
                parse_url(url)
            self.assertIn(needle, str(caught.exception), url)


class PluginTests(unittest.SynchronousTestCase):
    """The etcd store is a store plugin like the others."""

    def test_found_and_verified(self) -> None:
        """getPlugins finds 'etcd'; it and its store provide their interfaces."""
        found = {p.name: p for p in getPlugins(IStorePlugin, plugins)}
        plugin = found["etcd"]
        self.assertTrue(verifyObject(IStorePlugin, plugin))
        store = plugin.makeStore(None, "//127.0.0.1:1/x")
        self.assertTrue(verifyObject(IStore, store))
        self.assertEqual((store.options.port, store.options.prefix), (1, "x"))

    def test_make_store_from_the_split_option(self) -> None:
        """--store etcd, etcd:host:port and etcd://host:port/prefix all work."""
        found = {p.name: p for p in getPlugins(IStorePlugin, plugins)}
        plugin = found["etcd"]
        self.assertEqual(plugin.makeStore(None, "").options, EtcdOptions())
        self.assertEqual(plugin.makeStore(None, "h:1").options, EtcdOptions("h", 1))
        with self.assertRaises(ValueError):
            plugin.makeStore(None, "//h:x")


class _FakeHTTP:
    """Records each request; the test answers them (no etcd, no reactor)."""

    def __init__(self, clock: Clock) -> None:
        self.options = EtcdOptions(timeout=5)
        self.sent: list[tuple[str, dict, defer.Deferred]] = []
        from mqtt_twisted.store.outage import OutageLog

        self.outage = OutageLog(clock, EtcdStore.log, "fake etcd")

    def call(self, path: str, body: dict, write: bool = True) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.sent.append((path, body, d))
        return d


class LanesTests(unittest.SynchronousTestCase):
    """Group commit in _etcdlanes, on a fake gateway and a Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.http = _FakeHTTP(self.clock)
        self.lanes = Lanes(self.clock, self.http, max_ops=4)  # type: ignore[arg-type]

    def put(self, lane: str, key: bytes, guard: bytes | None = None) -> defer.Deferred:
        return self.lanes.write(("s", lane), [(key, op.put(key, b"v"), 1)], guard)

    def delete(self, lane: str, key: bytes) -> defer.Deferred:
        return self.lanes.write(("s", lane), [(key, op.delete(key), 1)])

    def test_queued_writes_leave_together(self) -> None:
        """One request at a time per lane; what queued meanwhile is one transaction, a key
        written twice collapsed into its last write, each caller answered."""
        first = self.put("c", b"a")
        queued = [self.put("c", b"b"), self.put("c", b"c"), self.delete("c", b"b")]
        self.assertEqual(len(self.http.sent), 1)
        self.http.sent[0][2].callback({})
        self.assertEqual(self.successResultOf(first), None)
        self.assertEqual(len(self.http.sent), 2)
        path, body, d = self.http.sent[1]
        self.assertEqual(path, "kv/txn")
        self.assertEqual(body["success"], [op.put(b"c", b"v"), op.delete(b"b")])
        self.assertTrue(all(not q.called for q in queued))
        d.callback({})
        for q in queued:
            self.successResultOf(q)

    def test_lanes_run_side_by_side(self) -> None:
        """Two clients' writes do not wait for each other."""
        self.put("c1", b"a")
        self.put("c2", b"b")
        self.assertEqual(len(self.http.sent), 2)

    def test_batch_limits(self) -> None:
        """At most max_ops keys per transaction, and writes of another guard wait."""
        self.put("c", b"0")
        for n in range(5):
            self.put("c", b"%d" % (n + 1))
        self.put("c", b"x", guard=b"session")
        self.http.sent[0][2].callback({})
        self.assertEqual(len(self.http.sent[1][1]["success"]), 4)
        self.http.sent[1][2].callback({})
        self.assertEqual(len(self.http.sent[2][1]["success"]), 1)
        self.assertEqual(self.http.sent[2][1]["compare"], [])
        self.http.sent[2][2].callback({})
        self.assertEqual(self.http.sent[3][1]["compare"], [op.exists(b"session")])

    def test_failure_reaches_every_caller_of_the_batch(self) -> None:
        """A failed transaction fails each write it held; the lane goes on."""
        self.put("c", b"a")
        queued = [self.put("c", b"b"), self.put("c", b"c")]
        self.http.sent[0][2].callback({})
        self.http.sent[1][2].errback(StorageError("refused"))
        for q in queued:
            self.failureResultOf(q, StorageError)
        later = self.put("c", b"d")
        self.http.sent[2][2].callback({})
        self.successResultOf(later)

    def test_call_waits_past_its_deadline_fails_unsent(self) -> None:
        """A call that waited longer than the timeout behind a stuck request fails at once,
        without being sent."""
        stuck = self.put("c", b"a")
        late = self.lanes.call(("s", "c"), lambda: self.fail("sent"))
        self.clock.advance(6)
        self.http.sent[0][2].errback(StorageError("no reply"))
        self.failureResultOf(stuck, StorageError)
        self.failureResultOf(late, StorageError)
        self.assertEqual(len(self.http.sent), 1)
        self.assertEqual(self.lanes._lanes, {})  # an idle lane is forgotten


class EtcdTestCase(unittest.TestCase):
    """Stores on the shared etcd, each test on a fresh key prefix; stopped afterwards."""

    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:
        from twisted.internet import reactor

        self.reactor = reactor
        self.server = yield EtcdServer.shared(reactor)
        self.prefix = fresh_prefix()

    @inlineCallbacks
    def store(self, url: str | None = None, **query: Any) -> Any:
        store = EtcdStore.fromURL(self.reactor, url or self.server.url(self.prefix, **query))
        yield store.start()
        self.addCleanup(store.stop)
        return store

    @inlineCallbacks
    def keys(self, store: EtcdStore) -> Any:
        reply = yield store._http.call("kv/range", op.get_prefix(
            (self.prefix + "/").encode())["requestRange"])
        return {k[len(self.prefix) + 1:]: v for k, v in op.kvs(reply)}


class NodesTests(EtcdTestCase):
    """Two brokers on one etcd (same prefix): what one stores, the other finds."""

    @inlineCallbacks
    def test_other_node_finds_session_and_retained(self) -> Any:
        """A session saved (and written to) by one store loads whole from another."""
        a = yield self.store()
        b = yield self.store()
        state = StoredSession("c/1%")
        state.subscriptions = {"t/#": SubscriptionOptions(1)}
        state.expiryInterval = 60
        yield a.saveSession(state)
        yield a.storeOutbound("c/1%", outbound(7, msg=message("t/x", b"p", 1)))
        yield a.setRetained(message("r/a", b"kept", 1, True))
        loaded = yield b.loadSession("c/1%")
        self.assertEqual(list(loaded.subscriptions), ["t/#"])
        self.assertEqual([(o.seq, o.message.payload) for o in loaded.outbound], [(7, b"p")])
        self.assertEqual((yield b.listSessions()), ["c/1%"])
        self.assertEqual([m.payload for m in (yield b.matchRetained("r/+"))], [b"kept"])

    @inlineCallbacks
    def test_lock_excludes_across_nodes(self) -> Any:
        """A lock held by one broker: another waits, then gets it once released."""
        a = yield self.store()
        b = yield self.store()
        held = yield a.acquireLock("c1", 5)
        self.assertTrue(verifyObject(ILock, held))
        with self.assertRaises(StorageError):
            yield b.acquireLock("c1", 0.3)
        waiting = b.acquireLock("c1", 5)
        yield held.release()
        lock = yield waiting
        yield lock.release()

    @inlineCallbacks
    def test_lock_of_a_dead_node_expires(self) -> Any:
        """A broker that dies holding a lock: etcd drops it when its lease runs out."""
        a = EtcdStore.fromURL(self.reactor, self.server.url(self.prefix, lock_lease=2))
        yield a.start()
        yield a.acquireLock("c1", 5)
        a._lease._loop.stop()  # no keep-alive, no revoke: as after a kill -9
        yield a._http.close()
        b = yield self.store(lock_lease=2)
        started = time.monotonic()
        lock = yield b.acquireLock("c1", 10)
        self.assertGreater(time.monotonic() - started, 0.5)  # it waited for the lease
        yield lock.release()

    @inlineCallbacks
    def test_stop_revokes_the_lease(self) -> Any:
        """A broker stopping with a lock still held frees it at once (lease revoked)."""
        a = EtcdStore.fromURL(self.reactor, self.server.url(self.prefix))
        yield a.start()
        yield a.acquireLock("c1", 5)
        yield a.stop()
        b = yield self.store()
        lock = yield b.acquireLock("c1", 0.5)
        yield lock.release()

    @inlineCallbacks
    def test_lease_lost_while_alive(self) -> Any:
        """A lease etcd let expire (revoked here): the next keep-alive takes a new one, and
        locks work again."""
        store = yield self.store()
        first = store._lease.id
        yield store._http.call("lease/revoke", {"ID": first})
        yield store._lease._renew()
        self.assertNotEqual(store._lease.id, first)
        self.assertIsNotNone(store._lease.id)
        lock = yield store.acquireLock("c1", 1)
        yield lock.release()
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_failed_release_is_retried(self) -> Any:
        """A release that failed leaves the key on our live lease: this broker takes the lock
        again at once, and the retry after a keep-alive frees it for the others."""
        a = yield self.store()
        b = yield self.store()
        held = yield a.acquireLock("c1", 1)
        a._locks.stale.add("c1")  # as if held.release() had failed: the key stays
        held._local.release()
        held._local = None
        again = yield a.acquireLock("c1", 0.5)  # our own key: ours at once
        yield again.release()
        yield a.acquireLock("c1", 0.5)
        a._locks.stale.add("c1")
        a._locks._local["c1"].release()
        del a._locks._local["c1"]
        a._locks.retry_releases()
        lock = yield b.acquireLock("c1", 2)
        yield lock.release()

    @inlineCallbacks
    def test_key_layout(self) -> Any:
        """The keys docs/stores.md lists, client ids escaped so that prefixes never overlap."""
        store = yield self.store()
        state = StoredSession("a/b")
        state.subscriptions = {"x/+": SubscriptionOptions(2)}
        state.inboundQoS2 = {9}
        yield store.saveSession(state)
        yield store.storeOutbound("a/b", outbound(3, msg=message("x/y", b"m", 1)))
        yield store.setRetained(message("r/s/t", b"v", 0, True))
        lock = yield store.acquireLock("a/b", 1)
        keys = yield self.keys(store)
        yield lock.release()
        self.assertEqual(sorted(keys), [
            b"lock/a%2Fb", b"out/a%2Fb/00000000000000000003", b"qos2/a%2Fb/9",
            b"rdepth/00003/r/s/t", b"retained/r/s/t", b"session/a%2Fb", b"sub/a%2Fb/x/+"])

    @inlineCallbacks
    def test_writes_of_one_client_leave_together(self) -> Any:
        """Writes queued behind a request in flight go as one transaction, in order."""
        store = yield self.store()
        yield store.saveSession(StoredSession("c"))
        sent = store._lanes.transactions
        calls = []
        for seq in range(300):
            calls.append(store.storeOutbound("c", outbound(seq, msg=message("t", b"%d" % seq))))
            if seq % 2:
                calls.append(store.removeOutbound("c", seq))
        yield defer.gatherResults(calls)
        self.assertLess(store._lanes.transactions - sent, 20)
        loaded = yield store.loadSession("c")
        self.assertEqual([o.seq for o in loaded.outbound], list(range(0, 300, 2)))

    @inlineCallbacks
    def test_big_session_saved_in_several_transactions(self) -> Any:
        """A session with more records than --max-txn-ops is saved whole all the same."""
        store = yield self.store()
        state = StoredSession("big")
        state.outbound = [outbound(i, msg=message("t", b"%d" % i, 1)) for i in range(300)]
        yield store.saveSession(state)
        state.outbound = state.outbound[100:]
        yield store.saveSession(state)
        loaded = yield store.loadSession("big")
        self.assertEqual([o.seq for o in loaded.outbound], list(range(100, 300)))


class ReachabilityTests(EtcdTestCase):
    """etcd away at start, away for a while, or not etcd at all."""

    @inlineCallbacks
    def test_start_fails_without_etcd(self) -> Any:
        """Nothing on the port: start() fails after connect_timeout with one clear error."""
        store = EtcdStore.fromURL(self.reactor,
                                  f"etcd://127.0.0.1:{free_port()}/x?connect_timeout=0.5")
        started = self.reactor.seconds()
        with self.assertRaises(StorageError) as caught:
            yield store.start()
        self.assertIn("did not answer in 0.5s", str(caught.exception))
        self.assertLess(self.reactor.seconds() - started, 3)
        yield store.stop()

    @inlineCallbacks
    def test_not_a_gateway(self) -> Any:
        """An HTTP server that is not etcd's gateway: the error says where it should be."""
        port = self.reactor.listenTCP(0, Site(notFound()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        store = EtcdStore.fromURL(self.reactor, f"etcd://127.0.0.1:{port.getHost().port}/x")
        with self.assertRaises(StorageError) as caught:
            yield store.start()
        self.assertIn("HTTP 404", str(caught.exception))
        self.assertIn("/v3/", str(caught.exception))
        yield store.stop()

    @inlineCallbacks
    def test_calls_fail_while_etcd_is_down_then_recover(self) -> Any:
        """etcd stopped: calls fail within the timeout (logged once); restarted: they work."""
        server = EtcdServer(self.reactor, temp_dir(self))
        yield server.start()
        self.addCleanup(server.stop)
        store = yield self.store(server.url(self.prefix, timeout=1))
        yield store.saveSession(StoredSession("c"))
        yield server.stop()
        started = self.reactor.seconds()
        with self.assertRaises(StoreUnavailable):
            yield store.storeOutbound("c", outbound(1, msg=message("t", b"x", 1)))
        self.assertLess(self.reactor.seconds() - started, 2.5)
        self.assertTrue(store.outage.active)
        yield server.restart()
        for _ in range(50):  # a pooled connection of the old server may fail once more
            try:
                yield store.storeOutbound("c", outbound(2, msg=message("t", b"y", 1)))
                break
            except StorageError:
                yield deferLater(self.reactor, 0.1, lambda: None)
        loaded = yield store.loadSession("c")
        self.assertEqual([o.message.payload for o in loaded.outbound], [b"y"])
        self.assertFalse(store.outage.active)


class MembersTests(EtcdTestCase):
    """An etcd of three members behind etcd's own TCP proxy, as docs/stores.md suggests."""

    timeout = 120

    @inlineCallbacks
    def test_member_killed_behind_the_gateway(self) -> Any:
        """A member killed (the first: the one the proxy uses): at most the calls under way
        fail, the next go to a live member, and every write that succeeded is kept."""
        members = cluster(self.reactor, temp_dir(self))
        for member in members:
            self.addCleanup(member.stop, "KILL")
        yield defer.gatherResults([member.start() for member in members])
        gateway = Gateway(self.reactor, members)
        self.addCleanup(gateway.stop)
        store = yield self.store(f"etcd://127.0.0.1:{gateway.port}/{self.prefix}"
                                 f"?timeout=2&connect_timeout=20")
        yield store.saveSession(StoredSession("c"))
        yield members[0].stop("KILL")
        written, failed = set(), 0
        for seq in range(1, 41):
            try:
                yield store.storeOutbound("c", outbound(seq, msg=message("t", b"%d" % seq)))
                written.add(seq)
            except StorageError:
                failed += 1
        self.assertLessEqual(failed, 2)
        loaded = yield store.loadSession("c")
        self.assertEqual({o.seq for o in loaded.outbound}, written)


class EtcdKillTests(restart.KillTests):
    """tests/test_store_restart.py's kill -9 tests, on etcd: a QoS 1/2 message queued or in
    flight for a persistent session, and retained messages, survive kill -9 of the broker
    and a restart on the same etcd."""

    @inlineCallbacks
    def start_store(self) -> Any:
        self.etcd = EtcdServer(self.reactor, temp_dir(self))
        yield self.etcd.start()
        self.addCleanup(self.etcd.stop)
        # lock_lease 2: the killed broker's client locks go 2 s after its death.
        return self.etcd.url(lock_lease=2)


class EtcdOutageTests(restart.RedisOutageTests):
    """tests/test_store_restart.py's outage test, on etcd: etcd stopped under a running
    broker (QoS 0 flows, a QoS 1 PUBLISH that must be stored gets 0x89, CONNECT 0x88 /
    0x03), then started again on the same data (QoS 1 served, the queued message kept)."""

    @inlineCallbacks
    def start_store(self) -> Any:
        # The test stops and restarts ``self.redis``: here it is the etcd (same methods).
        self.redis = EtcdServer(self.reactor, temp_dir(self))
        yield self.redis.start()
        self.addCleanup(self.redis.stop)
        return self.redis.url()  # the test adds ?timeout=1


class TwistdEtcdTests(TwistdTestCase):
    """What an operator sees from ``twistd mqttbroker --store etcd://...``."""

    @defer.inlineCallbacks
    def test_etcd_down(self) -> Any:
        """etcd unreachable at start: the wait (connect_timeout), then one line and exit 1."""
        started = time.monotonic()
        proc = self.twistd("-n", "mqttbroker", "--listen", _listen(free_port()),
                           "--store", f"etcd://127.0.0.1:{free_port()}?connect_timeout=2")
        code = yield self.ended(proc)
        self.assertEqual(code, 1, proc.text)
        self.assertLess(time.monotonic() - started, 2 + ENDS_WITHIN / 2)
        self.assertOneLine(proc.text, "could not start", "store", "etcd at 127.0.0.1",
                           "did not answer in 2")

    @defer.inlineCallbacks
    def test_usage_errors(self) -> Any:
        """A bad etcd URL, and --cluster with etcd: one usage line each, exit status 2."""
        spare = _listen(free_port())
        cases = [(["--store", "etcd://x:notaport"], ["--store 'etcd://x:notaport'", "port"]),
                 (["--store", "etcd://x?pool=0"], ["pool"]),
                 (["--store", "etcd://127.0.0.1:2379", "--cluster", "n1"],
                  ["--cluster needs --store redis://"])]
        procs = [self.twistd("-n", "mqttbroker", "--listen", spare, *args) for args, _ in cases]
        codes = yield defer.gatherResults([self.ended(p) for p in procs])
        for (_, needles), proc, code in zip(cases, procs, codes):
            lines = [line for line in proc.text.splitlines() if line.strip()]
            self.assertEqual(code, 2, proc.text)
            self.assertTrue(lines[0].startswith("twistd mqttbroker: error: "), proc.text)
            for needle in needles:
                self.assertIn(needle, lines[0], proc.text)

    @defer.inlineCallbacks
    def test_runs_on_etcd(self) -> Any:
        """A broker on etcd starts, lists the store in its log, and keeps a retained message."""
        server = yield EtcdServer.shared(self.reactor)
        prefix = fresh_prefix()
        port = free_port()
        proc = self.twistd("-n", "mqttbroker", "--listen", _listen(port), "--store",
                           server.url(prefix), "--sys-interval", "0")
        yield self.wait_for_port(port, proc)
        self.assertIn("etcd store connected", proc.text)
        client = restart.Client(self.reactor)
        yield client.connect(port, "r")
        self.addCleanup(lambda: client.transport.abortConnection())
        yield client.publish("kept/here", b"v", 1, 1, retain=True)
        store = EtcdStore.fromURL(self.reactor, server.url(prefix))
        yield store.start()
        self.addCleanup(store.stop)
        got = yield store.getRetained("kept/here")
        self.assertEqual(got.payload, b"v")
