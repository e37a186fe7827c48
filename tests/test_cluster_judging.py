"""A node declares another one gone only on a current view of Redis (issue 16: Redis
failover under Sentinel, ``cluster/failover.py``).

Found by ``tests/test_cluster_sentinel.py::test_master_killed_mid_stream``, which lost
826 and 1,210 acknowledged messages in two of three runs: node A's lease tick, the
first after the master was killed, put its look for dead nodes (``_CHECK``) in the
queue of its lost connection; written to the new master 4 s later, it found node B's
lease expired (nobody could renew during the outage) and adopted B, which was alive.
B was fenced and dropped its subscriber's session; A restored it offline and its queue
(1,000) overflowed with the stream still coming, dropping the oldest messages.

Node A here is a real ``Failover`` and ``Fence`` on a real redis-server, its ticks
driven by a ``Clock``; node B exists only as its keys in Redis.
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.internet.defer import inlineCallbacks

from mqtt_twisted.cluster.client import RedisClient
from mqtt_twisted.cluster.failover import LEASE
from mqtt_twisted.cluster.node import ClusterNode
from mqtt_twisted.store.redis import endpoint, parse_url
from mqtt_twisted.testing import make_broker
from tests.test_store_redis import RedisTestCase

ALIVE_B = b"mqtt:cluster:alive:B"
EPOCH_B = b"mqtt:cluster:epoch:B"
ADOPT_B = b"mqtt:cluster:adopt:B"


class JudgingTests(RedisTestCase):
    @inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        # Redis is killed (SIGKILL) and restarted below: what A and B wrote must be in
        # the append-only file by then.  With the default ``everysec`` Redis answers a
        # write whose AOF write it postponed behind a slow fsync (a loaded CI disk), and
        # a SIGKILL loses it: B's epoch gone after the restart read as "adopted" (the
        # flaky CI failure of test_no_judging_over_a_lost_connection).
        yield self.raw(b"CONFIG", b"SET", b"appendfsync", b"always")
        broker, self.clock = make_broker()
        options = parse_url(self.server.url())
        self.node = node = ClusterNode(self.clock, options, "A", broker)
        node.install()
        # The commands connection on the real reactor, the lease's too (one here, written
        # at once as the lease's is); the lease ticks on the Clock.
        node.commands = node.lease = RedisClient(
            self.reactor, endpoint(self.reactor, options), timeout=30.0,
            name="cluster A commands", urgent=True)
        node.commands.start()
        self.addCleanup(node.commands.stop)
        yield node.commands.ready()
        yield node.fence.join()
        yield node.failover.start()
        self.addCleanup(self._stop_ticks)
        # Node B: alive, with an epoch.
        yield self.raw(b"SADD", b"mqtt:cluster:nodes", b"B")
        yield self.raw(b"SET", EPOCH_B, b"99")
        yield self.raw(b"SET", ALIVE_B, b"99", b"PX", b"60000")
        for _ in range(5):  # a lease and a tick of prompt renewals: A judges
            yield self.tick()
        self.assertTrue(node.failover.judging())

    def _stop_ticks(self) -> None:
        loop = self.node.failover._loop
        if loop is not None and loop.running:
            loop.stop()

    @inlineCallbacks
    def tick(self) -> Any:
        """One lease tick, and its commands answered."""
        self.clock.advance(LEASE / 3)
        yield self.node.commands.command(b"PING")

    @inlineCallbacks
    def adopted(self) -> Any:
        """Whether A has begun to adopt B (B's epoch ended, or A's adoption under way)."""
        epoch = yield self.raw(b"GET", EPOCH_B)
        adopting = yield self.raw(b"EXISTS", ADOPT_B)
        return epoch is None or bool(adopting) or "B" in self.node.failover.adoptions

    @inlineCallbacks
    def test_a_dead_node_is_adopted(self) -> Any:
        """The control: B's lease gone while A renews its own promptly, A's next tick
        adopts B (its epoch ends)."""
        yield self.raw(b"DEL", ALIVE_B)
        yield self.tick()
        self.assertTrue((yield self.adopted()))
        d = self.node.failover.adopting.get("B")
        if d is not None:
            yield d

    @inlineCallbacks
    def test_no_judging_over_a_lost_connection(self) -> Any:
        """Redis killed: a tick while the connection is down writes no look for dead
        nodes into the queue the reconnection sends, which would find every lease run
        out (B's here) and adopt B, alive (before: adopted)."""
        yield self.raw(b"SET", ALIVE_B, b"99", b"PX", b"800")
        yield self.server.stop("KILL")
        while self.node.commands.protocol is not None:
            yield self.wait(0.01)
        yield self.tick_unanswered()
        yield self.wait(1.0)  # B's lease runs out meanwhile
        yield self.server.restart()
        yield self.node.commands.command(b"PING")  # reconnected; the queue answered
        self.assertFalse((yield self.adopted()))
        self.assertFalse(self.node.failover.judging())

    @inlineCallbacks
    def test_no_judging_on_a_late_view(self) -> Any:
        """Redis stopped (SIGSTOP: the connection stays up, nothing fails): a look for
        dead nodes written then is run 2.5 s late, when B's lease has run out as A's
        nearly has; Redis refuses it (A's own lease must be fresh) instead of
        adopting B (before: adopted)."""
        yield self.raw(b"SET", ALIVE_B, b"99", b"PX", b"800")
        self.server.signal(signal.SIGSTOP)
        try:
            self.clock.advance(LEASE / 3)  # the tick: its commands are written
            yield self.wait(2.5)
        finally:
            self.server.signal(signal.SIGCONT)
        yield self.node.commands.command(b"PING")
        self.assertFalse((yield self.adopted()))

    @inlineCallbacks
    def tick_unanswered(self) -> Any:
        """One lease tick whose commands wait for the connection."""
        self.clock.advance(LEASE / 3)
        yield self.wait(0)
