"""The Redis store's batches of outbound-record writes (``store/_redisbatch.py``), against
a real redis-server: a turn's writes on one connection are one script call sharing one
write, in order with the connection's other commands; a queued record going in flight
with its derived packet id leaves a ``sent`` mark that loading turns back into that
packet id; a failed batch fails every write of it and counts once in the journal.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import gatherResults, inlineCallbacks
from zope.interface.verify import verifyObject

from mqtt_twisted.core.journal import Journal
from mqtt_twisted.core.stats import BrokerStats
from mqtt_twisted.errors import StorageError
from mqtt_twisted.interfaces import IBatchedOutboundStore
from mqtt_twisted.records import packet_id_for
from mqtt_twisted.store.overlay import SysRetainedOverlay
from mqtt_twisted.testing.store_contract import outbound, session
from tests.test_store_redis import RedisTestCase


def _settled(write: Any) -> list[Any]:
    """What a shared write fired with, as a one-item list once it has (empty until)."""
    got: list[Any] = []
    write.addBoth(got.append)
    return got


class BatchTests(RedisTestCase):

    @inlineCallbacks
    def test_provides_the_batched_interface(self) -> Any:
        """The store, and the $SYS overlay over it, provide IBatchedOutboundStore."""
        store = yield self.store()
        self.assertTrue(verifyObject(IBatchedOutboundStore, store))
        self.assertTrue(verifyObject(IBatchedOutboundStore, SysRetainedOverlay(store)))

    @inlineCallbacks
    def test_a_turns_writes_are_one_command_sharing_one_write(self) -> Any:
        """Records put and removed for two clients in one turn: one call on the link,
        one shared write for all of them, and Redis has the result of each."""
        store = yield self.store(pool=1)
        yield store.saveSession(session("c1", expiryInterval=60))
        yield store.saveSession(session("c2", expiryInterval=60))
        link = store._links[0]
        writes = [store.putOutbound("c1", outbound(1)), store.putOutbound("c1", outbound(2)),
                  store.putOutbound("c2", outbound(5)), store.dropOutbound("c1", 1)]
        self.assertEqual(len(link.sent) + len(link.waiting), 1)
        self.assertEqual({id(w) for w in writes}, {id(writes[0])})
        got = _settled(writes[0])
        yield store.loadSession("c1")  # answered after the batch: it has been applied
        self.assertEqual(got, [1])
        c1, c2 = yield gatherResults([store.loadSession("c1"), store.loadSession("c2")])
        self.assertEqual(([o.seq for o in c1.outbound], [o.seq for o in c2.outbound]),
                         ([2], [5]))

    @inlineCallbacks
    def test_other_commands_keep_their_place(self) -> Any:
        """A record put, then a whole save without it, then a record put, in one turn:
        the save closes the first batch, so the second record is kept and the first
        is not."""
        store = yield self.store(pool=1)
        yield store.saveSession(session("c1", expiryInterval=60))
        store.putOutbound("c1", outbound(1))
        save = store.saveSession(session("c1", expiryInterval=60))
        store.putOutbound("c1", outbound(2))
        yield save
        got = yield store.loadSession("c1")
        self.assertEqual([o.seq for o in got.outbound], [2])

    @inlineCallbacks
    def test_sent_mark_gives_back_packet_ids(self) -> Any:
        """Records queued then sent with their derived packet ids come back in flight
        with those ids; one sent with another id is stored with it; the one never
        sent comes back queued; new sequence numbers go on above the mark."""
        store = yield self.store()
        yield store.saveSession(session("c1", expiryInterval=60))
        for seq in (1, 2, 3, 4):
            store.putOutbound("c1", outbound(seq))
        yield store.storeOutbound("c1", outbound(5))
        store.sentOutbound("c1", outbound(1, packet_id=packet_id_for(1)))
        store.sentOutbound("c1", outbound(2, packet_id=77))  # that id was in flight
        yield store.removeOutbound("c1", 4)
        write = store.sentOutbound("c1", outbound(3, packet_id=packet_id_for(3)))
        got = _settled(write)
        state = yield store.loadSession("c1")
        self.assertEqual(got, [1])
        self.assertEqual([(o.seq, o.packet_id) for o in state.outbound],
                         [(1, 1), (2, 77), (3, 3), (5, None)])
        self.assertEqual(state.nextSeq, 4)

    @inlineCallbacks
    def test_whole_save_drops_the_mark(self) -> Any:
        """A whole save writes every packet id itself: the mark goes, and a record queued
        after it with a lower sequence number stays queued."""
        store = yield self.store()
        yield store.saveSession(session("c1", expiryInterval=60))
        store.putOutbound("c1", outbound(9))
        store.sentOutbound("c1", outbound(9, packet_id=9))
        yield store.saveSession(session("c1", expiryInterval=60, outbound=[]))
        yield store.storeOutbound("c1", outbound(2))
        state = yield store.loadSession("c1")
        self.assertEqual([(o.seq, o.packet_id) for o in state.outbound], [(2, None)])
        self.assertEqual(state.nextSeq, 0)

    @inlineCallbacks
    def test_marked_records_carry_the_entry_and_index(self) -> Any:
        """While a cluster node delivers a stream entry (``mark``, ``mark_index``), a
        record written carries the entry's id, ``ID.INDEX`` past its first message,
        in the session's hash under the mark's field (what a drain reads)."""
        store = yield self.store()
        yield store.saveSession(session("c1", expiryInterval=60))
        key = store._keys.key(b"session", b"c1")
        store.mark, store.mark_index = (b"m:s", b"5-0"), 0
        yield store.storeOutbound("c1", outbound(1))
        first = yield self.raw("HGET", key, b"m:s")
        store.mark_index = 2
        yield store.storeOutbound("c1", outbound(2))
        third = yield self.raw("HGET", key, b"m:s")
        store.mark = None
        self.assertEqual((first, third), (b"5-0", b"5-0.2"))
        state = yield store.loadSession("c1")
        self.assertEqual([o.seq for o in state.outbound], [1, 2])

    @inlineCallbacks
    def test_writes_to_a_session_not_stored_are_ignored(self) -> Any:
        """A batch's part for a client without a stored session writes nothing, the
        other clients' parts apply."""
        store = yield self.store(pool=1)
        yield store.saveSession(session("c1", expiryInterval=60))
        store.putOutbound("ghost", outbound(1))
        store.sentOutbound("ghost", outbound(1, packet_id=1))
        yield store.storeOutbound("c1", outbound(1))
        self.assertIsNone((yield store.loadSession("ghost")))
        self.assertEqual((yield self.raw("EXISTS", b"mqtt:out:{ghost}")), 0)
        self.assertEqual([o.seq for o in (yield store.loadSession("c1")).outbound], [1])

    @inlineCallbacks
    def test_failed_batch_fails_every_write_and_counts_once(self) -> Any:
        """Redis refuses the batch (its script is gone): each waiter gets the failure,
        and the journal, given each fire-and-forget write, counts and logs it once."""
        store = yield self.store(pool=1)
        yield store.saveSession(session("c1", expiryInterval=60))
        yield self.raw("SCRIPT", "FLUSH")
        stats = BrokerStats()
        journal = Journal(store, stats)
        first = store.putOutbound("c1", outbound(1))
        got = _settled(first)
        journal.persist(first)
        journal.persist(store.dropOutbound("c1", 1))
        stored = store.storeOutbound("c1", outbound(2))
        with self.assertRaises(StorageError) as e:
            yield stored
        self.assertIn("NOSCRIPT", str(e.exception))
        self.assertEqual(len(got), 1)
        self.assertTrue(got[0].check(StorageError))
        self.assertEqual((stats.store_errors, journal.failures), (1, 1))
        self.flushLoggedErrors(StorageError)
