"""The store contract as a reusable test suite, for our stores and third-party ones.

Subclass :class:`StoreContract` next to ``twisted.trial.unittest.TestCase`` and give it a
``make_store()`` returning your store (or a Deferred firing with it); every test then runs
against that store on the real reactor, as ``tests/test_store_contract.py`` does for the
memory and Redis stores::

    from twisted.internet import reactor
    from twisted.trial import unittest

    from mqtt_twisted.testing.store_contract import StoreContract

    class MyStoreContractTests(StoreContract, unittest.TestCase):
        def make_store(self):
            return MyStore(reactor)

The suite calls ``start()`` before each test and ``stop()`` after it: give every test a
fresh, empty store.  docs/stores.md explains each rule the tests pin down.

``StoreContract`` combines three parts, each usable on its own on top of
:class:`StoreFixture` (which makes, starts and stops the store): :class:`SessionContract`,
:class:`RetainedContract` and :class:`LockContract`.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest
from zope.interface.verify import verifyObject

from mqtt_twisted.codec.topics import topic_matches
from mqtt_twisted.constants import PropertyId
from mqtt_twisted.core.session import AWAITING_ACK, AWAITING_PUBCOMP, Outbound, SubscriptionOptions
from mqtt_twisted.errors import StorageError
from mqtt_twisted.interfaces import ILock, ISessionState, IStore
from mqtt_twisted.message import Message
from mqtt_twisted.store.memory import StoredSession

if TYPE_CHECKING:  # type checkers see the TestCase the suite is mixed into
    from twisted.trial.unittest import TestCase as _Mixin
else:
    _Mixin = object

__all__ = [
    "ALL_PROPERTIES", "LockContract", "RetainedContract", "SessionContract", "StoreContract",
    "StoreFixture", "message", "message_tuple", "outbound", "outbound_tuple", "session",
]

_P = PropertyId

#: v5 properties of every value type a message can carry.
ALL_PROPERTIES = {
    _P.PAYLOAD_FORMAT_INDICATOR: 1,
    _P.MESSAGE_EXPIRY_INTERVAL: 3600,
    _P.CONTENT_TYPE: "text/plain; charset=utf-8",
    _P.RESPONSE_TOPIC: "reply/ü",
    _P.CORRELATION_DATA: bytes(range(256)),
    _P.SUBSCRIPTION_IDENTIFIER: [1, 268_435_455],
    _P.USER_PROPERTY: [("k", "v"), ("k", "v2"), ("", ""), ("ключ", "значение")],
}


def message(topic: str = "a/b", payload: bytes = b"hello", qos: int = 1, retain: bool = False,
            properties: dict | None = None, received_at: float = 0.0,
            sender: str | None = None) -> Message:
    """A message with test defaults (QoS 1 on ``a/b``), every field settable."""
    return Message(topic, payload, qos, retain, None, properties, received_at, sender)


def outbound(seq: int, qos: int = 1, packet_id: int | None = None, state: int = AWAITING_ACK,
             msg: Message | None = None, subscription_ids: tuple[int, ...] | None = None,
             group: str | None = None, retain: bool = False) -> Outbound:
    """An outbound record with sequence number ``seq`` (queued unless given a packet id)."""
    return Outbound(msg or message(f"t/{seq}", b"payload %d" % seq, qos), qos, retain,
                    subscription_ids, packet_id, state, group, seq)


def session(client_id: str = "c1", **fields: Any) -> StoredSession:
    """An ISessionState to save, with ``fields`` set on it."""
    state = StoredSession(client_id)
    for name, value in fields.items():
        setattr(state, name, value)
    return state


def outbound_tuple(out: Outbound) -> tuple[Any, ...]:
    """Every field of an outbound record and its message, to compare records by value."""
    m = out.message
    return (out.seq, out.qos, out.retain, out.subscription_ids, out.packet_id, out.state,
            out.group, m.topic, m.payload, m.qos, m.retain, m.properties, m.received_at,
            m.sender)


def message_tuple(m: Message) -> tuple[Any, ...]:
    """Every field of a message, to compare messages by value."""
    return (m.topic, m.payload, m.qos, m.retain, m.properties, m.received_at, m.sender)


class StoreFixture(_Mixin):
    """What every part of the contract shares: a fresh, started store per test, and the
    check that it provides IStore.  A subclass provides ``make_store`` (may return a
    Deferred)."""

    timeout = 30  # trial's per-test limit

    def make_store(self) -> Any:
        """Return a new, empty store (or a Deferred of it); ``self.reactor`` is set."""
        raise NotImplementedError

    @inlineCallbacks
    def setUp(self) -> Any:
        """Make and start the store, and stop it after the test (call it from an override)."""
        from twisted.internet import reactor

        self.reactor = reactor
        self.store = yield self.make_store()
        yield self.store.start()
        self.addCleanup(self.store.stop)

    def test_provides_istore(self) -> None:
        """The store provides IStore (every method and attribute of the contract)."""
        self.assertTrue(verifyObject(IStore, self.store))
        self.assertIsInstance(self.store.name, str)
        self.assertIsInstance(self.store.persistsMessages, bool)


class SessionContract(StoreFixture):
    """Sessions: save, load, delete, list, and the per-session writes (subscriptions,
    outbound records, inbound QoS 2 packet ids)."""

    @inlineCallbacks
    def assert_session(self, expected: StoredSession) -> Any:
        """loadSession gives back exactly ``expected``'s fields."""
        loaded = yield self.store.loadSession(expected.clientId)
        self.assertIsNotNone(loaded)
        self.assertTrue(verifyObject(ISessionState, loaded))
        self.assertEqual(loaded.clientId, expected.clientId)
        self.assertEqual(loaded.subscriptions, expected.subscriptions)
        self.assertEqual(loaded.will, expected.will)
        if expected.will is not None:
            self.assertEqual(message_tuple(loaded.will), message_tuple(expected.will))
        self.assertEqual(loaded.willDelay, expected.willDelay)
        self.assertEqual(loaded.expiryInterval, expected.expiryInterval)
        self.assertEqual(loaded.disconnectedAt, expected.disconnectedAt)
        self.assertEqual([outbound_tuple(o) for o in loaded.outbound],
                         [outbound_tuple(o) for o in sorted(expected.outbound,
                                                            key=lambda o: o.seq)])
        self.assertEqual(set(loaded.inboundQoS2), set(expected.inboundQoS2))
        self.assertEqual(loaded.owner, expected.owner)
        return loaded

    @inlineCallbacks
    def test_unknown_session_is_none(self) -> Any:
        """loadSession of a client id never saved fires with None."""
        self.assertIsNone((yield self.store.loadSession("nobody")))
        self.assertEqual((yield self.store.listSessions()), [])

    @inlineCallbacks
    def test_session_round_trip(self) -> Any:
        """Every field of a saved session comes back from loadSession as it was saved."""
        will = message("will/ü", b"\x00gone\xff", 2, True, dict(ALL_PROPERTIES), 12.5, "c1")
        state = session(
            "c1",
            subscriptions={
                "a/+/c": SubscriptionOptions(1, True, True, 2, 42),
                "#": SubscriptionOptions(0),
                "$share/g/x/#": SubscriptionOptions(2, False, False, 1, None),
            },
            will=will, willDelay=30, expiryInterval=None, disconnectedAt=1_700_000_000.25,
            outbound=[
                outbound(1, 1, 7, msg=message("x", b"", 1, properties=dict(ALL_PROPERTIES),
                                              received_at=99.5, sender="pub")),
                outbound(2, 2, 8, AWAITING_PUBCOMP, subscription_ids=(3, 4)),
                outbound(3, 2, None, group="$share/g/x/#", retain=True),
                outbound(4, 0),
            ],
            inboundQoS2={1, 65535},
            owner="ünïcode user",
        )
        yield self.store.saveSession(state)
        yield self.assert_session(state)
        self.assertEqual((yield self.store.listSessions()), ["c1"])

    @inlineCallbacks
    def test_session_owner(self) -> Any:
        """The owner (the user a session belongs to) survives a save and load, None too,
        and a second save replaces it; a state saved by code that knows no owner (no
        ``owner`` attribute) loads with owner None."""
        yield self.store.saveSession(session("c1", owner="alice"))
        yield self.assert_session(session("c1", owner="alice"))
        yield self.store.saveSession(session("c1", owner=None))
        yield self.assert_session(session("c1", owner=None))
        old = session("c2")
        del old.owner
        yield self.store.saveSession(old)
        loaded = yield self.store.loadSession("c2")
        self.assertIsNone(loaded.owner)

    @inlineCallbacks
    def test_session_number_fields(self) -> Any:
        """Expiry 0, whole and fractional numbers, and None survive a save and load."""
        for n, (expiry, delay, at) in enumerate([(0, 0, None), (3600, 5, 10.0),
                                                 (0.5, 2.25, 0.0), (None, 0, 1e10)]):
            state = session(f"n{n}", expiryInterval=expiry, willDelay=delay,
                            disconnectedAt=at)
            yield self.store.saveSession(state)
            loaded = yield self.assert_session(state)
            self.assertIs(type(loaded.expiryInterval), type(expiry))

    @inlineCallbacks
    def test_save_replaces_the_whole_session(self) -> Any:
        """A second saveSession replaces subscriptions, will, outbound and QoS 2 ids."""
        yield self.store.saveSession(session(
            "c1", subscriptions={"a": SubscriptionOptions(1)}, will=message("w"),
            outbound=[outbound(1), outbound(2)], inboundQoS2={5}, expiryInterval=60))
        yield self.store.addSubscription("c1", "b", SubscriptionOptions(2))
        yield self.store.storeOutbound("c1", outbound(3))
        second = session("c1", subscriptions={"c": SubscriptionOptions(0)},
                         outbound=[outbound(9)], expiryInterval=10)
        yield self.store.saveSession(second)
        yield self.assert_session(second)

    @inlineCallbacks
    def test_saved_state_is_a_copy(self) -> Any:
        """What the store returns is what was saved, whatever happens to the objects after."""
        out = outbound(1, 1, None)
        state = session("c1", subscriptions={"a": SubscriptionOptions(1)}, outbound=[out],
                        inboundQoS2={3})
        yield self.store.saveSession(state)
        state.subscriptions["b"] = SubscriptionOptions(0)
        state.outbound.append(outbound(2))
        state.inboundQoS2.add(4)
        out.packet_id, out.state = 9, AWAITING_PUBCOMP
        loaded = yield self.store.loadSession("c1")
        self.assertEqual(list(loaded.subscriptions), ["a"])
        self.assertEqual([(o.seq, o.packet_id, o.state) for o in loaded.outbound],
                         [(1, None, AWAITING_ACK)])
        self.assertEqual(loaded.inboundQoS2, {3})
        loaded.subscriptions.clear()
        loaded.outbound[0].packet_id = 5
        again = yield self.store.loadSession("c1")
        self.assertEqual(list(again.subscriptions), ["a"])
        self.assertIsNone(again.outbound[0].packet_id)

    @inlineCallbacks
    def test_delete_session(self) -> Any:
        """deleteSession forgets the session and everything held for it."""
        yield self.store.saveSession(session("c1", subscriptions={"a": SubscriptionOptions(1)},
                                             outbound=[outbound(1)], inboundQoS2={2}))
        yield self.store.saveSession(session("c2"))
        yield self.store.deleteSession("c1")
        self.assertIsNone((yield self.store.loadSession("c1")))
        self.assertEqual((yield self.store.listSessions()), ["c2"])
        yield self.store.deleteSession("never-saved")  # no error
        yield self.store.saveSession(session("c1"))
        yield self.assert_session(session("c1"))  # nothing of the old one comes back

    @inlineCallbacks
    def test_list_sessions(self) -> Any:
        """listSessions names every stored session, whatever characters its id holds."""
        ids = ["c1", "ü-client", "with space", "brace{x}y", "a:b/c", ""]
        for client_id in ids:
            yield self.store.saveSession(session(client_id))
        self.assertEqual(sorted((yield self.store.listSessions())), sorted(ids))
        for client_id in ids:
            yield self.assert_session(session(client_id))

    @inlineCallbacks
    def test_add_and_remove_subscription(self) -> Any:
        """addSubscription adds or replaces one filter's options; removeSubscription drops it."""
        yield self.store.saveSession(session("c1", subscriptions={"a": SubscriptionOptions(0)}))
        yield self.store.addSubscription("c1", "b/#", SubscriptionOptions(2, True, True, 1, 9))
        yield self.store.addSubscription("c1", "a", SubscriptionOptions(1))
        loaded = yield self.store.loadSession("c1")
        self.assertEqual(loaded.subscriptions, {
            "a": SubscriptionOptions(1), "b/#": SubscriptionOptions(2, True, True, 1, 9)})
        yield self.store.removeSubscription("c1", "a")
        yield self.store.removeSubscription("c1", "not-there")
        loaded = yield self.store.loadSession("c1")
        self.assertEqual(loaded.subscriptions, {"b/#": SubscriptionOptions(2, True, True, 1, 9)})

    @inlineCallbacks
    def test_add_subscriptions_at_once(self) -> Any:
        """addSubscriptions (optional: one SUBSCRIBE's filters in one write) adds or
        replaces each filter's options as addSubscription would, 2,500 at once too; a
        session it does not hold gets nothing."""
        add_all = getattr(self.store, "addSubscriptions", None)
        if add_all is None:
            raise SkipTest("this store has no addSubscriptions (optional)")
        yield self.store.saveSession(session("c1", subscriptions={"a": SubscriptionOptions(0)}))
        shared = SubscriptionOptions(1, True, False, 2, 7)
        many = {f"m/{i}": shared for i in range(2500)}
        yield add_all("c1", {"a": SubscriptionOptions(2), "b/#": shared})
        yield add_all("c1", many)
        yield add_all("ghost", {"x": shared})
        loaded = yield self.store.loadSession("c1")
        self.assertEqual(loaded.subscriptions, {"a": SubscriptionOptions(2), "b/#": shared,
                                                **many})
        self.assertIsNone((yield self.store.loadSession("ghost")))

    @inlineCallbacks
    def test_writes_to_unknown_session_are_ignored(self) -> Any:
        """Per-session writes for a client with no stored session create nothing."""
        yield self.store.addSubscription("ghost", "a", SubscriptionOptions(1))
        yield self.store.storeOutbound("ghost", outbound(1))
        yield self.store.addInboundQoS2("ghost", 4)
        yield self.store.removeSubscription("ghost", "a")
        yield self.store.removeOutbound("ghost", 1)
        yield self.store.removeInboundQoS2("ghost", 4)
        self.assertIsNone((yield self.store.loadSession("ghost")))
        self.assertEqual((yield self.store.listSessions()), [])
        yield self.store.saveSession(session("ghost"))
        yield self.assert_session(session("ghost"))

    @inlineCallbacks
    def test_writes_after_delete_do_not_resurrect(self) -> Any:
        """A write arriving after deleteSession does not bring the session back."""
        yield self.store.saveSession(session("c1"))
        yield self.store.deleteSession("c1")
        yield self.store.storeOutbound("c1", outbound(1))
        yield self.store.addSubscription("c1", "a", SubscriptionOptions(1))
        self.assertIsNone((yield self.store.loadSession("c1")))

    @inlineCallbacks
    def test_store_outbound_upserts_by_seq(self) -> Any:
        """storeOutbound upserts by seq (queued, in flight, AWAITING_PUBCOMP), loaded in seq order."""
        yield self.store.saveSession(session("c1", outbound=[outbound(1)]))
        yield self.store.storeOutbound("c1", outbound(3, 2))
        yield self.store.storeOutbound("c1", outbound(2, 1))
        yield self.store.storeOutbound("c1", outbound(3, 2, packet_id=11))
        yield self.store.storeOutbound("c1", outbound(3, 2, 11, AWAITING_PUBCOMP))
        loaded = yield self.store.loadSession("c1")
        self.assertEqual([(o.seq, o.packet_id, o.state) for o in loaded.outbound],
                         [(1, None, AWAITING_ACK), (2, None, AWAITING_ACK),
                          (3, 11, AWAITING_PUBCOMP)])

    @inlineCallbacks
    def test_remove_outbound(self) -> Any:
        """removeOutbound forgets one record by seq, also the last one held."""
        yield self.store.saveSession(session("c1", outbound=[outbound(1), outbound(2)]))
        yield self.store.removeOutbound("c1", 1)
        yield self.store.removeOutbound("c1", 99)
        loaded = yield self.store.loadSession("c1")
        self.assertEqual([o.seq for o in loaded.outbound], [2])
        yield self.store.removeOutbound("c1", 2)
        loaded = yield self.store.loadSession("c1")
        self.assertEqual(loaded.outbound, [])

    @inlineCallbacks
    def test_outbound_writes_in_one_burst(self) -> Any:
        """Many outbound writes issued at once, without waiting, apply in the order made."""
        yield self.store.saveSession(session("c1"))
        yield self.store.saveSession(session("c2"))
        writes = []
        for seq in range(1, 201):
            for client_id in ("c1", "c2"):
                writes.append(self.store.storeOutbound(client_id, outbound(seq)))
                writes.append(self.store.storeOutbound(client_id, outbound(seq, packet_id=seq)))
                if seq % 2:
                    writes.append(self.store.removeOutbound(client_id, seq))
        yield gatherResults(writes)
        for client_id in ("c1", "c2"):
            loaded = yield self.store.loadSession(client_id)
            self.assertEqual([(o.seq, o.packet_id) for o in loaded.outbound],
                             [(seq, seq) for seq in range(2, 201, 2)])

    @inlineCallbacks
    def test_inbound_qos2(self) -> Any:
        """addInboundQoS2/removeInboundQoS2 keep the set of unreleased packet ids."""
        yield self.store.saveSession(session("c1"))
        for pid in (1, 2, 65535):
            yield self.store.addInboundQoS2("c1", pid)
        yield self.store.addInboundQoS2("c1", 2)
        yield self.store.removeInboundQoS2("c1", 1)
        yield self.store.removeInboundQoS2("c1", 7)
        loaded = yield self.store.loadSession("c1")
        self.assertEqual(loaded.inboundQoS2, {2, 65535})


