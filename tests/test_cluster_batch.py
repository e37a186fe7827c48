"""Copies for peer nodes batched per destination and reactor turn (``cluster/batch.py``),
and read back message by message: the inbox under flow control within an entry, the
drain's marks within a batch.  Sans-IO: a fake clock, a recording Redis link, a
sans-IO broker with FakeClients."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgpack
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.cluster.batch import (
    BATCH,
    MAX_BATCH,
    RECORDS,
    Item,
    Outbox,
    directed,
    item_message,
    read_entry,
    read_push,
)
from mqtt_twisted.cluster.drain import Drain, entry_key
from mqtt_twisted.cluster.inbox import TURN_MESSAGES, InboxReader, deliver_items
from mqtt_twisted.cluster.link import NodeLink
from mqtt_twisted.cluster.resp import ReplyError
from mqtt_twisted.cluster.router import ClusterRouter
from mqtt_twisted.cluster.shared import encode_groups
from mqtt_twisted.codec.packets import Publish
from mqtt_twisted.constants import PropertyId
from mqtt_twisted.errors import StorageError
from mqtt_twisted.message import Message
from mqtt_twisted.store.redis import decode_message, encode_message
from mqtt_twisted.testing import FakeClient, make_broker


def blob(topic: str, payload: bytes = b"p", qos: int = 1) -> bytes:
    """A message as stored on its own (a directed entry's, a batch's before ``r``)."""
    return encode_message(msg(topic, payload, qos))


def msg(topic: str, payload: bytes = b"p", qos: int = 1) -> Message:
    return Message(topic, payload, qos, False)


def topics(items: list[Item]) -> list[str]:
    return [item_message(i).topic for i in items]


class Recorder:
    """Stands for Redis: ``add`` (XADD fields) and ``push`` (a pub/sub message)."""

    def __init__(self) -> None:
        self.added: list[tuple[str, tuple[Any, ...], Deferred[Any]]] = []
        self.pushed: list[tuple[str, bytes]] = []

    def add(self, to: str, *fields: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.added.append((to, fields, d))
        return d

    def push(self, to: str, data: bytes) -> None:
        self.pushed.append((to, data))


class OutboxTests(SynchronousTestCase):

    def setUp(self) -> None:
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.redis = Recorder()
        self.outbox = Outbox(self.clock, "A", self.redis.add, self.redis.push)

    def test_one_entry_per_destination_per_turn(self) -> None:
        """The copies of one turn for one node are one XADD, sent once the turn is
        over, in the order they were routed; each message's Deferred fires with its
        entry's reply."""
        fired: list[Any] = []
        for i, to in enumerate(["B", "C", "B", "B"]):
            self.outbox.append(to, msg(f"t/{i}"), b"B,C", None).addCallback(fired.append)
        self.assertEqual(self.redis.added, [])
        self.clock.advance(0)
        self.assertEqual([a[0] for a in self.redis.added], ["B", "C"])
        to, fields, d = self.redis.added[0]
        self.assertEqual(fields[0], RECORDS)
        origin, items = read_entry([b"o", b"A", *fields])  # type: ignore[misc]
        self.assertEqual((origin, topics(items)), ("A", ["t/0", "t/2", "t/3"]))
        self.assertEqual({(i[1], i[2], directed(i)) for i in items}, {(b"B,C", None, None)})
        d.callback(b"5-0")
        self.assertEqual(fired, [b"5-0"] * 3)
        self.redis.added[1][2].callback(b"5-1")
        self.assertEqual(fired, [b"5-0"] * 3 + [b"5-1"])
        self.outbox.append("B", msg("next"), b"B", None)
        self.clock.advance(0)
        self.assertEqual(len(self.redis.added), 3)  # a new turn, a new entry

    def test_share_groups_go_with_their_message(self) -> None:
        """A copy for a node's share group members names the groups (sent on or not)."""
        self.outbox.append("B", msg("s/1"), b"B", ["$share/g/s/+", "$share/h/#"], True)
        self.outbox.append("B", msg("s/2"), b"B")
        self.clock.advance(0)
        _, items = read_entry([b"o", b"A", *self.redis.added[0][1]])  # type: ignore[misc]
        self.assertEqual([i[2] for i in items],
                         [encode_groups(["$share/g/s/+", "$share/h/#"], True), None])

    def test_a_failed_entry_fails_each_of_its_messages(self) -> None:
        """Redis refusing the XADD fails every message in it (no PUBACK for any)."""
        failed: list[Failure] = []
        for i in range(3):
            self.outbox.append("B", msg(f"t/{i}"), b"B", None).addErrback(failed.append)
        self.clock.advance(0)
        self.redis.added[0][2].errback(StorageError("down"))
        self.assertEqual([f.type for f in failed], [StorageError] * 3)

    def test_a_full_batch_goes_at_once(self) -> None:
        """MAX_BATCH messages are sent without waiting for the end of the turn."""
        for i in range(MAX_BATCH + 1):
            self.outbox.append("B", msg(f"t/{i}"), b"B", None)
        self.assertEqual(len(self.redis.added), 1)
        self.assertEqual(len(read_entry([b"o", b"A", *self.redis.added[0][1]])[1]),  # type: ignore[index]
                         MAX_BATCH)
        self.clock.advance(0)
        self.assertEqual(len(self.redis.added), 2)

    def transacted(self) -> list[list[tuple[str, tuple[Any, ...]]]]:
        """The outbox under test with a ``transaction`` that records its calls (and,
        in ``self.replies``, the Deferred of each one's EXEC reply)."""
        calls: list[list[tuple[str, tuple[Any, ...]]]] = []
        self.replies: list[Deferred[Any]] = []

        def transaction(adds: list[tuple[str, tuple[Any, ...]]]) -> Deferred[Any]:
            calls.append(adds)
            reply: Deferred[Any] = Deferred()
            self.replies.append(reply)
            return reply

        self.outbox = Outbox(self.clock, "A", self.redis.add, self.redis.push, transaction)
        return calls

    def test_several_destinations_in_one_transaction(self) -> None:
        """A turn's entries for several nodes go in one MULTI/EXEC (no reader sees one
        stream's entry before another's: barrier.py's order) and share one write, fired
        by EXEC's reply: with the entries' ids once all are in, failed for every
        message when one entry failed; one destination is a plain XADD."""
        calls = self.transacted()
        fired: list[Any] = []
        writes = [self.outbox.append(to, msg(f"t/{i}"), to.encode())
                  for i, to in enumerate(["O", "N", "O"])]
        self.assertEqual(len({id(w) for w in writes}), 1)
        writes[0].addBoth(fired.append)
        self.clock.advance(0)
        self.assertEqual(self.redis.added, [])
        [adds] = calls
        self.assertEqual([to for to, _ in adds], ["O", "N"])
        self.assertEqual([topics(read_entry([b"o", b"A", *f])[1])  # type: ignore[index]
                          for _, f in adds], [["t/0", "t/2"], ["t/1"]])
        self.replies[0].callback([b"7-0", b"7-1"])
        self.assertEqual(fired, [[b"7-0", b"7-1"]])
        self.assertEqual(self.outbox.transactions, 1)
        self.outbox.append("N", msg("alone"), b"N")
        self.clock.advance(0)
        self.assertEqual((len(calls), [a[0] for a in self.redis.added]), (1, ["N"]))
        failed: list[Any] = []
        for to in ["O", "N"]:
            self.outbox.append(to, msg("x"), b"").addErrback(failed.append)
        self.clock.advance(0)
        self.replies[1].callback([b"8-0", ReplyError("WRONGTYPE")])
        self.assertEqual([f.type for f in failed], [ReplyError] * 2)
        lost: list[Any] = []
        self.outbox.append("O", msg("y"), b"").addErrback(lost.append)
        self.outbox.append("N", msg("z"), b"").addErrback(lost.append)
        self.clock.advance(0)
        self.replies[2].errback(StorageError("EXECABORT"))
        self.assertEqual([f.type for f in lost], [StorageError] * 2)

    def test_a_flush_before_a_directed_entry_sends_every_destination(self) -> None:
        """A directed or barrier entry (``flush_entries(to)``), or a full batch, sends
        the other destinations' batches of the turn too, in the same transaction: none
        is left to be written after an entry routed later."""
        calls = self.transacted()
        self.outbox.append("O", msg("first"), b"O")
        self.outbox.append("N", msg("second"), b"N")
        self.outbox.flush_entries("N")
        self.assertEqual([[to for to, _ in adds] for adds in calls], [["O", "N"]])
        for i in range(MAX_BATCH + 1):  # O's one, then N's batch full
            self.outbox.append("N" if i else "O", msg(f"t/{i}"), b"N")
        self.assertEqual([[to for to, _ in adds] for adds in calls][1:], [["O", "N"]])
        self.clock.advance(0)
        self.assertEqual((len(calls), self.redis.added), (2, []))

    def test_qos0_one_push_per_destination_per_turn(self) -> None:
        """QoS 0 copies of a turn are one pub/sub message per node, with their groups."""
        self.outbox.publish("B", msg("a", qos=0), None, False)
        self.outbox.publish("B", msg("b", qos=0), ["$share/g/b"], True)
        self.outbox.publish("C", msg("c", qos=0), None, False)
        self.assertEqual(self.redis.pushed, [])
        self.clock.advance(0)
        self.assertEqual([p[0] for p in self.redis.pushed], ["B", "C"])
        origin, items = read_push(self.redis.pushed[0][1])
        self.assertEqual(origin, "A")
        self.assertEqual([(item_message(i).topic, i[1], i[2]) for i in items],
                         [("a", None, False), ("b", ["$share/g/b"], True)])

    def test_old_formats_are_read(self) -> None:
        """Entries and pub/sub messages written one message each (before batching, and
        directed entries still) read as batches of one."""
        fields = [b"o", b"B", b"m", blob("x"), b"d", b"A,C", b"g",
                  encode_groups(["$share/g/x"], False)]
        origin, [item] = read_entry(fields)  # type: ignore[misc]
        self.assertEqual((origin, decode_message(item[0]).topic, item[1], item[2],
                          directed(item)),
                         ("B", "x", b"A,C", fields[7], None))
        _, [item] = read_entry([b"o", b"B", b"m", blob("y"), b"c", b"cid"])  # type: ignore[misc]
        self.assertEqual(directed(item), b"cid")
        self.assertIsNone(read_entry(None))
        old = msgpack.packb(["B", blob("z", qos=0), ["$share/g/z"], False], use_bin_type=True)
        origin, [(b, groups, resent)] = read_push(old)
        self.assertEqual((origin, decode_message(b).topic, groups, resent),
                         ("B", "z", ["$share/g/z"], False))
        # Batches of messages packed one by one (``p``, before ``r``), both lanes.
        packed = msgpack.packb([[blob("p1"), b"A", None], [blob("p2"), b"A", None]],
                               use_bin_type=True)
        origin, items = read_entry([b"o", b"B", BATCH, packed])  # type: ignore[misc]
        self.assertEqual((origin, topics(items)), ("B", ["p1", "p2"]))
        push = msgpack.packb(["B", [[blob("q", qos=0), None, False]]], use_bin_type=True)
        self.assertEqual(topics(read_push(push)[1]), ["q"])

    def test_properties_cross_in_a_batch(self) -> None:
        """A v5 message's properties (ids as map keys, user properties as pairs) come
        out of a batch as they went in, both lanes."""
        props = {PropertyId.USER_PROPERTY: [("k", "v"), ("k", "w")],
                 PropertyId.CONTENT_TYPE: "text/plain", PropertyId.CORRELATION_DATA: b"\x00"}
        message = Message("t/p", b"x", 1, True, None, dict(props), 12.5, "sender")
        self.outbox.append("B", message, b"B")
        self.outbox.publish("B", Message("t/q", b"y", 0, False, None, dict(props)), None, False)
        self.clock.advance(0)
        _, items = read_entry([b"o", b"A", *self.redis.added[0][1]])  # type: ignore[misc]
        got = item_message(items[0])
        self.assertEqual((got, got.properties, got.received_at, got.sender),
                         (message, props, 12.5, "sender"))
        self.assertEqual({name: getattr(got, name) for name in Message.__slots__},
                         {name: getattr(message, name) for name in Message.__slots__})
        _, pushed = read_push(self.redis.pushed[0][1])
        self.assertEqual(item_message(pushed[0]).properties, props)


