"""The drain's patience with a client that does not come back (``cluster/drain.py``):
an adopter waits for a restored session at its high-water mark so that its client,
back soon, gets every message; one that never comes back holds the drain (and every
other session's messages in the dead node's stream) up once, not once a message.

Sans-IO: a fake clock, a recording Redis link, a sans-IO broker with FakeClients
(``tests/test_cluster_drain.py`` runs real nodes, with a client that comes back).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.cluster.drain import PATIENCE, POLL, Drain
from mqtt_twisted.cluster.link import NodeLink
from mqtt_twisted.cluster.router import ClusterRouter
from mqtt_twisted.codec.packets import Publish
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.testing import FakeClient, make_broker
from tests.test_cluster_batch import blob, fake_node


class PatienceTests(SynchronousTestCase):

    def setUp(self) -> None:
        # Queues of 4, high-water mark 2.
        self.broker, self.clock = make_broker(BrokerSettings(max_queued=4))
        node = self.node = fake_node(self.broker, self.clock)
        node.router = ClusterRouter(self.broker.router, "A", NodeLink(node),  # type: ignore[arg-type]
                                    self.broker.journal.persist)
        self.broker.router = node.router
        away = FakeClient(self.broker)
        away.connect("away", clean=False)
        away.subscribe("t/#", qos=1)
        away.disconnect()
        self.here = FakeClient(self.broker)
        self.here.connect("here")
        self.here.subscribe("t/#", qos=1)
        self.drain = Drain(node, "Z")  # type: ignore[arg-type]
        self.entries = [(b"5-%d" % i, [b"o", b"B", b"m", blob(f"t/{i}"), b"d", b"A"])
                        for i in range(10)]

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
