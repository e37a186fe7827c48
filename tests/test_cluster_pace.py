"""A reconnect storm's work a slice per reactor turn (issue 16, ``cluster/pace.py``,
``adoption.py``, ``releases.py``), without Redis: a node adopting 5,000 sessions of a
dead node restores them a slice at a time, renews its lease meanwhile, and answers
the CONNECTs and handover requests that wait for a session as soon as *that* session
is restored.  Before, the restores of a batch of 500 ran in one turn and every waiter
went on after the last one: 5,000 restores and answers made a 7 s turn, past the 3 s
lease (``tests/test_cluster_storm.py`` measures the real thing)."""

from __future__ import annotations

from typing import Any

import msgpack
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.cluster import failover, fence, moved, wills
from mqtt_twisted.cluster.adoption import Adoption
from mqtt_twisted.cluster.node import ClusterNode
from mqtt_twisted.cluster.pace import SLICE_ITEMS, in_slices
from mqtt_twisted.codec import ConnAck
from mqtt_twisted.records import SubscriptionOptions
from mqtt_twisted.store.memory import StoredSession
from mqtt_twisted.store.redis import parse_url
from mqtt_twisted.testing import FakeClient, make_broker

SESSIONS = 5000


def one_turn(clock: Clock, seconds: float = 0.0) -> None:
    """Let ``seconds`` pass, then run the calls due, as one reactor turn does: a call
    they schedule for 0 s later waits for the next turn."""
    clock.rightNow += seconds
    due = [call for call in clock.calls if call.getTime() <= clock.seconds()]
    for call in due:
        clock.calls.remove(call)
        call.called = 1
        call.func(*call.args, **call.kw)


class FakeRedis:
    """The node's command connection: each command recorded and answered at once, as
    Redis would for these scripts, except the dead node's homes, which the test gives."""

    def __init__(self, dead: list[str]) -> None:
        self.sent: list[tuple[Any, ...]] = []
        self.homes: Deferred[list[bytes]] = Deferred()
        #: The dead node's stream, as the drain's first read finds it (the test says).
        self.claimed: Deferred[Any] = Deferred()
        self.dead = dead

    def command(self, *args: Any) -> Deferred[Any]:
        self.sent.append(args)
        if args[0] == b"EVAL":
            script = args[1]
            if script == failover._TAKE_HOMES:
                return self.homes
            if script == failover._DROP:
                return succeed([b"A"])
            if script == wills._TAKE:
                return succeed([])
            if script == fence.RENEW:
                return succeed(1)
        if args[0] == b"XAUTOCLAIM":
            return self.claimed
        if args[0] == b"XREADGROUP":
            return succeed([])
        return succeed(1)

    def command_blocking(self, block: float, *args: Any) -> Deferred[Any]:
        return Deferred()

    def renewals(self) -> int:
        return sum(1 for a in self.sent if a[:2] == (b"EVAL", fence.RENEW))

    def released(self) -> list[str]:
        """The client ids whose handover was answered, in order."""
        return [msgpack.unpackb(a[2])[1] for a in self.sent
                if a[0] == b"PUBLISH" and msgpack.unpackb(a[2])[0] == "released"]


def adopter(sessions: int = SESSIONS) -> tuple[ClusterNode, Clock, FakeRedis]:
    """Node B on a sans-IO broker whose store holds the ``sessions`` persistent
    sessions of dead node A (each subscribed to its own topic)."""
    broker, clock = make_broker()
    ids = [f"c{i}" for i in range(sessions)]
    for i, client_id in enumerate(ids):
        state = StoredSession(client_id)
        state.subscriptions = {f"t/{i}": SubscriptionOptions(1)}
        state.expiryInterval = None
        state.disconnectedAt = 1.0
        broker.store.saveSession(state)
    node = ClusterNode(clock, parse_url("redis://127.0.0.1:1/0"), "B", broker)
    node.install()
    redis = FakeRedis(ids)
    node.commands = node.reader = node.lease = redis  # type: ignore[assignment]
    return node, clock, redis