class BarrierEntryTests(SynchronousTestCase):
    """Handover barrier entries (``barrier.py``: ``c`` and ``b``/``a``/``e``, no
    message) read from a stream of batches: given to the node's barriers, whether read
    by the node's own reader or by a drain."""

    def test_read_as_one_item(self) -> None:
        fields = [b"o", b"N", b"c", b"cid", b"b", b"P"]
        origin, [item] = read_entry(fields)  # type: ignore[misc]
        self.assertEqual((origin, item), ("N", {b"o": b"N", b"c": b"cid", b"b": b"P"}))

    def test_the_reader_and_the_drain_give_them_to_the_barriers(self) -> None:
        broker, clock = make_broker()
        node = fake_node(broker, clock)
        seen: list[tuple[str, dict[bytes, bytes]]] = []
        node.barriers.entry = lambda client_id, record: seen.append((client_id, record))
        got: list[str] = []
        node.router = SimpleNamespace(plain_receiver=lambda: None,
                                      receive=lambda message, *rest: got.append(message.topic))
        reader = InboxReader(node)  # type: ignore[arg-type]
        reader.start()
        outbox = Outbox(clock, "P", Recorder().add, Recorder().push)
        packed: list[tuple[Any, ...]] = []
        outbox._add = lambda to, *fields: packed.append(fields) or Deferred()  # type: ignore[assignment]
        outbox.append("A", msg("before"), b"A")
        outbox.flush()
        barrier = [b"o", b"N", b"c", b"cid", b"a", b"P"]
        node.reader.replies[0].callback([[b"s:A", [(b"1-0", [b"o", b"P", *packed[0]]),
                                                   (b"2-0", barrier)]]])
        self.assertEqual((got, seen), (["before"], [("cid", dict(zip(barrier[::2],
                                                                      barrier[1::2])))]))
        # Acknowledged on the reader's connection, just before its next read.
        self.assertEqual(node.reader.sent[1], (b"XACK", b"s:A", b"A", b"1-0", b"2-0"))
        self.assertEqual(node.reader.sent[2][0], b"XREADGROUP")
        drain = Drain(node, "Z")  # type: ignore[arg-type]
        origin, items = read_entry(barrier)  # type: ignore[misc]
        self.assertIsNone(drain._full_offline(items[0]))
        drain._deliver_one(b"3-0", origin, items, 0)
        self.assertEqual(len(seen), 2)


