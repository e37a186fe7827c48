"""The Redis store beyond the shared contract: its URL, its record format, the plugin,
several broker nodes on one Redis, TLS and passwords, and Redis going away and back.

Every test that needs Redis starts its own redis-server (tests/redisserver.py).
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import txredisapi
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from mqtt_twisted.constants import PropertyId
from mqtt_twisted.core import inspection
from mqtt_twisted.core.session import AWAITING_PUBCOMP, Outbound, SubscriptionOptions
from mqtt_twisted.errors import StorageError
from mqtt_twisted.interfaces import ISessionInfoStore, IStore, IStorePlugin
from mqtt_twisted.message import Message
from mqtt_twisted.plugins import plugins_by_name
from mqtt_twisted.store import redis as redis_store
from mqtt_twisted.store.memory import StoredSession
from mqtt_twisted.store.redis import RedisOptions, RedisStore, parse_url
from mqtt_twisted.testing.store_contract import ALL_PROPERTIES, message_tuple, outbound_tuple

try:
    from tests.redisserver import RedisServer, free_port, temp_dir
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from redisserver import RedisServer, free_port, temp_dir  # type: ignore[no-redef]


class ParseURLTests(unittest.SynchronousTestCase):
    """``--store redis://...`` URLs."""

    def test_defaults(self) -> None:
        """A bare URL means localhost:6379, database 0, 4 connections, 5 s calls, prefix mqtt."""
        self.assertEqual(parse_url("redis://"), RedisOptions())
        options = parse_url("redis://example.org")
        self.assertEqual((options.host, options.port, options.db, options.pool, options.timeout,
                          options.prefix, options.tls), ("example.org", 6379, 0, 4, 5.0,
                                                         "mqtt", False))

    def test_everything(self) -> None:
        """User, password (percent-encoded), port, database and every query option are read."""
        options = parse_url("redis://bob:p%40ss%3Aw@10.0.0.1:7000/3?pool=2&timeout=0.5"
                            "&connect_timeout=3&prefix=site1&lock_lease=20")
        self.assertEqual(options, RedisOptions(
            "10.0.0.1", 7000, 3, "bob", "p@ss:w", False, None, None, None, 2, 0.5, 3.0,
            "site1", 20.0))
        self.assertEqual(parse_url("redis://:secret@h/1").password, "secret")
        self.assertIsNone(parse_url("redis://:secret@h/1").username)

    def test_tls(self) -> None:
        """rediss:// selects TLS and accepts ca, cert and key files."""
        options = parse_url("rediss://h:6380/0?ca=/etc/ca.pem&cert=/c.pem&key=/k.pem")
        self.assertEqual((options.tls, options.ca, options.cert, options.key),
                         (True, "/etc/ca.pem", "/c.pem", "/k.pem"))

    def test_errors(self) -> None:
        """Bad URLs are refused with a ValueError saying what is wrong."""
        for url, words in [
            ("http://h", "redis://"), ("redis://h/x", "database"), ("redis://h:99999", "port"),
            ("redis://h?colour=blue", "colour"), ("redis://h?pool=many", "pool"),
            ("redis://h?pool=0", "pool"), ("redis://h?timeout=0", "positive"),
            ("redis://h?ca=/x.pem", "rediss"), ("rediss://h?cert=/c.pem", "key"),
        ]:
            with self.assertRaises(ValueError) as e:
                parse_url(url)
            self.assertIn(words, str(e.exception), url)


class PluginTests(unittest.SynchronousTestCase):
    """The store plugins: ``--store redis://...`` and ``--store rediss://...``."""

    def test_found_and_verified(self) -> None:
        """Plugin discovery finds 'redis' and 'rediss', both providing IStorePlugin."""
        found = plugins_by_name(IStorePlugin)
        for name in ("redis", "rediss"):
            self.assertIn(name, found)
            self.assertTrue(verifyObject(IStorePlugin, found[name]))
            self.assertEqual(found[name].name, name)

    def test_make_store_from_the_split_option(self) -> None:
        """The text after 'redis:' (as tap.py splits --store) becomes the store's URL."""
        from twisted.internet.task import Clock

        plugin = plugins_by_name(IStorePlugin)["redis"]
        store = plugin.makeStore(Clock(), "//127.0.0.1:7000/2?pool=3")
        self.assertIsInstance(store, RedisStore)
        self.assertTrue(verifyObject(IStore, store))
        self.assertTrue(verifyObject(ISessionInfoStore, store))
        self.assertEqual((store.options.port, store.options.db, store.options.pool),
                         (7000, 2, 3))
        self.assertEqual(plugin.makeStore(Clock(), "").options, RedisOptions())
        self.assertEqual(plugin.makeStore(Clock(), "h:1/5").options.db, 5)
        tls = plugins_by_name(IStorePlugin)["rediss"].makeStore(Clock(), "//h:6380/0")
        self.assertTrue(tls.options.tls)
        with self.assertRaises(ValueError):
            plugin.makeStore(Clock(), "//h/notanumber")