class PaceTests(SynchronousTestCase):
    def test_slices_end_at_their_item_budget(self) -> None:
        """At most ``most`` items a turn; the rest on the next turns, in order."""
        clock = Clock()
        seen: list[int] = []
        d = in_slices(clock, range(25), seen.append, budget=10.0, most=10)
        self.assertEqual(seen, list(range(10)))
        one_turn(clock)
        self.assertEqual(seen, list(range(20)))
        self.assertNoResult(d)
        one_turn(clock)
        self.assertEqual(seen, list(range(25)))
        self.assertEqual(self.successResultOf(d), 25)

    def test_slices_end_at_their_time_budget(self) -> None:
        """A slice ends once its work has taken ``budget`` seconds by the clock, with at
        least one item however long it takes."""
        clock = Clock()
        seen: list[int] = []

        def slow(item: int) -> None:
            seen.append(item)
            clock.rightNow += 0.008 if item else 1.0  # the first one: past the budget

        d = in_slices(clock, range(10), slow, budget=0.02, most=1000)
        self.assertEqual(seen, [0])
        one_turn(clock)
        self.assertEqual(seen, [0, 1, 2, 3])  # 3 x 8 ms >= 20 ms
        one_turn(clock)
        self.assertEqual(seen, list(range(7)))
        one_turn(clock)
        self.assertEqual(seen, list(range(10)))  # (its budget reached: one turn more)
        one_turn(clock)
        self.assertEqual(self.successResultOf(d), 10)

    def test_an_error_stops_the_slices(self) -> None:
        """The first error ``do`` raises fails the Deferred; nothing more is done."""
        clock = Clock()
        seen: list[int] = []

        def do(item: int) -> None:
            if item == 3:
                raise ValueError(item)
            seen.append(item)

        d = in_slices(clock, range(10), do, most=2)
        for _ in range(3):
            one_turn(clock)
        self.failureResultOf(d, ValueError)
        self.assertEqual(seen, [0, 1, 2])
        self.assertEqual(clock.calls, [])


class AdoptionTests(SynchronousTestCase):
    def test_waiting_for_one_session(self) -> None:
        """A waiter goes on when its own session is restored; one that is none of the
        dead node's, at once (once the list is known); every waiter when it ends."""
        adoption = Adoption()
        early = adoption.wait_for("a")
        other = adoption.wait_for("z")
        self.assertNoResult(early)
        adoption.listed(["a", "b", "c"])
        self.assertNoResult(early)
        self.successResultOf(other)
        late = adoption.wait_for("c")
        adoption.restored("a")
        self.successResultOf(early)
        self.assertNoResult(late)
        adoption.end()
        self.successResultOf(late)
        self.successResultOf(adoption.wait_for("b"))