class LinkTransactionTests(SynchronousTestCase):
    """``NodeLink``: a turn's entries for several nodes as MULTI, XADDs, EXEC."""

    def test_one_reply_for_the_transaction(self) -> None:
        """MULTI, the XADDs and EXEC go as one pipeline with one Deferred, EXEC's: its
        entry ids fire the flush's write; an entry refused in it, or the transaction
        lost, fails every message of the flush."""
        broker, clock = make_broker()
        node = fake_node(broker, clock)
        link = NodeLink(node)  # type: ignore[arg-type]
        fired: list[Any] = []
        link.append("O", msg("a"), b"O,N").addBoth(fired.append)
        link.append("N", msg("a"), b"O,N").addBoth(fired.append)
        clock.advance(0)
        sent = node.commands.sent
        self.assertEqual([c[0] for c in sent], [b"MULTI", b"XADD", b"XADD", b"EXEC"])
        self.assertEqual([c[1] for c in sent[1:3]], [b"s:O", b"s:N"])
        [reply] = node.commands.replies
        reply.callback([b"1-0", b"1-1"])
        self.assertEqual(fired, [[b"1-0", b"1-1"]] * 2)
        link.append("O", msg("b"), b"O,N").addBoth(fired.append)
        link.append("N", msg("b"), b"O,N").addBoth(fired.append)
        clock.advance(0)
        node.commands.replies[-1].callback([b"2-0", ReplyError("ERR refused")])
        self.assertEqual([type(f.value) for f in fired[2:]], [ReplyError] * 2)
        link.append("O", msg("c"), b"O,N").addBoth(fired.append)
        link.append("N", msg("c"), b"O,N").addBoth(fired.append)
        clock.advance(0)
        node.commands.replies[-1].errback(StorageError("Redis connection lost"))
        self.assertEqual([type(f.value) for f in fired[4:]], [StorageError] * 2)
        self.assertEqual(len(node.commands.replies), 3)

    def test_a_barrier_goes_after_the_turns_batches(self) -> None:
        """``NodeLink.barrier`` (as ``direct``) sends what the turn gathered first: the
        barrier entry is behind every message routed before it, in every stream."""
        broker, clock = make_broker()
        node = fake_node(broker, clock)
        link = NodeLink(node)  # type: ignore[arg-type]
        link.append("O", msg("a"), b"O")
        link.append("N", msg("a"), b"N")
        link.barrier("O", "cid", b"b", "P")
        sent = node.commands.sent
        self.assertEqual([c[:2] for c in sent], [(b"MULTI",), (b"XADD", b"s:O"),
                                                 (b"XADD", b"s:N"), (b"EXEC",),
                                                 (b"XADD", b"s:O")])
        self.assertEqual(sent[-1][-4:], (b"c", b"cid", b"b", b"P"))
        clock.advance(0)
        self.assertEqual(len(sent), 5)  # nothing left for the end of the turn


