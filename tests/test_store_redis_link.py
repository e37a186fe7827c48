"""The Redis store's own connection handling (``store/_redislink.py``) and
``saveSessionInfo``, against a real redis-server: replies in order across reads, error
replies as typed errors, scripts loaded again after Redis forgot them, a server that
sends bytes that are not RESP, and the session's own fields saved without its records.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol

from mqtt_twisted.errors import StorageError, StoreUnavailable
from mqtt_twisted.message import Message
from mqtt_twisted.records import SubscriptionOptions
from mqtt_twisted.store.redis import RedisStore
from mqtt_twisted.testing.store_contract import outbound, session
from tests.test_store_redis import RedisTestCase


class LinkTests(RedisTestCase):

    @inlineCallbacks
    def test_replies_across_many_reads_answer_calls_in_order(self) -> Any:
        """A 3 MB reply arrives over many reads; calls around it get their own answers."""
        store = yield self.store()
        big = Message("big", bytes(range(256)) * (3 * 4096), 1, True)
        yield store.setRetained(big)
        yield store.setRetained(Message("small", b"s", 0, True))
        got = yield self._all([store.getRetained("small"), store.getRetained("big"),
                               store.getRetained("small"), store.countRetained()])
        self.assertEqual([got[0].payload, got[1].payload, got[2].payload, got[3]],
                         [b"s", big.payload, b"s", 2])

    def _all(self, calls: list[Any]) -> Any:
        from twisted.internet.defer import gatherResults
        return gatherResults(calls)

    @inlineCallbacks
    def test_error_reply_is_a_storage_error(self) -> Any:
        """An error reply fails its call with a StorageError naming Redis's message (its
        ERR prefix dropped); the calls after it are answered as usual."""
        store = yield self.store()
        link = store._links[0]
        bad = link.call((b"NOSUCHCOMMAND", b"x"))
        good = link.call((b"PING",))
        with self.assertRaises(StorageError) as e:
            yield bad
        self.assertTrue(str(e.exception).startswith("Redis: unknown command"), e.exception)
        self.assertEqual((yield good), b"PONG")

    @inlineCallbacks
    def test_scripts_loaded_again_after_script_flush(self) -> Any:
        """Redis forgot the scripts (SCRIPT FLUSH, as after a restart without them): the
        call that met NOSCRIPT fails, the link loads them again, the next call works."""
        store = yield self.store(pool=1)
        yield store.saveSession(session("c1", expiryInterval=10))
        yield self.raw("SCRIPT", "FLUSH")
        with self.assertRaises(StorageError) as e:
            yield store.storeOutbound("c1", outbound(1))
        self.assertIn("NOSCRIPT", str(e.exception))
        yield store.storeOutbound("c1", outbound(2))
        state = yield store.loadSession("c1")
        self.assertEqual([o.seq for o in state.outbound], [2])

    @inlineCallbacks
    def test_session_info_keeps_records(self) -> Any:
        """saveSessionInfo writes expiry, will, will delay, disconnection time and owner,
        and keeps the stored subscriptions, records and QoS 2 ids."""
        store = yield self.store()
        state = session("c1", expiryInterval=60, owner="alice",
                        will=Message("w", b"gone", 1), willDelay=5,
                        subscriptions={"a/#": SubscriptionOptions(1)},
                        outbound=[outbound(1)], inboundQoS2={3})
        yield store.saveSession(state)
        yield store.storeOutbound("c1", outbound(2))
        info = session("c1", expiryInterval=120, disconnectedAt=1234.5, owner="alice")
        yield store.saveSessionInfo(info)  # no will now, nor records in this copy
        got = yield store.loadSession("c1")
        self.assertEqual((got.expiryInterval, got.disconnectedAt, got.will, got.willDelay,
                          got.owner), (120, 1234.5, None, 0, "alice"))
        self.assertEqual((list(got.subscriptions), [o.seq for o in got.outbound],
                          got.inboundQoS2), (["a/#"], [1, 2], {3}))
        self.assertEqual((yield store.listSessions()), ["c1"])

    @inlineCallbacks
    def test_session_info_of_an_unknown_session_saves_it_whole(self) -> Any:
        """A session the store does not hold (deleted meanwhile, or a Redis that lost
        it) is saved whole instead."""
        store = yield self.store()
        state = session("c9", expiryInterval=60, subscriptions={"x": SubscriptionOptions(0)},
                        outbound=[outbound(4)])
        yield store.saveSessionInfo(state)
        got = yield store.loadSession("c9")
        self.assertEqual((got.expiryInterval, list(got.subscriptions),
                          [o.seq for o in got.outbound]), (60, ["x"], [4]))


class _NotRedis(Protocol):
    """Answers the connection's SELECT as Redis would, then sends bytes that are not
    RESP."""

    def dataReceived(self, data: bytes) -> None:
        if b"SELECT" in data:
            self.transport.write(b"+OK\r\n")
        else:
            self.transport.write(b"?this is not RESP\r\n")


class BadServerTests(RedisTestCase):

    @inlineCallbacks
    def test_bytes_that_are_not_resp(self) -> Any:
        """The link drops a connection whose bytes are not RESP: its calls fail as an
        outage (they do not hang) and the store tries to connect again."""
        from twisted.internet import reactor

        factory = Factory.forProtocol(_NotRedis)
        made: list[Any] = []
        original = factory.buildProtocol

        def build(addr: Any) -> Any:
            made.append(addr)
            return original(addr)

        factory.buildProtocol = build
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        store = RedisStore.fromURL(
            reactor, f"redis://127.0.0.1:{port.getHost().port}/0?pool=1&timeout=2")
        yield store.start()
        self.addCleanup(store.stop)
        with self.assertRaises(StorageError) as e:
            yield store.listSessions()
        self.assertIsInstance(e.exception, StoreUnavailable)
        yield self.wait(0.5)
        self.assertGreater(len(made), 1)  # it connected again
