"""``?wait=N`` (store/replicas.py): a turn's writes are confirmed by one WAIT."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.errors import StorageError
from mqtt_twisted.store.redis import parse_url
from mqtt_twisted.store.replicas import ReplicaWait


class ReplicaWaitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.waits: list[tuple[int, int, Deferred[int]]] = []

        def send_wait(replicas: int, ms: int) -> Deferred[int]:
            d: Deferred[int] = Deferred()
            self.waits.append((replicas, ms, d))
            return d

        self.gate = ReplicaWait(self.clock, 1, 0.5, send_wait)

    def test_one_wait_per_turn(self) -> None:
        """Two writes of one turn: one WAIT 1 500 after them; each fires with its own
        reply once WAIT says the replica has them, not before."""
        replies = [Deferred(), Deferred()]
        outs = [self.gate.gate(r) for r in replies]
        replies[0].callback("a")
        replies[1].callback("b")
        self.assertNoResult(outs[0])
        self.clock.advance(0)
        self.assertEqual([(r, ms) for r, ms, _ in self.waits], [(1, 500)])
        self.assertNoResult(outs[1])
        self.waits[0][2].callback(1)
        self.assertEqual([self.successResultOf(o) for o in outs], ["a", "b"])
        self.gate.gate(Deferred())
        self.clock.advance(0)
        self.assertEqual(len(self.waits), 2)  # the next turn has a WAIT of its own

    def test_too_few_replicas_fail(self) -> None:
        """WAIT answering fewer replicas than asked (the replica is gone, or promoted
        away from this master) fails the turn's writes: not acknowledged."""
        reply: Deferred[str] = Deferred()
        out = self.gate.gate(reply)
        reply.callback("ok")
        self.clock.advance(0)
        self.waits[0][2].callback(0)
        self.assertIn("only 0 of 1 Redis replicas", str(self.failureResultOf(
            out, StorageError).value))

    def test_refused_write_fails_at_once(self) -> None:
        """A write Redis refused fails without waiting for WAIT."""
        reply: Deferred[str] = Deferred()
        out = self.gate.gate(reply)
        reply.errback(StorageError("READONLY"))
        self.failureResultOf(out, StorageError)

    def test_url(self) -> None:
        """?wait=N&wait_timeout=S on both URL forms; a negative count is refused."""
        o = parse_url("redis://h/0?wait=1&wait_timeout=0.2")
        self.assertEqual((o.wait, o.wait_timeout), (1, 0.2))
        self.assertEqual(parse_url("redis+sentinel://h/m/0?wait=2").wait, 2)
        self.assertRaises(ValueError, parse_url, "redis://h/0?wait=-1")