class FakeCommands:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []
        self.replies: list[Deferred[Any]] = []

    def command(self, *args: Any) -> Deferred[Any]:
        self.sent.append(args)
        d: Deferred[Any] = Deferred()
        self.replies.append(d)
        return d

    def pipeline(self, commands: list[tuple[Any, ...]]) -> Deferred[Any]:
        self.sent += commands
        d: Deferred[Any] = Deferred()
        self.replies.append(d)
        return d

    def command_blocking(self, block: float, *args: Any) -> Deferred[Any]:
        return self.command(*args)


def mark_of(store: Any) -> tuple[bytes, bytes] | None:
    """The mark a record written now would carry (``RedisStore.mark`` and
    ``.mark_index``, as ``_redisbatch`` writes them): ``entry id[.INDEX]``."""
    if store.mark is None:
        return None
    field, entry_id = store.mark
    index = store.mark_index
    return field, entry_id if not index else b"%s.%d" % (entry_id, index)


def fake_node(broker: Any, clock: Any) -> SimpleNamespace:
    """What the inbox, the drain and the link use of a ClusterNode."""
    node = SimpleNamespace(
        name="A", _origin=b"A", group=b"A", broker=broker, reactor=clock,
        store=SimpleNamespace(mark=None), mark_field=b"m:s", commands=FakeCommands(),
        reader=FakeCommands(), fence=SimpleNamespace(trusted=lambda: True),
        moved=SimpleNamespace(pending={}), _replicas=None, publish_command=b"SPUBLISH",
        barriers=SimpleNamespace(windows={}, origin=None, seq=0), delivered={},
        keys=SimpleNamespace(inbox=lambda n: b"s:" + n.encode(),
                             inbox0=lambda n: b"s0:" + n.encode(),
                             filters=lambda n: b"f:" + n.encode(), routes=b"r"))
    node._failed = lambda failure, what: None
    return node


