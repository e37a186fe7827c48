"""Order across a handover (``mqtt_twisted/cluster/barrier.py``), without Redis: the
new node holds a publisher node's direct copies for an arriving session until the old
node answers the barrier, then delivers them in order at the session's pace.  The
end-to-end check is ``tests/test_cluster_handover.py``."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.cluster.barrier import BARRIER_TIMEOUT, Barriers
from mqtt_twisted.core.journal import Journal
from mqtt_twisted.core.stats import BrokerStats
from mqtt_twisted.message import Message


class _Publisher:
    def __init__(self) -> None:
        self.paused = False

    def throttle(self) -> None:
        self.paused = True

    def unthrottle(self) -> None:
        self.paused = False


def _node() -> Any:
    delivered: list[tuple[str, bytes]] = []
    sent: list[tuple[str, str, bytes, str]] = []

    def deliver(session: Any, message: Message, *args: Any) -> None:
        delivered.append((session.clientId, message.payload))
        session.queue.append(message)

    def barrier(to: str, client_id: str, field: bytes, value: str) -> Deferred[Any]:
        sent.append((to, client_id, field, value))
        return succeed(None)

    session = SimpleNamespace(clientId="mover", queue=[], connection=object())
    broker = SimpleNamespace(
        sessions={"mover": session}, journal=Journal(object(), BrokerStats()),
        publisher=None, delivery=SimpleNamespace(high_water=2))
    node = SimpleNamespace(
        name="C", reactor=Clock(), broker=broker, delivered=delivered, sent=sent,
        router=SimpleNamespace(local=SimpleNamespace(deliver=deliver), ident=0),
        link=SimpleNamespace(barrier=barrier), _failed=lambda *a: None,
        moved=SimpleNamespace(direct_from=lambda *a: None))
    node.barriers = Barriers(node)
    return node


def _message(payload: bytes, qos: int = 1) -> Message:
    return Message("ho/t", payload, qos)


def _from(node: Any, origin: str | None, payload: bytes, qos: int = 1,
          seq: int = 0) -> list[Any]:
    """Deliver one message as the stream reader does (origin set), its pending writes."""
    node.barriers.origin = origin
    node.barriers.seq = seq
    try:
        session = node.broker.sessions["mover"]
        return node.broker.journal.writes_of(
            node.router.local.deliver, session, _message(payload, qos), qos, False, None)[1]
    finally:
        node.barriers.origin = None


class BarrierTests(SynchronousTestCase):
    def test_each_identity_once(self) -> None:
        """Message identity: what the old node said it delivered is not delivered again;
        a forwarded copy and a direct one of the same message reach the session once,
        in order (the held copy the old node forwarded meanwhile is dropped)."""
        node = _node()
        barriers = node.barriers
        barriers.open("mover", "B", {"A": 5, "B": 2})
        _from(node, "A", b"4", seq=4)  # B delivered it before it let the session go
        _from(node, "B", b"b2", seq=2)  # B's own, delivered by B
        self.assertEqual(node.delivered, [])
        _from(node, "A", b"6", seq=6)  # held: a barrier through B
        _from(node, "A", b"7", seq=7)
        self.assertEqual(node.sent, [("B", "mover", b"b", "A")])
        self.assertTrue(barriers.first_time("mover", b"6 A"))  # B forwards 6: new
        self.assertFalse(barriers.first_time("mover", b"6 A"))  # twice: not
        self.assertFalse(barriers.first_time("mover", b"5 A"))
        node.delivered.append(("mover", b"6"))  # (what moved.directed delivers)
        node.broker.journal.writes_of(barriers.entry, "mover", {b"o": b"B", b"a": b"A"})
        self.assertEqual(node.delivered, [("mover", b"6"), ("mover", b"7")])
        _from(node, "B", b"b3", seq=3)  # B's own, direct: B hears it comes here now
        self.assertEqual(node.sent[-1], ("B", "mover", b"b", "B"))
        self.assertEqual(node.delivered[-1], ("mover", b"b3"))
        self.assertTrue(barriers.first_time("mover", b"9 A"))
        self.assertTrue(barriers.first_time("mover", b"x A"))  # unreadable: delivered

    def test_held_until_answered_then_paced(self) -> None:
        """A's direct copies wait for A's barrier through B; B's own and QoS 0 do not;
        once answered they go in order, no more at once than the high-water mark."""
        node = _node()
        barriers = node.barriers
        barriers.open("mover", "B")
        publisher = node.broker.publisher = _Publisher()
        pending = [_from(node, "A", b"%d" % i) for i in range(5)]
        self.assertEqual(node.sent, [("B", "mover", b"b", "A")])  # one request
        self.assertTrue(all(len(p) == 1 and not p[0].called for p in pending))
        _from(node, "B", b"b1")
        _from(node, "A", b"q0", qos=0)
        self.assertEqual(node.delivered, [("mover", b"b1"), ("mover", b"q0")])
        queue = node.broker.sessions["mover"].queue
        queue.clear()
        node.broker.journal.writes_of(barriers.entry, "mover", {b"o": b"B", b"a": b"A"})
        self.assertEqual(node.delivered[2:], [("mover", b"0"), ("mover", b"1")])
        _from(node, "A", b"5")  # still behind what is held; the reader held back
        self.assertTrue(publisher.paused)
        node.reactor.advance(0.05)  # the queue is at its high-water mark: nothing
        self.assertEqual(len(node.delivered), 4)
        queue.clear()
        node.reactor.advance(0.05)
        self.assertEqual(node.delivered[4:], [("mover", b"2"), ("mover", b"3")])
        queue.clear()
        node.reactor.advance(0.05)
        self.assertEqual([p for _, p in node.delivered[2:]], [b"%d" % i for i in range(6)])
        self.assertTrue(all(p[0].called for p in pending))
        self.assertFalse(publisher.paused)
        _from(node, "A", b"6")  # straight through now
        self.assertEqual(node.delivered[-1], ("mover", b"6"))
        node.broker.journal.writes_of(barriers.entry, "mover", {b"o": b"B", b"e": b""})
        self.assertEqual(barriers.windows, {})
        self.assertIsNot(node.router.local.deliver, barriers._deliver)

    def test_local_publisher_and_timeout(self) -> None:
        """A message published here is held too (its barrier is this node's); with no
        answer within the timeout it is delivered anyway."""
        node = _node()
        node.barriers.open("mover", "B")
        pending = _from(node, None, b"x")
        self.assertEqual(node.sent, [("B", "mover", b"b", "C")])
        self.assertEqual(node.delivered, [])
        node.reactor.advance(BARRIER_TIMEOUT)
        self.assertEqual(node.delivered, [("mover", b"x")])
        self.assertTrue(pending[0].called)

    def test_flush_when_the_session_leaves(self) -> None:
        """A session that leaves again gets everything held at once, in order."""
        node = _node()
        node.barriers.open("mover", "B")
        for i in range(4):
            _from(node, "A", b"%d" % i)
        node.barriers.flush("mover")
        self.assertEqual([p for _, p in node.delivered], [b"0", b"1", b"2", b"3"])
        self.assertEqual(node.barriers.windows, {})

    def test_old_node_answers_a_request(self) -> None:
        """On the old node a request is answered into the asking node's stream."""
        node = _node()
        writes = node.broker.journal.writes_of(node.barriers.entry, "mover",
                                               {b"o": b"C", b"b": b"A"})[1]
        self.assertEqual(node.sent, [("C", "mover", b"a", "A")])
        self.assertEqual(writes, [])  # answered already (a fired Deferred)


class NestedWritesTests(SynchronousTestCase):
    def test_inner_writes_are_the_outer_callers_too(self) -> None:
        """``writes_of`` inside ``writes_of``: the outer caller waits for both."""
        journal = Journal(object(), BrokerStats())
        inner_d: Deferred[None] = Deferred()
        outer_d: Deferred[None] = Deferred()

        def inner() -> None:
            journal.persist(inner_d)

        def outer() -> list[Any]:
            journal.persist(outer_d)
            return journal.writes_of(inner)[1]

        inner_writes, outer_writes = journal.writes_of(outer)
        self.assertEqual(inner_writes, [inner_d])
        self.assertEqual(outer_writes, [outer_d, inner_d])