class FormatTests(unittest.SynchronousTestCase):
    """The stored record format (msgpack, versioned)."""

    def test_message_round_trip(self) -> None:
        """A message with every v5 property type comes back equal, value types included."""
        m = Message("t/ü", bytes(range(256)) * 3, 2, True, 17, dict(ALL_PROPERTIES), 1.5, "snd")
        back = redis_store.decode_message(redis_store.encode_message(m))
        self.assertEqual(message_tuple(back), message_tuple(m))
        self.assertIsNone(back.packet_id)  # per hop, not stored
        for key, value in back.properties.items():
            self.assertIsInstance(key, PropertyId)
            self.assertIs(type(value), type(ALL_PROPERTIES[key]))
        pairs = back.properties[PropertyId.USER_PROPERTY]
        self.assertTrue(all(type(pair) is tuple for pair in pairs))

    def test_outbound_round_trip(self) -> None:
        """An Outbound record keeps seq, packet id, state, group and subscription ids."""
        out = Outbound(Message("a", b"x", 2, properties={PropertyId.CONTENT_TYPE: "c"}), 2,
                       True, (5, 6), 300, AWAITING_PUBCOMP, "$share/g/a", 77)
        back = redis_store.decode_outbound(redis_store.encode_outbound(out))
        self.assertEqual(outbound_tuple(back), outbound_tuple(out))

    def test_options_round_trip(self) -> None:
        """Subscription options survive encoding."""
        options = SubscriptionOptions(2, True, True, 2, 268_435_455)
        self.assertEqual(redis_store.decode_options(redis_store.encode_options(options)),
                         options)

    def test_other_format_refused(self) -> None:
        """A record written in another format version is refused with StorageError."""
        import msgpack

        future = msgpack.packb([99, "t", b"", 0, False, {}, 0.0, None])
        with self.assertRaises(StorageError):
            redis_store.decode_message(future)


class RedisTestCase(unittest.TestCase):
    """Starts a redis-server for each test; ``store()`` makes started stores on it."""

    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:
        from twisted.internet import reactor

        self.reactor = reactor
        self.server = RedisServer(reactor, temp_dir(self))
        yield self.server.start()
        self.addCleanup(self.server.stop)

    @inlineCallbacks
    def store(self, **query: Any) -> Any:
        store = RedisStore.fromURL(self.reactor, self.server.url(**query))
        yield store.start()
        self.addCleanup(store.stop)
        return store

    @inlineCallbacks
    def raw(self, *command: Any) -> Any:
        """One command on a plain txredisapi connection of the test's own."""
        conn = yield txredisapi.Connection("127.0.0.1", self.server.port, reconnect=False,
                                           charset=None, convertNumbers=False,
                                           password=self.server.password)
        try:
            result = yield conn.execute_command(*command)
        finally:
            yield conn.disconnect()
        return result

    def wait(self, seconds: float) -> Any:
        return deferLater(self.reactor, seconds, lambda: None)