class RetainedContract(StoreFixture):
    """Retained messages: one per topic, copies, and matching on every filter shape."""

    @inlineCallbacks
    def test_retained_set_get_replace_delete(self) -> Any:
        """setRetained keeps one message per topic; getRetained/deleteRetained/countRetained."""
        self.assertIsNone((yield self.store.getRetained("a")))
        self.assertEqual((yield self.store.countRetained()), 0)
        first = message("a", b"1", 1, True, dict(ALL_PROPERTIES), 5.5, "pub")
        yield self.store.setRetained(first)
        got = yield self.store.getRetained("a")
        self.assertEqual(message_tuple(got), message_tuple(first))
        yield self.store.setRetained(message("a", b"2", 0, True))
        yield self.store.setRetained(message("b", b"3", 2, True))
        self.assertEqual((yield self.store.getRetained("a")).payload, b"2")
        self.assertEqual((yield self.store.countRetained()), 2)
        yield self.store.deleteRetained("a")
        yield self.store.deleteRetained("never")
        self.assertIsNone((yield self.store.getRetained("a")))
        self.assertEqual((yield self.store.countRetained()), 1)

    @inlineCallbacks
    def test_may_have_retained(self) -> Any:
        """mayHaveRetained (optional) says False only when no retained message matches
        the filter: the broker then skips the search at SUBSCRIBE."""
        may = getattr(self.store, "mayHaveRetained", None)
        if may is None:
            raise SkipTest("this store has no mayHaveRetained (optional)")
        filters = ("#", "a/+", "a/b", "+/+", "x")
        for f in filters:
            if not may(f):
                self.assertEqual((yield self.store.matchRetained(f)), [], f)
        yield self.store.setRetained(message("a/b", b"x", 0, True))
        for f in filters:
            if (yield self.store.matchRetained(f)):
                self.assertTrue(may(f), f)
        yield self.store.deleteRetained("a/b")
        for f in filters:
            if not may(f):
                self.assertEqual((yield self.store.matchRetained(f)), [], f)

    @inlineCallbacks
    def test_empty_payload_deletes_retained(self) -> Any:
        """A retained message with an empty payload removes the topic's one [MQTT-3.3.1-10]."""
        yield self.store.setRetained(message("a/b", b"x", 1, True))
        yield self.store.setRetained(message("a/b", b"", 1, True))
        self.assertIsNone((yield self.store.getRetained("a/b")))
        self.assertEqual((yield self.store.matchRetained("#")), [])
        self.assertEqual((yield self.store.countRetained()), 0)

    @inlineCallbacks
    def test_retained_is_a_copy(self) -> Any:
        """Changing a message after setRetained does not change the retained one."""
        m = message("a", b"x", 1, True, {_P.CONTENT_TYPE: "a"})
        yield self.store.setRetained(m)
        m.properties[_P.CONTENT_TYPE] = "b"
        m.payload = b"changed"
        got = yield self.store.getRetained("a")
        self.assertEqual((got.payload, got.properties), (b"x", {_P.CONTENT_TYPE: "a"}))

    @inlineCallbacks
    def test_match_retained(self) -> Any:
        """matchRetained finds exactly the retained topics a filter matches [MQTT-4.7]."""
        topics = ["a", "a/b", "a/b/c", "a/c", "a//b", "/a", "/", "b/b", "$SYS/x", "$SYS",
                  "ü/ß", "a/b/c/d/e"]
        for topic in topics:
            yield self.store.setRetained(message(topic, topic.encode(), 1, True))
        filters = ["#", "+", "a", "a/#", "a/+", "+/b", "+/+", "a/+/c", "/+", "+/#", "$SYS/#",
                   "$SYS", "+/x", "a/b/#", "a/b/c/#", "nothing/#", "a//+", "/", "/#", "ü/+",
                   "a/+/+/+/+", "a/b/+"]
        for topic_filter in filters:
            found = yield self.store.matchRetained(topic_filter)
            expected = sorted(t for t in topics if topic_matches(topic_filter, t))
            self.assertEqual(sorted(m.topic for m in found), expected, topic_filter)
            for m in found:
                self.assertEqual(m.payload, m.topic.encode())

    @inlineCallbacks
    def test_match_after_deletes(self) -> Any:
        """Deleting retained messages leaves the index matching exactly what remains."""
        topics = ["a/b/c", "a/b", "a/x/c", "a", "b"]
        for topic in topics:
            yield self.store.setRetained(message(topic, b"x", 1, True))
        for gone in ("a/b", "a/b/c", "b"):
            yield self.store.deleteRetained(gone)
            topics.remove(gone)
            for topic_filter in ("#", "a/#", "a/+/c", "+", "a/b/#", "a/+"):
                found = yield self.store.matchRetained(topic_filter)
                self.assertEqual(sorted(m.topic for m in found),
                                 sorted(t for t in topics if topic_matches(topic_filter, t)))
        yield self.store.setRetained(message("a/b/c", b"again", 1, True))
        found = yield self.store.matchRetained("a/+/c")
        self.assertEqual(sorted(m.topic for m in found), ["a/b/c", "a/x/c"])

    @inlineCallbacks
    def test_match_retained_many(self) -> Any:
        """A few thousand retained topics: every filter shape still matches exactly."""
        topics = [f"s/{a}/{b}/{c}" for a, b, c in itertools.product(range(10), range(10),
                                                                     range(20))]
        for topic in topics:
            self.store.setRetained(message(topic, b"v", 0, True))
        self.assertEqual((yield self.store.countRetained()), len(topics))
        for topic_filter, count in (("s/3/+/7", 10), ("s/+/+/19", 100), ("s/1/#", 200),
                                    ("#", 2000), ("s/9/9/9", 1), ("s/+/x/+", 0)):
            found = yield self.store.matchRetained(topic_filter)
            self.assertEqual(len(found), count, topic_filter)