class AdoptionPacingTests(SynchronousTestCase):
    def test_restores_in_slices_and_the_lease_renewed_meanwhile(self) -> None:
        """5,000 sessions adopted: never more than a slice's worth restored in one
        reactor turn, and the lease renewal goes out between slices, while the
        adoption runs (before: all of a batch of 500 in one turn, and all 5,000 here
        in one, as the memory store answers at once)."""
        node, clock, redis = adopter()
        broker = node.broker
        node.failover.start()
        done = node.failover.adopt("A")
        redis.homes.callback([f"c{i}".encode() for i in range(SESSIONS)])
        counts = [len(broker.sessions)]
        renewed_at: list[int] = []
        while not done.called:
            renewals = redis.renewals()
            one_turn(clock, 0.1)
            counts.append(len(broker.sessions))
            if redis.renewals() > renewals:
                renewed_at.append(counts[-1])
        self.assertEqual(counts[-1], SESSIONS)
        per_turn = [b - a for a, b in zip([0, *counts], counts)]
        self.assertLessEqual(max(per_turn), SLICE_ITEMS)
        self.assertGreaterEqual(len(per_turn), SESSIONS // SLICE_ITEMS)
        # Renewed (every LEASE / 3 s) while sessions were still to come.
        self.assertTrue([n for n in renewed_at if 0 < n < SESSIONS], renewed_at)
        node.failover._loop.stop()

    def test_a_handover_is_answered_when_its_session_is_restored(self) -> None:
        """A handover request that comes before the homes are taken waits for its own
        session only: answered in the turns after that session is restored, well
        before the adoption ends; requests are answered a slice per turn."""
        node, clock, redis = adopter()
        done = node.failover.adopt("A")
        ask = ["c10", "c4999", *[f"c{i}" for i in range(1000, 1400)]]
        for n, client_id in enumerate(ask):
            node._control(msgpack.packb(["release", client_id, "C", n]))
        one_turn(clock)
        self.assertEqual(redis.released(), [])  # the homes are not taken yet
        redis.homes.callback([f"c{i}".encode() for i in range(SESSIONS)])
        turns = 0
        answered: list[int] = []
        while "c4999" not in redis.released():
            before = len(redis.released())
            one_turn(clock)
            turns += 1
            answered.append(len(redis.released()) - before)
            if turns == 3:
                self.assertIn("c10", redis.released())  # restored in the first slice
                self.assertNoResult(done)
        self.assertLessEqual(max(answered), SLICE_ITEMS)
        self.assertEqual(sorted(redis.released()), sorted(ask))
        for client_id in ask:
            self.assertNotIn(client_id, node.broker.sessions)  # let go, once
            self.assertIsNotNone(self.successResultOf(
                node.broker.store.loadSession(client_id)))

    def test_a_connect_resumes_when_its_session_is_restored(self) -> None:
        """A CONNECT here for one of the dead node's clients gets its CONNACK (session
        present) once its own session is restored, before the adoption is over."""
        node, clock, redis = adopter()
        done = node.failover.adopt("A")
        client = FakeClient(node.broker, 4)
        self.assertEqual(client.connect("c1500", clean=False), [])  # its home: not known
        redis.homes.callback([f"c{i}".encode() for i in range(SESSIONS)])
        packets: list[Any] = []
        while not packets:
            one_turn(clock)
            packets += client.received()
        self.assertNoResult(done)
        [connack] = [p for p in packets if isinstance(p, ConnAck)]
        self.assertTrue(connack.session_present)
        self.assertEqual(connack.reason_code, 0)

    def test_forwarding_lasts_until_the_dead_nodes_stream_is_delivered(self) -> None:
        """A session let go during the adoption keeps being forwarded to its new node
        until the dead node's stream, which holds its messages, has been delivered
        here: the window used to close GRACE s after the release, before the drain
        (345 of a 5,000 storm's messages lost)."""
        node, clock, redis = adopter(300)
        done = node.failover.adopt("A")
        node._control(msgpack.packb(["release", "c10", "C", 1]))
        redis.homes.callback([f"c{i}".encode() for i in range(300)])
        while not done.called:
            one_turn(clock)
        self.assertEqual(redis.released(), ["c10"])
        self.assertIn("c10", node.moved.leaving)
        for _ in range(int(moved.GRACE * 2 / 0.5)):  # the drain has not read yet
            one_turn(clock, 0.5)
        self.assertIn("c10", node.moved.leaving)
        redis.claimed.callback([b"0-0", []])  # an empty stream: the drain is over
        for _ in range(int(moved.GRACE / 0.5) + 2):
            one_turn(clock, 0.5)
        self.assertNotIn("c10", node.moved.leaving)

    def test_no_positions_while_a_dead_nodes_stream_is_to_come(self) -> None:
        """Message identity: a session let go while the dead node's sessions or stream
        are still coming here is answered without delivered positions (the drain still
        has messages of every origin for it, numbered below them, which this node
        forwards: the new node must not drop them as had); once the drain is over, the
        answer says how far each origin's messages were delivered here."""
        node, clock, redis = adopter(300)
        node.router.seq = 41
        node.delivered["P"] = 7
        done = node.failover.adopt("A")
        node._control(msgpack.packb(["release", "c10", "C", 1]))
        redis.homes.callback([f"c{i}".encode() for i in range(300)])
        while not done.called:
            one_turn(clock)

        def answers() -> dict[str, Any]:
            return {m[1]: m[4] for m in (msgpack.unpackb(a[2]) for a in redis.sent
                                         if a[0] == b"PUBLISH")
                    if m[0] == "released"}

        self.assertEqual(answers(), {"c10": {}})
        redis.claimed.callback([b"0-0", []])  # an empty stream: the drain is over
        for _ in range(int(moved.GRACE / 0.5) + 2):
            one_turn(clock, 0.5)
        self.assertFalse(node.failover.delivering())
        node._control(msgpack.packb(["release", "c20", "C", 2]))
        one_turn(clock)
        self.assertEqual(answers()["c20"], {"P": 7, "B": 41})