class ClusterTests(RedisTestCase):
    """Two broker nodes on one Redis see the same sessions, retained messages and locks."""

    @inlineCallbacks
    def test_other_node_finds_session_and_retained(self) -> Any:
        """A session saved and retained messages set by one node are found by another."""
        a = yield self.store()
        b = yield self.store(pool=1)
        state = StoredSession("dev-1")
        state.subscriptions = {"cmd/dev-1/#": SubscriptionOptions(1)}
        state.expiryInterval = None
        yield a.saveSession(state)
        yield a.storeOutbound("dev-1", Outbound(Message("cmd/dev-1/x", b"1", 1), 1, False, None,
                                                None, 0, None, 1))
        yield a.setRetained(Message("status/dev-1", b"online", 1, True))
        self.assertEqual((yield b.listSessions()), ["dev-1"])
        loaded = yield b.loadSession("dev-1")
        self.assertEqual(loaded.subscriptions, state.subscriptions)
        self.assertEqual([o.message.payload for o in loaded.outbound], [b"1"])
        found = yield b.matchRetained("status/+")
        self.assertEqual([m.payload for m in found], [b"online"])
        yield b.deleteRetained("status/dev-1")
        self.assertEqual((yield a.matchRetained("#")), [])

    @inlineCallbacks
    def test_lock_excludes_across_nodes(self) -> Any:
        """A client lock held by one node makes another node's acquireLock wait, then fail."""
        a = yield self.store()
        b = yield self.store()
        held = yield a.acquireLock("dev-1", 1)
        with self.assertRaises(StorageError):
            yield b.acquireLock("dev-1", 0.3)
        waiting = b.acquireLock("dev-1", 5)
        yield self.wait(0.1)
        self.assertFalse(waiting.called)
        yield held.release()
        lock = yield waiting
        yield lock.release()

    @inlineCallbacks
    def test_lock_of_a_dead_node_expires(self) -> Any:
        """A lock its holder never released lapses after lock_lease seconds."""
        a = yield self.store(lock_lease=0.4)
        b = yield self.store()
        yield a.acquireLock("dev-1", 1)  # never released: the node "dies"
        started = self.reactor.seconds()
        lock = yield b.acquireLock("dev-1", 5)
        self.assertGreaterEqual(self.reactor.seconds() - started, 0.2)
        yield lock.release()

    @inlineCallbacks
    def test_key_layout(self) -> Any:
        """The keys are the documented ones: per-client keys share a {client id} hash tag."""
        store = yield self.store()
        state = StoredSession("c1")
        state.subscriptions = {"a": SubscriptionOptions(1)}
        state.outbound = [Outbound(Message("a", b"x", 1), 1, False, None, None, 0, None, 1)]
        state.inboundQoS2 = {3}
        yield store.saveSession(state)
        yield store.setRetained(Message("r/s", b"x", 1, True))
        keys = sorted((yield self.raw("KEYS", "*")))
        self.assertEqual(keys, sorted([
            b"mqtt:sessions", b"mqtt:session:{c1}", b"mqtt:subs:{c1}", b"mqtt:out:{c1}",
            b"mqtt:qos2:{c1}", b"mqtt:retained", b"mqtt:rtrie:", b"mqtt:rtrie:/r"]))
        self.assertEqual((yield self.raw("HGET", "mqtt:session:{c1}", "v")), b"1")
        self.assertEqual((yield self.raw("HGET", "mqtt:session:{c1}", "expiry")), b"0")

    @inlineCallbacks
    def test_prefix_and_database_keep_brokers_apart(self) -> Any:
        """Stores with another key prefix or database do not see each other's data."""
        a = yield self.store()
        b = yield self.store(prefix="other")
        c = RedisStore.fromURL(self.reactor, self.server.url(db=1))
        yield c.start()
        self.addCleanup(c.stop)
        yield a.saveSession(StoredSession("c1"))
        yield a.setRetained(Message("t", b"x", 0, True))
        for other in (b, c):
            self.assertEqual((yield other.listSessions()), [])
            self.assertEqual((yield other.countRetained()), 0)

    @inlineCallbacks
    def test_other_format_in_redis_refused(self) -> Any:
        """A session written by an unknown format version fails to load with StorageError."""
        store = yield self.store()
        yield self.raw("HSET", "mqtt:session:{c1}", "v", "99")
        with self.assertRaises(StorageError):
            yield store.loadSession("c1")