class LockContract(StoreFixture):
    """Client locks: exclusion, waiters served in order, timeouts, one lock per client id."""

    @inlineCallbacks
    def test_lock_excludes(self) -> Any:
        """A second acquireLock for a client id fires only once the first is released."""
        first = yield self.store.acquireLock("c1", 5)
        self.assertTrue(verifyObject(ILock, first))
        second = self.store.acquireLock("c1", 5)
        yield deferLater(self.reactor, 0.05, lambda: None)
        self.assertFalse(second.called)
        yield first.release()
        lock = yield second
        yield lock.release()

    @inlineCallbacks
    def test_lock_waiters_in_order(self) -> Any:
        """Waiters for one client's lock get it in the order they asked."""
        held = yield self.store.acquireLock("c1", 5)
        order: list[int] = []
        waiters = []
        for n in range(3):
            d = self.store.acquireLock("c1", 5)

            def got(lock: Any, n: int = n) -> Deferred[None]:
                order.append(n)
                return lock.release()

            waiters.append(d.addCallback(got))
        yield held.release()
        for d in waiters:
            yield d
        self.assertEqual(order, [0, 1, 2])

    @inlineCallbacks
    def test_lock_times_out(self) -> Any:
        """acquireLock fails with StorageError when the lock stays held past the timeout."""
        held = yield self.store.acquireLock("c1", 5)
        started = self.reactor.seconds()
        with self.assertRaises(StorageError):
            yield self.store.acquireLock("c1", 0.2)
        self.assertGreaterEqual(self.reactor.seconds() - started, 0.15)
        yield held.release()
        lock = yield self.store.acquireLock("c1", 1)  # the timed-out waiter left no trace
        yield lock.release()

    @inlineCallbacks
    def test_locks_are_per_client(self) -> Any:
        """Locks of different client ids do not wait for each other."""
        a = yield self.store.acquireLock("a", 1)
        b = yield self.store.acquireLock("b", 1)
        yield a.release()
        yield b.release()


class StoreContract(SessionContract, RetainedContract, LockContract):
    """The whole store contract: what every IStore does.

    A subclass provides ``make_store`` (may return a Deferred).  The parts can also be
    mixed in on their own, e.g. ``LockContract`` for a lock service.
    """