class InboxTests(SynchronousTestCase):
    """The node's reader delivers a batch message by message under flow control."""

    def setUp(self) -> None:
        self.broker, self.clock = make_broker()
        self.node = fake_node(self.broker, self.clock)
        self.got: list[tuple[str, Any]] = []
        reader = self.reader = InboxReader(self.node)  # type: ignore[arg-type]

        def receive(message: Message, origin: str, groups: Any, resent: bool,
                    destinations: bytes, seq: int = 0) -> int:
            self.got.append((message.topic, mark_of(self.node.store)))
            if len(self.got) == 2:
                reader.publisher.throttle()  # a subscriber here cannot take more
            return 1

        self.node.router = SimpleNamespace(plain_receiver=lambda: None, receive=receive)

    def test_paused_within_an_entry_and_resumed(self) -> None:
        """A subscriber that holds the reader back after the 2nd of 4 messages of an
        entry stops it there; nothing is acknowledged until the entry is delivered
        whole, after it catches up; each message carries its own mark."""
        outbox = Outbox(self.clock, "B", Recorder().add, Recorder().push)
        packed = []
        outbox._add = lambda to, *fields: packed.append(fields) or Deferred()  # type: ignore[assignment]
        for i in range(4):
            outbox.append("A", msg(f"t/{i}"), b"A", None)
        outbox.flush()
        self.reader.start()
        [read] = self.node.reader.replies
        read.callback([[b"s:A", [(b"7-0", [b"o", b"B", *packed[0]]),
                                 (b"7-1", [b"o", b"B", b"m", blob("u"), b"d", b"A"])]]])
        self.assertEqual(self.got, [("t/0", (b"m:s", b"7-0")), ("t/1", (b"m:s", b"7-0.1"))])
        self.assertEqual(self.node.commands.sent, [])  # no XACK: the entry is not done
        self.assertTrue(self.reader.behind())
        self.got.append(("(resumed)", None))  # past the 2nd: no more throttling
        self.reader.publisher.unthrottle()
        self.assertEqual([t for t, _ in self.got],
                         ["t/0", "t/1", "(resumed)", "t/2", "t/3", "u"])
        self.assertEqual(self.got[-1][1], (b"m:s", b"7-1"))
        # XACK and the next read, one after the other on the reader's connection.
        self.assertEqual(self.node.reader.sent[1], (b"XACK", b"s:A", b"A", b"7-0", b"7-1"))
        self.assertEqual(self.node.reader.sent[2][0], b"XREADGROUP")
        self.assertEqual(self.node.commands.sent, [])
        self.assertIsNone(self.node.store.mark)


    def test_positions_follow_what_is_delivered(self) -> None:
        """Message identity: the number of each origin's last message delivered from
        this node's stream (``node.delivered``, what a session let go carries), as far
        as the reader got: held back within an entry, the position stops there."""
        outbox = Outbox(self.clock, "B", Recorder().add, Recorder().push)
        packed = []
        outbox._add = lambda to, *fields: packed.append(fields) or Deferred()  # type: ignore[assignment]
        for i in range(4):
            outbox.append("A", msg(f"t/{i}"), b"A", None, False, 11 + i)
        outbox.flush()
        self.reader.start()
        [read] = self.node.reader.replies
        read.callback([[b"s:A", [(b"7-0", [b"o", b"B", *packed[0]])]]])
        self.assertEqual(self.node.delivered, {"B": 12})  # held back after the 2nd
        self.reader.publisher.unthrottle()
        self.assertEqual(self.node.delivered, {"B": 14})

    def test_identity_on_the_plain_path(self) -> None:
        """A message for plain subscriptions only goes straight to the local router
        (``ClusterRouter.plain_receiver``), with its identity set for ``barrier.py`` as
        on the way through ``receive``: an ``r`` batch item's ``s``, message by
        message; cleared after the entry."""
        seen = []

        def dispatch(message: Message, origin: str) -> int:
            seen.append((message.topic, origin, self.node.barriers.seq))
            return 1

        self.node.router = SimpleNamespace(plain_receiver=lambda: dispatch, received=0,
                                           receive=None)
        outbox = Outbox(self.clock, "B", Recorder().add, Recorder().push)
        packed = []
        outbox._add = lambda to, *fields: packed.append(fields) or Deferred()  # type: ignore[assignment]
        for i in range(3):
            outbox.append("A", msg(f"t/{i}"), b"A", None, False, 5 + i)
        outbox.flush()
        self.assertEqual(packed[0][0], b"r")
        self.reader.start()
        [read] = self.node.reader.replies
        read.callback([[b"s:A", [(b"9-0", [b"o", b"B", *packed[0]])]]])
        self.assertEqual(seen, [("t/0", "B", 5), ("t/1", "B", 6), ("t/2", "B", 7)])
        self.assertEqual(self.node.router.received, 3)
        self.assertEqual(self.node.barriers.seq, 0)
        self.assertEqual(self.node.delivered, {"B": 7})

    def test_a_dead_nodes_stream_goes_on_without_identity(self) -> None:
        """A drain (``field``: the dead node's stream) delivers its messages with no
        identity: that stream orders the origins' numbers apart from this node's own,
        so a copy forwarded from it must not be taken for one the session had; nor
        does it move this node's delivered positions."""
        seen = []

        def receive(message: Message, origin: str, groups: Any, resent: bool,
                    destinations: bytes, seq: int = 0) -> int:
            seen.append((message.topic, seq, self.node.barriers.seq))
            return 1

        def dispatch(message: Message, origin: str) -> int:
            seen.append((message.topic, None, self.node.barriers.seq))
            return 1

        outbox = Outbox(self.clock, "B", Recorder().add, Recorder().push)
        packed = []
        outbox._add = lambda to, *fields: packed.append(fields) or Deferred()  # type: ignore[assignment]
        outbox.append("A", msg("t/0"), b"A", None, False, 5)
        outbox.append("A", msg("t/1"), b"A", ["$share/g/t/+"], False, 6)
        outbox.flush()
        _, items = read_entry([b"o", b"B", *packed[0]])
        self.node.router = SimpleNamespace(plain_receiver=lambda: dispatch, received=0,
                                           receive=receive)
        deliver_items(self.node, "B", items, field=b"m:d:X")  # type: ignore[arg-type]
        self.assertEqual(seen, [("t/0", None, 0), ("t/1", 0, 0)])
        self.assertEqual(self.node.delivered, {})
        seen.clear()
        deliver_items(self.node, "B", items)  # type: ignore[arg-type]
        self.assertEqual(seen, [("t/0", None, 5), ("t/1", 6, 6)])

    def test_a_turn_delivers_a_bounded_number(self) -> None:
        """A read of many full batches is delivered TURN_MESSAGES at a time, one reactor
        turn each (a long turn would hold up the lease renewal); each entry is
        acknowledged once delivered whole."""
        self.node.router = SimpleNamespace(
            plain_receiver=lambda: None, receive=lambda message, *rest: self.got.append((message.topic, None)))
        packed = []
        outbox = Outbox(self.clock, "B", Recorder().add, Recorder().push)
        outbox._add = lambda to, *fields: packed.append(fields) or Deferred()  # type: ignore[assignment]
        total = TURN_MESSAGES + MAX_BATCH // 2
        for i in range(total):
            outbox.append("A", msg(f"t/{i}"), b"A", None)
        outbox.flush()
        self.reader.start()
        [read] = self.node.reader.replies
        ids = [b"8-%d" % n for n in range(len(packed))]
        read.callback([[b"s:A", [(i, [b"o", b"B", *fields])
                                 for i, fields in zip(ids, packed)]]])
        self.assertEqual(len(self.got), TURN_MESSAGES)
        whole = TURN_MESSAGES // MAX_BATCH
        self.assertEqual(self.node.commands.sent, [(b"XACK", b"s:A", b"A", *ids[:whole])])
        self.assertEqual(len(self.node.reader.replies), 1)  # no read before the rest
        self.clock.advance(0)
        self.assertEqual([t for t, _ in self.got], [f"t/{i}" for i in range(total)])
        # The rest: acknowledged before the next read, on the reader's connection.
        self.assertEqual(self.node.reader.sent[1], (b"XACK", b"s:A", b"A", *ids[whole:]))
        self.assertEqual(self.node.reader.sent[2][0], b"XREADGROUP")
        self.assertEqual(len(self.node.commands.sent), 1)