class ConnectionTests(RedisTestCase):
    """Connecting, authenticating, TLS, timeouts, and Redis going away and coming back."""

    @inlineCallbacks
    def test_start_fails_without_redis(self) -> Any:
        """start() fails with StorageError once connect_timeout passes with no Redis."""
        url = f"redis://127.0.0.1:{free_port()}/0?connect_timeout=0.3"
        store = RedisStore.fromURL(self.reactor, url)
        started = self.reactor.seconds()
        with self.assertRaises(StorageError):
            yield store.start()
        self.assertLess(self.reactor.seconds() - started, 5)
        yield store.stop()

    @inlineCallbacks
    def test_password(self) -> Any:
        """A password-protected Redis: the right password works, a wrong one fails start()."""
        server = RedisServer(self.reactor, temp_dir(self), password="s3cret")
        yield server.start()
        self.addCleanup(server.stop)
        good = RedisStore.fromURL(self.reactor, server.url())
        yield good.start()
        self.addCleanup(good.stop)
        yield good.saveSession(StoredSession("c1"))
        self.assertEqual((yield good.listSessions()), ["c1"])
        bad = RedisStore.fromURL(
            self.reactor, f"redis://:wrong@127.0.0.1:{server.port}/0?connect_timeout=5")
        with self.assertRaises(StorageError) as e:
            yield bad.start()
        self.assertIn("refused", str(e.exception))
        yield bad.stop()

    @inlineCallbacks
    def test_tls(self) -> Any:
        """rediss:// talks TLS to Redis, verifying the server against ?ca=FILE."""
        directory = temp_dir(self)
        ca, cert, key = _make_certificates(directory)
        port = free_port()
        server = RedisServer(self.reactor, temp_dir(self), "--tls-port", str(port),
                             "--tls-cert-file", cert, "--tls-key-file", key,
                             "--tls-ca-cert-file", ca, "--tls-auth-clients", "no")
        yield server.start()  # ready once its plain port answers
        self.addCleanup(server.stop)
        store = RedisStore.fromURL(self.reactor, f"rediss://localhost:{port}/0?ca={ca}")
        yield store.start()
        self.addCleanup(store.stop)
        yield store.setRetained(Message("tls/t", b"x", 1, True))
        self.assertEqual([m.topic for m in (yield store.matchRetained("tls/#"))], ["tls/t"])
        untrusted = RedisStore.fromURL(self.reactor,
                                       f"rediss://localhost:{port}/0?connect_timeout=1")
        with self.assertRaises(StorageError):
            yield untrusted.start()  # the system's CAs do not know our test CA
        yield untrusted.stop()

    @inlineCallbacks
    def test_calls_fail_while_redis_is_down_then_recover(self) -> Any:
        """With Redis stopped calls fail with StorageError after `timeout`; restarted, the data is back."""
        store = yield self.store(timeout=0.3)
        yield store.saveSession(StoredSession("c1"))
        yield self.server.stop()
        started = self.reactor.seconds()
        results = yield gatherResults([
            store.loadSession("c1").addErrback(lambda f: f.value),
            store.storeOutbound("c1", Outbound(Message("a", b"x", 1), 1, False, None, None, 0,
                                               None, 1)).addErrback(lambda f: f.value),
            store.acquireLock("c1", 5).addErrback(lambda f: f.value),
        ])
        self.assertTrue(all(isinstance(r, StorageError) for r in results), results)
        self.assertLess(self.reactor.seconds() - started, 2)
        yield self.server.restart()
        loaded = yield self._eventually(lambda: store.loadSession("c1"))
        self.assertEqual(loaded.clientId, "c1")  # the append-only file kept it

    @inlineCallbacks
    def test_calls_wait_for_a_short_outage(self) -> Any:
        """A call made while Redis is briefly away waits for the reconnection and succeeds."""
        store = yield self.store(timeout=10)
        yield self.server.stop()
        pending = store.saveSession(StoredSession("c1"))
        yield self.wait(0.2)
        self.assertFalse(pending.called)
        yield self.server.restart()
        yield pending
        self.assertEqual((yield store.listSessions()), ["c1"])

    @inlineCallbacks
    def test_stuck_redis_times_out(self) -> Any:
        """A Redis that stops answering (SIGSTOP) fails calls after `timeout`; the store then recovers."""
        import signal

        store = yield self.store(timeout=0.3, pool=1)
        self.server.signal(signal.SIGSTOP)
        with self.assertRaises(StorageError) as e:
            yield store.listSessions()
        self.assertIn("no reply", str(e.exception))
        self.server.signal(signal.SIGCONT)
        sessions = yield self._eventually(store.listSessions)
        self.assertEqual(sessions, [])

    @inlineCallbacks
    def test_scripts_loaded_again_after_flush(self) -> Any:
        """After SCRIPT FLUSH one call fails with StorageError and the scripts are reloaded."""
        store = yield self.store(pool=1)
        yield self.raw("SCRIPT", "FLUSH")
        with self.assertRaises(StorageError):
            yield store.listSessions()
        self.assertEqual((yield store.listSessions()), [])

    @inlineCallbacks
    def test_stop_finishes_pending_writes(self) -> Any:
        """stop() waits for the writes under way, so that they are all stored."""
        store = RedisStore.fromURL(self.reactor, self.server.url())
        yield store.start()
        state = StoredSession("c1")
        yield store.saveSession(state)
        for seq in range(1, 501):
            store.storeOutbound("c1", Outbound(Message("a", b"x", 1), 1, False, None, None, 0,
                                               None, seq))
        yield store.stop()
        other = yield self.store()
        loaded = yield other.loadSession("c1")
        self.assertEqual(len(loaded.outbound), 500)

    @inlineCallbacks
    def _eventually(self, call: Any, within: float = 15.0) -> Any:
        """``call()`` retried until it stops failing with StorageError (reconnection)."""
        waited = 0.0
        while True:
            try:
                result = yield call()
                return result
            except StorageError:
                if waited > within:
                    raise
            yield self.wait(0.1)
            waited += 0.1


