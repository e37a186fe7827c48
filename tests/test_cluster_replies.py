"""A busy node's Redis connections in a reconnect storm (issue 16, "Reconnect storm"):
replies handed to their callbacks a slice per reactor turn (``cluster/pace.py``,
``Paced``), and the lease renewed on a connection of its own, written at once
(``cluster/client.py``, ``write_now``).  Before, a survivor's turn that read thousands
of replies (each resuming a session) ran 0.7-1.8 s at load 10-15, and a renewal
written in it left only when the reactor next polled, behind the turn's reads.
Sans-IO: a ``Clock`` whose time the callbacks advance, ``StringTransport``s."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.cluster import failover, fence
from mqtt_twisted.cluster.client import RedisClient, RedisProtocol
from mqtt_twisted.cluster.node import ClusterNode
from mqtt_twisted.cluster.pace import CHUNK, SLICE, Paced
from mqtt_twisted.store.redis import parse_url
from mqtt_twisted.testing import make_broker
from tests.test_cluster_batch import FakeCommands
from tests.test_cluster_pace import one_turn


class PacedTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.handed: list[int] = []
        #: Seconds each chunk's callbacks take (by the clock).
        self.cost = 0.0
        self.paced = Paced(self.clock, self.hand)

    def hand(self, chunk: list[int]) -> None:
        self.handed += chunk
        self.clock.rightNow += self.cost

    def test_a_few_at_once(self) -> None:
        """Up to a chunk's worth read at once is handed at once, whatever it costs."""
        self.cost = 1.0
        self.paced.feed(list(range(CHUNK)))
        self.assertEqual(self.handed, list(range(CHUNK)))
        self.assertEqual(self.clock.calls, [])

    def test_many_in_slices_in_order(self) -> None:
        """Thousands read at once: a slice's worth of time this turn, the rest on the
        next turns; what is read meanwhile comes after them, in order."""
        self.cost = SLICE / 2.5  # three chunks a slice
        self.paced.feed(list(range(10 * CHUNK)))
        self.assertEqual(self.handed, list(range(3 * CHUNK)))
        self.paced.feed([-1])  # read in the next turn, before the slice runs
        self.assertEqual(len(self.handed), 3 * CHUNK)
        for _ in range(2):
            one_turn(self.clock)
        self.assertEqual(self.handed, [*range(9 * CHUNK)])
        one_turn(self.clock)
        self.assertEqual(self.handed, [*range(10 * CHUNK), -1])
        self.assertEqual(self.clock.calls, [])
        self.assertEqual(self.paced.slices, 3)

    def test_flush_hands_the_rest_and_clear_drops_it(self) -> None:
        """A connection lost hands what it had read (its commands have their replies);
        one given up as broken drops it."""
        self.cost = SLICE
        self.paced.feed(list(range(4 * CHUNK)))
        self.paced.flush()
        self.assertEqual(self.handed, list(range(4 * CHUNK)))
        self.assertEqual(self.clock.calls, [])
        self.paced.feed(list(range(4 * CHUNK)))
        self.paced.clear()
        one_turn(self.clock)
        self.assertEqual(len(self.handed), 5 * CHUNK)


class _Transport(StringTransport):
    """A TCP transport's buffer: ``write`` keeps, ``doWrite`` (the reactor's) sends."""

    def __init__(self) -> None:
        super().__init__()
        self.buffered: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.buffered.append(data)

    def doWrite(self) -> None:
        for data in self.buffered:
            super().write(data)
        self.buffered = []


def connected(clock: Clock, urgent: bool = False) -> tuple[RedisClient, RedisProtocol]:
    client = RedisClient(clock, None, urgent=urgent)
    client._service = object()  # type: ignore[assignment]  # (started: commands go out)
    protocol = RedisProtocol(client)
    protocol.makeConnection(_Transport())
    return client, protocol


class ProtocolTests(SynchronousTestCase):
    def test_replies_paced_across_turns(self) -> None:
        """A read of many replies answers a slice's worth of commands this turn, the
        rest on the next; a lost connection answers what it had read before failing
        the rest."""
        clock = Clock()
        client, protocol = connected(clock)
        answered: list[Any] = []
        failed: list[Any] = []

        def slow(reply: Any) -> None:
            answered.append(reply)
            clock.rightNow += SLICE / (1.5 * CHUNK)  # two chunks a slice

        for _ in range(8 * CHUNK + 1):
            client.command(b"PING").addCallbacks(slow, failed.append)
        protocol.dataReceived(b"+PONG\r\n" * (8 * CHUNK))
        self.assertEqual(len(answered), 2 * CHUNK)
        one_turn(clock)
        self.assertEqual(len(answered), 4 * CHUNK)
        protocol.connectionLost(None)
        self.assertEqual((len(answered), len(failed)), (8 * CHUNK, 1))

    def test_urgent_writes_at_once(self) -> None:
        """The lease's connection sends each command as it is made; another connection
        leaves it to the reactor's next poll (after the sockets it found readable)."""
        clock = Clock()
        _, slow = connected(clock)
        urgent_client, urgent = connected(clock, urgent=True)
        slow.client.command(b"PING")
        urgent_client.command(b"PING")
        self.assertEqual(slow.transport.value(), b"")
        self.assertEqual(urgent.transport.value(), b"*1\r\n$4\r\nPING\r\n")


class LeaseConnectionTests(SynchronousTestCase):
    def test_renewals_and_looks_on_the_lease_connection(self) -> None:
        """The lease's renewal and the look for dead nodes go on the lease's own
        connection, none on the commands connection (where a storm's thousands of
        commands and replies are); the node's lease connection writes at once."""
        broker, clock = make_broker()
        node = ClusterNode(clock, parse_url("redis://127.0.0.1:1/0"), "A", broker)
        self.assertTrue(node.lease.urgent)
        self.assertFalse(node.commands.urgent)
        lease = FakeCommands()
        lease.protocol = object()  # type: ignore[attr-defined]  # (connected)
        node.commands, node.lease = FakeCommands(), lease  # type: ignore[assignment]
        node.failover._connection = lease.protocol  # type: ignore[attr-defined]
        node.failover._healthy_since = -100.0  # renewed promptly for long: it judges
        node.failover._tick()
        scripts = [a[1] for a in lease.sent if a[0] == b"EVAL"]
        self.assertEqual(scripts, [failover._CHECK, fence.RENEW])
        self.assertEqual(node.commands.sent, [])  # type: ignore[attr-defined]
