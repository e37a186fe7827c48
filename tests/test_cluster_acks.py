"""A publisher's acknowledgements for messages that cross nodes: the messages of one
stream entry share one write (``core/journal.py``'s ``SharedWrite``), and the PUBACKs of
a publisher's messages in it wait together (``inbound.ack_after``), in order, failing
together.  Sans-IO: a sans-IO broker with FakeClients, the cluster router, the outbox
on a fake clock and a recording Redis."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.cluster.batch import Outbox
from mqtt_twisted.cluster.router import ClusterRouter
from mqtt_twisted.cluster.routes import ADD
from mqtt_twisted.codec.packets import PubAck, PubRec
from mqtt_twisted.core.journal import SharedWrite
from mqtt_twisted.core.stats import LATENCY_SAMPLE
from mqtt_twisted.errors import StorageError
from mqtt_twisted.testing import FakeClient, make_broker


class SharedWriteTests(SynchronousTestCase):
    """Every waiter gets the write's own result: a fan-out, not a Deferred's chain."""

    def test_each_waiter_sees_the_failure(self) -> None:
        """One waiter handling a failure does not turn it into a success for the next
        (a Deferred's errback would), whichever method it waited with."""
        write = SharedWrite()
        seen: list[Any] = []
        write.addBoth(lambda r: seen.append(("both", r)))
        write.addErrback(lambda f: seen.append(("errback", f)))
        write.addCallback(lambda r: seen.append(("callback", r)))
        write.addCallbacks(lambda r, x: seen.append(("ok", x)),
                           lambda f, x: seen.append(("failed", x)),
                           callbackArgs=(1,), errbackArgs=(2,))
        failure = Failure(StorageError("refused"))
        write.fire(failure)
        self.assertEqual(seen, [("both", failure), ("errback", failure), ("failed", 2)])
        late: list[Any] = []
        write.addErrback(late.append)  # after it fired: at once
        self.assertEqual(late, [failure])

    def test_success_and_a_gathered_write(self) -> None:
        """A success goes to every callback, not to errbacks; ``gatherResults`` (the
        inbox's XACK, the gateway's publish) waits on it as on a Deferred."""
        write = SharedWrite()
        got: list[Any] = []
        write.addErrback(got.append)
        write.addCallback(got.append)
        other: Deferred[Any] = Deferred()
        gathered: list[Any] = []
        gatherResults([write, other], consumeErrors=True).addCallback(gathered.append)  # type: ignore[list-item]
        write.fire(b"1-0")
        write.fire(b"ignored")  # fired once only
        self.assertEqual((got, gathered), ([b"1-0"], []))
        other.callback(b"2-0")
        self.assertEqual(gathered, [[b"1-0", b"2-0"]])

    def test_a_waiter_that_raises_does_not_stop_the_others(self) -> None:
        write = SharedWrite()
        got: list[Any] = []
        write.addBoth(lambda r: 1 / 0)
        write.addBoth(got.append)
        write.fire(b"1-0")
        self.assertEqual(got, [b"1-0"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class Redis:
    """Stands for the link's Redis side: each XADD's reply waits until fired."""

    def __init__(self) -> None:
        self.added: list[tuple[str, Deferred[Any]]] = []

    def add(self, to: str, *fields: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.added.append((to, d))
        return d


class GroupedAckTests(SynchronousTestCase):
    """The PUBACKs of a publisher's messages in one stream entry, the router given the
    journal (as a node gives it: ``Journal.persist``'s usual case done inline)."""

    #: Whether the router is given the journal, or only its ``persist``.
    inline = True

    def setUp(self) -> None:
        self.broker, self.broker_clock = make_broker()
        self.clock = Clock()
        self.redis = Redis()
        self.outbox = Outbox(self.clock, "A", self.redis.add, lambda to, data: None)
        link = SimpleNamespace(append=self.outbox.append, publish=self.outbox.publish,
                               register=lambda f: None, unregister=lambda f: None)
        journal = self.broker.journal
        # (The router takes the journal from a bound Journal.persist: a function that
        # calls it hides it.)
        router = ClusterRouter(self.broker.router, "A", link,
                               journal.persist if self.inline else lambda w: journal.persist(w))
        self.assertIs(router.journal, journal if self.inline else None)
        router.routes.apply(ADD, "B", "b/#")
        router.routes.apply(ADD, "C", "c/#")
        self.broker.router = router

    def test_acks_of_one_entry_wait_as_one_in_order(self) -> None:
        """Three QoS 1 messages to node B and one nobody subscribed to, in one turn: no
        PUBACK before B's entry is in Redis, then all four in the order published, with
        one callback on the entry's write for the lot; the receive maximum's count is
        back to zero."""
        pub = FakeClient(self.broker, version=5)
        pub.connect("pub")
        for i in range(3):
            self.assertEqual(pub.publish("b/t", b"%d" % i, qos=1), [])
        self.assertEqual(pub.publish("nobody", b"3", qos=1), [])  # behind the others
        self.clock.advance(0)  # the end of the turn: one entry for B
        [(to, reply)] = self.redis.added
        self.assertEqual(to, "B")
        conn = pub.connection
        self.assertEqual(len(conn._acks), 1)  # the fourth waits for its turn only: joined
        self.assertEqual(conn._unacked_qos1, 4)
        reply.callback(b"1-0")
        acks = pub.received()
        self.assertEqual([(type(a), a.packet_id, a.reason_code) for a in acks],
                         [(PubAck, 1, 0), (PubAck, 2, 0), (PubAck, 3, 0), (PubAck, 4, 0x10)])
        self.assertEqual((conn._unacked_qos1, len(conn._acks)), (0, 0))

    def test_one_callback_per_publisher_per_entry(self) -> None:
        """Two publishers' messages in one entry: the entry's write has one waiter per
        publisher, not one per message; each publisher gets its own PUBACKs."""
        pubs = [FakeClient(self.broker), FakeClient(self.broker)]
        for n, pub in enumerate(pubs):
            pub.connect(f"pub{n}")
        for i in range(6):
            pubs[i % 2].publish("b/t", b"%d" % i, qos=1)
        writes = {id(entry[4]) for pub in pubs for entry in pub.connection._acks}
        self.assertEqual(len(writes), 1)
        [write] = {entry[4] for entry in pubs[0].connection._acks}
        self.assertEqual(len(write._waiters), 2)
        self.clock.advance(0)
        self.redis.added[0][1].callback(b"1-0")
        for pub in pubs:
            self.assertEqual([type(a) for a in pub.received()], [PubAck] * 3)

    def test_local_messages_between_them_keep_them_together(self) -> None:
        """A publisher spreading its messages over a peer's topic and one subscribed
        here (the spread benchmark): those that stay here wait only for their turn and
        join the entry before them, so the entry's write still has one waiter and the
        PUBACKs go in publishing order once it is stored."""
        sub = FakeClient(self.broker)
        sub.connect("sub")
        sub.subscribe("here", qos=1)
        pub = FakeClient(self.broker)
        pub.connect("pub")
        acks = []
        for i in range(6):
            acks += pub.publish("b/t" if i % 2 else "here", b"%d" % i, qos=1)
        self.assertEqual([(type(a), a.packet_id) for a in acks], [(PubAck, 1)])
        conn = pub.connection
        self.assertEqual(len(conn._acks), 1)
        self.assertEqual(len(conn._acks[0][4]._waiters), 1)
        self.clock.advance(0)
        self.redis.added[0][1].callback(b"1-0")
        self.assertEqual([(type(a), a.packet_id) for a in pub.received()],
                         [(PubAck, i) for i in range(2, 7)])

    def transacted(self) -> list[tuple[list[Any], Deferred[Any]]]:
        """The outbox with transactions (the node's link has them): each flush's
        entries and the Deferred of its EXEC reply."""
        flushes: list[tuple[list[Any], Deferred[Any]]] = []

        def transaction(adds: list[Any]) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            flushes.append((adds, d))
            return d

        self.outbox._transaction = transaction
        return flushes

    def test_spread_over_two_peers_waits_as_one(self) -> None:
        """A publisher spreading its messages over a topic here and one on each of two
        peers (the three-node spread benchmark): the turn's entries go in one
        transaction and share one write, so its PUBACKs are one ack entry with one
        waiter (they were one per message, alternating between the two entries'
        writes), all sent in order once EXEC's reply says both entries are in."""
        flushes = self.transacted()
        sub = FakeClient(self.broker)
        sub.connect("sub")
        sub.subscribe("here", qos=1)
        pub = FakeClient(self.broker)
        pub.connect("pub")
        acks = []
        for i in range(9):
            acks += pub.publish(("here", "b/t", "c/t")[i % 3], b"%d" % i, qos=1)
        self.assertEqual([(type(a), a.packet_id) for a in acks], [(PubAck, 1)])
        conn = pub.connection
        self.assertEqual(len(conn._acks), 1)
        self.assertEqual(len(conn._acks[0][4]._waiters), 1)
        self.clock.advance(0)
        [(adds, reply)] = flushes
        self.assertEqual([to for to, _ in adds], ["B", "C"])
        self.assertEqual(self.redis.added, [])
        reply.callback([b"1-0", b"1-1"])
        self.assertEqual([(type(a), a.packet_id) for a in pub.received()],
                         [(PubAck, i) for i in range(2, 10)])

    def test_a_failed_entry_of_a_transaction_acknowledges_none(self) -> None:
        """One entry of a flush's transaction refused (EXEC's reply holds an error):
        no message of the flush is acknowledged, the other entry's neither (at least
        once: the publisher resends them after reconnecting)."""
        flushes = self.transacted()
        pub = FakeClient(self.broker, version=5)
        pub.connect("pub")
        pub.publish("b/t", b"1", qos=1)
        pub.publish("c/t", b"2", qos=1)
        self.clock.advance(0)
        [(_, reply)] = flushes
        from mqtt_twisted.cluster.resp import ReplyError

        reply.callback([b"1-0", ReplyError("WRONGTYPE not a stream")])
        self.assertNotIn(PubAck, [type(p) for p in pub.received()])
        self.assertTrue(pub.transport.closed)
        self.flushLoggedErrors(StorageError)

    def test_a_message_to_two_nodes_waits_for_both(self) -> None:
        """A message routed to B and C (two entries) is acknowledged once both are in
        Redis; a message to B after it waits behind it."""
        self.broker.router.routes.apply(ADD, "C", "b/#")
        pub = FakeClient(self.broker)
        pub.connect("pub")
        pub.publish("b/t", b"1", qos=1)
        pub.publish("c/x", b"2", qos=1)
        self.clock.advance(0)
        replies = dict(self.redis.added)
        replies["C"].callback(b"1-0")
        self.assertEqual(pub.received(), [])
        replies["B"].callback(b"1-1")
        self.assertEqual([(type(a), a.packet_id) for a in pub.received()],
                         [(PubAck, 1), (PubAck, 2)])

    def test_a_failed_entry_acknowledges_none_and_closes(self) -> None:
        """Redis refusing the entry: none of its messages is acknowledged, nor any
        after them; the publisher is disconnected and resends after reconnecting."""
        pub = FakeClient(self.broker, version=5)
        pub.connect("pub")
        pub.publish("b/t", b"1", qos=1)
        pub.publish("b/t", b"2", qos=2)
        pub.publish("b/t", b"3", qos=1)
        self.clock.advance(0)
        self.redis.added[0][1].errback(StorageError("refused"))
        received = pub.received()
        self.assertNotIn(PubAck, [type(p) for p in received])
        self.assertNotIn(PubRec, [type(p) for p in received])
        self.assertTrue(pub.transport.closed)
        self.flushLoggedErrors(StorageError)


    def test_every_crossing_write_counted_and_one_in_sample_timed(self) -> None:
        """Each crossing message counts as a store write, and the one write in
        LATENCY_SAMPLE is timed into the store latency histogram when it lands."""
        stats = self.broker.stats
        stats.store_writes = 0
        pub = FakeClient(self.broker)
        pub.connect("pub")
        for i in range(LATENCY_SAMPLE):
            pub.publish("b/t", b"%d" % i, qos=1)
        self.assertEqual(stats.store_writes, LATENCY_SAMPLE)
        self.assertEqual(stats.store_latency.count, 0)
        self.clock.advance(0)
        self.broker_clock.advance(0.004)
        for _, reply in self.redis.added:
            reply.callback(b"1-0")
        self.assertEqual(stats.store_latency.count, 1)
        self.assertAlmostEqual(stats.store_latency.total, 0.004)
        self.assertEqual([type(a) for a in pub.received()], [PubAck] * LATENCY_SAMPLE)


class GroupedAckPersistOnlyTests(GroupedAckTests):
    """The same, the router given a function that calls ``persist`` (every write
    through it)."""

    inline = False


class InboxAckTests(SynchronousTestCase):
    """The receiving node's XACK: on the reader's connection, just before its next read,
    when nothing is to be stored first; sent again before the next read when its
    connection was lost."""

    def setUp(self) -> None:
        from mqtt_twisted.cluster.inbox import InboxReader
        from tests.test_cluster_batch import fake_node

        self.broker, self.clock = make_broker()
        self.node = fake_node(self.broker, self.clock)
        self.got: list[str] = []
        self.node.router = SimpleNamespace(
            plain_receiver=lambda: None, receive=lambda message, *rest: self.got.append(message.topic))
        self.reader = InboxReader(self.node)  # type: ignore[arg-type]
        self.reader.start()

    def entry(self, entry_id: bytes, topic: str) -> tuple[bytes, list[Any]]:
        from mqtt_twisted.message import Message
        from mqtt_twisted.store.redis import encode_message

        return (entry_id, [b"o", b"B", b"m", encode_message(Message(topic, b"p", 1)),
                           b"d", b"A"])

    def test_xack_goes_before_the_next_read_on_its_connection(self) -> None:
        read = self.node.reader
        read.replies[0].callback([[b"s:A", [self.entry(b"1-0", "a"), self.entry(b"1-1", "b")]]])
        self.assertEqual(self.got, ["a", "b"])
        self.assertEqual([c[0] for c in read.sent], [b"XREADGROUP", b"XACK", b"XREADGROUP"])
        self.assertEqual(read.sent[1], (b"XACK", b"s:A", b"A", b"1-0", b"1-1"))
        self.assertEqual(self.node.commands.sent, [])

    def test_a_lost_xack_is_sent_again_before_the_next_read(self) -> None:
        """The connection lost after the XACK was written: nobody knows whether Redis
        had it, so it goes again, ahead of the read that would return the entries
        again (which would deliver them twice)."""
        read = self.node.reader
        read.replies[0].callback([[b"s:A", [self.entry(b"1-0", "a")]]])
        lost = StorageError("Redis connection lost")
        read.replies[1].errback(lost)  # the XACK
        read.replies[2].errback(lost)  # the read
        self.clock.advance(0.5)  # the read again, from the first pending entry
        self.assertEqual([c[0] for c in read.sent[3:]], [b"XACK", b"XREADGROUP"])
        self.assertEqual(read.sent[3], (b"XACK", b"s:A", b"A", b"1-0"))
        self.assertEqual(read.sent[4][-1], b"0")
        read.replies[3].callback(1)
        read.replies[4].callback([[b"s:A", []]])
        self.assertEqual(self.got, ["a"])
        self.assertEqual([c[0] for c in read.sent[5:]], [b"XREADGROUP"])  # nothing again

    def test_stored_deliveries_are_acknowledged_once_stored(self) -> None:
        """A delivery that waits for a store write (a persistent session's copy) is
        acknowledged once it is stored, on the commands connection (the reader is
        blocked in its next read by then)."""
        write: Deferred[Any] = Deferred()
        self.node.router = SimpleNamespace(
            plain_receiver=lambda: None, receive=lambda message, *rest: self.broker.journal.persist(write))
        read = self.node.reader
        read.replies[0].callback([[b"s:A", [self.entry(b"1-0", "a")]]])
        self.assertEqual([c[0] for c in read.sent], [b"XREADGROUP", b"XREADGROUP"])
        self.assertEqual(self.node.commands.sent, [])
        write.callback(None)
        self.assertEqual(self.node.commands.sent, [(b"XACK", b"s:A", b"A", b"1-0")])


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))


def _conn(**fields: Any) -> Any:
    from collections import deque

    from mqtt_twisted.core.states import CONNECTED

    return SimpleNamespace(state=CONNECTED, max_send_size=0, transport=_Transport(),
                           _acks=deque(), _unacked_qos1=0, **fields)


class SendAcksTests(SynchronousTestCase):
    """``inbound.send_acks`` and ``flush_acks``' run of success PUBACKs, by the bytes
    written: as many as the ids, four bytes each, in order, in one write."""

    def test_any_number_of_acks_of_any_kind(self) -> None:
        import random
        import struct

        from mqtt_twisted.core.inbound import send_acks

        rng = random.Random(3)
        for first in (0x40, 0x50, 0x62, 0x70):
            for n in [*range(0, 20), 63, 64, 200]:
                ids = [rng.choice([1, 255, 256, 0x1234, 0xFFFF, rng.randrange(1, 65536)])
                       for _ in range(n)]
                conn = _conn()
                send_acks(conn, first, ids)
                self.assertEqual(conn.transport.writes,
                                 [b"".join(struct.pack(">BBH", first, 2, i) for i in ids)])

    def test_a_run_of_success_pubacks_is_one_write(self) -> None:
        from mqtt_twisted.core.inbound import flush_acks, qos1_acked

        conn = _conn()
        ids = list(range(1, 31))
        conn._acks.append([0, list(ids), False, [qos1_acked] * 30, None])
        conn._unacked_qos1 = 30
        flush_acks(conn)
        self.assertEqual(conn.transport.writes,
                         [b"".join(bytes((0x40, 2, 0, i)) for i in ids)])
        self.assertEqual((conn._unacked_qos1, len(conn._acks)), (0, 0))

    def test_a_run_with_another_ack_in_it_keeps_the_order(self) -> None:
        """An ack with a reason code (or another waiter) among them: each in its place,
        the success PUBACKs around it written as runs."""
        from mqtt_twisted.core.inbound import flush_acks, qos1_acked

        sent: list[Any] = []
        called: list[str] = []
        conn = _conn(send=sent.append)
        coded = PubAck(5, 0x10)
        other = PubAck(7)
        conn._acks.append([0, [1, 2, coded, other, 8], False,
                           [qos1_acked, qos1_acked, qos1_acked, lambda: called.append("x"),
                            qos1_acked], None])
        conn._unacked_qos1 = 4
        flush_acks(conn)
        self.assertEqual(conn.transport.writes[0], bytes((0x40, 2, 0, 1, 0x40, 2, 0, 2)))
        self.assertEqual(sent, [coded, other])
        self.assertEqual(conn.transport.writes[1:], [bytes((0x40, 2, 0, 8))])
        self.assertEqual((called, conn._unacked_qos1), (["x"], 0))