def _make_certificates(directory: str) -> tuple[str, str, str]:
    """A test CA and a server certificate for 'localhost' signed by it; PEM file paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def build(subject: str, issuer: Any, issuer_key: Any, key: Any, ca: bool) -> Any:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(issuer).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mqtt-twisted test CA")])
    ca_cert = build("mqtt-twisted test CA", ca_name, ca_key, ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build("localhost", ca_name, ca_key, key, False)
    paths = [os.path.join(directory, n) for n in ("ca.pem", "cert.pem", "key.pem")]
    pem = serialization.Encoding.PEM
    with open(paths[0], "wb") as f:
        f.write(ca_cert.public_bytes(pem))
    with open(paths[1], "wb") as f:
        f.write(cert.public_bytes(pem))
    with open(paths[2], "wb") as f:
        f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return paths[0], paths[1], paths[2]


class ServiceTests(RedisTestCase):
    """BrokerService's store lifecycle on Redis: restore at start, save at stop."""

    @inlineCallbacks
    def test_restores_every_stored_session(self) -> Any:
        """At start the service restores every stored session, subscriptions routable, queue in order."""
        from mqtt_twisted.service import RESTORE_BATCH, BrokerService

        writer = yield self.store()
        count = RESTORE_BATCH * 2 + 7
        saves = []
        for n in range(count):
            state = StoredSession(f"c{n}")
            state.expiryInterval = None
            state.subscriptions = {f"to/c{n}": SubscriptionOptions(1)}
            state.outbound = [Outbound(Message(f"to/c{n}", b"%d" % i, 1), 1, False, None, None,
                                       0, None, i) for i in (2, 1)]
            saves.append(writer.saveSession(state))
        yield gatherResults(saves)
        service = BrokerService(self.reactor, RedisStore.fromURL(self.reactor,
                                                                 self.server.url()),
                                sys_interval=0)
        service.startService()
        yield service.ready
        try:
            broker = service.broker
            self.assertEqual(len(inspection.session_ids(broker)), count)
            self.assertEqual(set(inspection.session_info(broker, "c42").subscriptions),
                             {"to/c42"})
            self.assertEqual(inspection.index_sizes(broker).plain, count)
            self.assertEqual([m.client_id for m in inspection.matching_clients(broker, "to/c42")],
                             ["c42"])
            self.assertEqual([m.payload for m in inspection.held_messages(broker, "c7")
                              if not m.in_flight], [b"1", b"2"])
        finally:
            yield service.stopService()

    @inlineCallbacks
    def test_stop_while_redis_is_down(self) -> Any:
        """Stopping the service with Redis gone ends after one store timeout, the store closed."""
        from mqtt_twisted.service import BrokerService

        service = BrokerService(self.reactor, RedisStore.fromURL(
            self.reactor, self.server.url(timeout=0.5)), sys_interval=0)
        service.startService()
        yield service.ready
        for n in range(50):
            state = StoredSession(f"c{n}")
            state.expiryInterval = None
            service.broker.restore_session(state)
        yield self.server.stop()
        started = self.reactor.seconds()
        yield service.stopService()
        self.assertLess(self.reactor.seconds() - started, 3)
        self.flushLoggedErrors(StorageError)
