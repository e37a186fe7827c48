"""The drain's patience (``cluster/drain.py``) with a client that does not come back,
and with Redis: an adopter waits for a restored session at its high-water mark so that
its client, back soon, gets every message; one that never comes back holds the drain
(and every other session's messages in the dead node's stream) up once, not once a
message.  A drain that fails runs again.

Sans-IO: a fake clock, a recording Redis link, a sans-IO broker with FakeClients
(``tests/test_cluster_drain.py`` runs real nodes, with a client that comes back).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet.defer import fail
from twisted.internet.error import ConnectionLost
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.cluster.drain import PATIENCE, POLL, RETRY, Drain
from mqtt_twisted.cluster.link import NodeLink
from mqtt_twisted.cluster.router import ClusterRouter
from mqtt_twisted.codec.packets import Publish
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.errors import StorageError
from mqtt_twisted.testing import FakeClient, make_broker
from tests.test_cluster_batch import blob, fake_node


def adopter(test: Any, count: int, settings: BrokerSettings | None = None) -> None:
    """On ``test``: a node's broker and clock, a connected QoS 1 subscriber of ``t/#``
    (``here``), a drain of node Z's stream, and ``count`` entries of one message each
    (``t/0``...) for it."""
    test.broker, test.clock = make_broker(settings)
    node = test.node = fake_node(test.broker, test.clock)
    node._stopped = False
    node.turns = SimpleNamespace(longest=0.0)
    node.router = ClusterRouter(test.broker.router, "A", NodeLink(node),  # type: ignore[arg-type]
                                test.broker.journal.persist)
    test.broker.router = node.router
    test.here = FakeClient(test.broker)
    test.here.connect("here")
    test.here.subscribe("t/#", qos=1)
    test.drain = Drain(node, "Z")  # type: ignore[arg-type]
    test.entries = [(b"5-%d" % i, [b"o", b"B", b"m", blob(f"t/{i}"), b"d", b"A"])
                    for i in range(count)]


class PatienceTests(SynchronousTestCase):

    def setUp(self) -> None:
        # Queues of 4, high-water mark 2.
        adopter(self, 10, BrokerSettings(max_queued=4))
        away = FakeClient(self.broker)
        away.connect("away", clean=False)
        away.subscribe("t/#", qos=1)
        away.disconnect()

    def wait(self, seconds: float) -> None:
        for _ in range(round(seconds / POLL)):
            self.clock.advance(POLL)

    def test_an_absent_client_holds_the_drain_up_once(self) -> None:
        """Ten messages for an offline persistent session with room for two before its
        high-water mark: the drain waits for it at the 3rd, and after PATIENCE the
        other eight go on at once (its queue keeps the newest 4); the connected
        subscriber gets all ten.  Before, the drain waited PATIENCE again at each."""
        done = self.drain._deliver(self.entries)
        self.clock.advance(0)
        got = [p.topic for p in self.here.received() if isinstance(p, Publish)]
        self.assertEqual(got, ["t/0", "t/1"])  # waiting for "away" at t/2
        self.wait(PATIENCE - 1)
        self.assertNoResult(done)
        self.wait(1 + 2 * POLL)
        for _ in range(10):
            self.clock.advance(0)  # the turns the drain lets go by
        self.successResultOf(done)
        got += [p.topic for p in self.here.received() if isinstance(p, Publish)]
        self.assertEqual(got, [f"t/{i}" for i in range(10)])
        self.assertLess(abs(self.drain.waited - PATIENCE), 2 * POLL)
        [xack] = [c for c in self.node.commands.sent if c[0] == b"XACK"]
        self.assertEqual(xack[3:], tuple(entry_id for entry_id, _ in self.entries))
        session = self.broker.sessions["away"]
        self.assertEqual([o.message.topic for o in session.queue],
                         ["t/6", "t/7", "t/8", "t/9"])


class RetryTests(SynchronousTestCase):
    """A drain that fails (Redis lost under it) runs again: what it had delivered
    is acknowledged, not delivered again, and the rest is delivered.  Before, the
    entries stayed pending in the dead node's stream while this node lived."""

    def setUp(self) -> None:
        adopter(self, 3)

    def reply(self, verb: bytes, value: object, at: int = -1) -> tuple:
        """Answer the command sent ``at`` (the last), which must be ``verb``."""
        sent = self.node.commands
        command = sent.sent[at]
        self.assertEqual(command[0], verb)
        sent.replies[at].callback(value)
        self.clock.advance(0)
        return command

    def test_a_failed_drain_runs_again(self) -> None:
        done = self.drain.run_until_done()
        self.reply(b"XAUTOCLAIM", [b"0-0", self.entries[:2]])
        self.reply(b"XREADGROUP", [[b"s:Z", self.entries[2:]]])
        first, second = [d for c, d in zip(self.node.commands.sent,
                                           self.node.commands.replies, strict=True)
                         if c[0] == b"XACK"]
        first.errback(ConnectionLost("redis went away"))
        second.callback(1)
        with capturedLogs() as events:
            self.reply(b"XREADGROUP", [])
        self.assertNoResult(done)
        [warned] = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
        self.assertIn("delivering node Z's stream failed (ConnectionLost(", warned)
        self.assertIn("again in 1 s", warned)
        self.clock.advance(RETRY)
        # The 1st batch, still pending: acknowledged, not delivered again.
        self.reply(b"XAUTOCLAIM", [b"0-0", self.entries[:2]])
        xack = self.reply(b"XACK", 2, at=-2)
        self.assertEqual(xack[3:], (b"5-0", b"5-1"))
        self.reply(b"XREADGROUP", [])
        self.assertEqual(self.successResultOf(done), 3)
        got = [p.topic for p in self.here.received() if isinstance(p, Publish)]
        self.assertEqual(got, ["t/0", "t/1", "t/2"])
        self.assertEqual(self.drain.unstored, set())

    def test_a_stopping_node_stops_trying(self) -> None:
        done = self.drain.run_until_done()
        self.node._stopped = True
        self.node.commands.replies[-1].errback(ConnectionLost("stopping"))
        self.failureResultOf(done, ConnectionLost)

    def test_what_could_not_be_stored_stays_pending(self) -> None:
        """A batch whose store writes failed (copies in persistent sessions that are
        not in Redis; one write of the batch is enough) is neither acknowledged nor
        delivered again: it stays pending in the dead node's stream, and ``unstored``
        keeps the stream in this node's drains (failover.py), for this node's own
        adopter."""
        deliver_one = self.drain._deliver_one

        def refused(entry_id: bytes, *args: object) -> list:
            deliver_one(entry_id, *args)  # type: ignore[arg-type]
            return [fail(StorageError("refused"))] if entry_id == b"5-1" else []

        self.drain._deliver_one = refused  # type: ignore[method-assign]
        done = self.drain.run_until_done()
        self.reply(b"XAUTOCLAIM", [b"0-0", self.entries[:2]])
        self.reply(b"XREADGROUP", [[b"s:Z", self.entries[2:]]])
        xack = self.reply(b"XACK", 1, at=-2)  # the 2nd batch's
        self.assertEqual(xack[3:], (b"5-2",))
        self.reply(b"XREADGROUP", [])
        self.assertNoResult(done)
        self.clock.advance(RETRY)
        self.reply(b"XAUTOCLAIM", [b"0-0", self.entries[:2]])  # still pending
        self.assertEqual(self.node.commands.sent[-2][0], b"XAUTOCLAIM")  # no XACK
        self.reply(b"XREADGROUP", [])
        self.assertEqual(self.successResultOf(done), 3)
        self.assertEqual(self.drain.unstored, {b"5-0", b"5-1"})
        got = [p.topic for p in self.here.received() if isinstance(p, Publish)]
        self.assertEqual(got, ["t/0", "t/1", "t/2"])