class DrainMarkTests(SynchronousTestCase):
    """An adopter skips, in a batch entry, exactly the messages the dead node had
    delivered into a session (its mark names a message within the entry)."""

    def test_marks_within_a_batch(self) -> None:
        self.assertLess(entry_key(b"5-0"), entry_key(b"5-0.1"))
        self.assertEqual(entry_key(b"5-0"), entry_key(b"5-0", 0))
        self.assertLess(entry_key(b"5-0.9"), entry_key(b"5-1"))
        self.assertLess(entry_key(b"5-0", 2), entry_key(b"5-0.3"))
        broker, clock = make_broker()
        node = fake_node(broker, clock)
        node.router = ClusterRouter(broker.router, "A", NodeLink(node),  # type: ignore[arg-type]
                                    broker.journal.persist)
        broker.router = node.router
        one, two = FakeClient(broker), FakeClient(broker)
        one.connect("one")
        two.connect("two")
        one.subscribe("t/#")
        two.subscribe("t/#")
        drain = Drain(node, "Z", {"one": b"5-0.1"})  # type: ignore[arg-type]
        items = [[blob(f"t/{i}", qos=0), b"Z", None] for i in range(3)]
        for index in range(3):
            drain._deliver_one(b"5-0", "B", items, index)

        def topics_of(client: FakeClient) -> list[str]:
            return [p.topic for p in client.received() if isinstance(p, Publish)]

        self.assertEqual(topics_of(one), ["t/2"])
        self.assertEqual(topics_of(two), ["t/0", "t/1", "t/2"])
        self.assertEqual(drain.skipped, 2)
        marks: list[Any] = []
        real_deliver = node.router.local.deliver

        def deliver(*args: Any) -> None:
            marks.append(mark_of(node.store))
            real_deliver(*args)

        node.router.local.deliver = deliver
        drain._deliver_one(b"6-0", "B", items, 2)
        node.router.local.deliver = real_deliver
        # The adopter marks each copy it delivers with the dead node's stream and the
        # message's place in the entry: its own adopter skips it there in turn.
        self.assertEqual(marks, [(b"m:s:Z", b"6-0.2")] * 2)
        self.assertIsNone(node.store.mark)
        self.assertEqual((topics_of(one), topics_of(two)), (["t/2"], ["t/2"]))
