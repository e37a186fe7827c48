"""Cluster totals for ``$SYS``, and the share groups' weights, once a tick.

Every :data:`INTERVAL` a node writes its counters to one hash field
(``P:cluster:stats``, field = node, value = the counters of :data:`FIELDS`, spaces
between) and reads back those of the other nodes whose lease is alive, in one
script (one ``EVAL`` per tick, none per message); fields of nodes whose lease is gone
are dropped there.  ``$SYS/broker/cluster/...`` then says the totals: this node's
live counters plus the peers' of the last tick (at most a tick old), and how many
nodes are alive.  Counters are per node since it started: a node that dies takes its
own out of the totals.

The same tick registers the share groups' weights that changed (their members'
clients came or went, ``shared.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.task import LoopingCall

if TYPE_CHECKING:
    from mqtt_twisted.cluster.node import ClusterNode

#: Seconds between two ticks (the lease's renewal pace).
INTERVAL = 1.0
#: The counters each node writes, under ``$SYS/broker/cluster/`` in the totals.
FIELDS = ("clients/connected", "messages/received", "messages/sent",
          "subscriptions/count")

_EXCHANGE = b"""
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local out = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i] ~= ARGV[1] then
    if redis.call('EXISTS', ARGV[3] .. all[i]) == 1 then
      out[#out + 1] = all[i]
      out[#out + 1] = all[i + 1]
    else
      redis.call('HDEL', KEYS[1], all[i])
    end
  end
end
return out
"""


def decode_counters(value: bytes) -> list[int] | None:
    """A node's counters as written by :meth:`ClusterStats.counters`; None if not."""
    try:
        counters = [int(v) for v in value.split()]
    except ValueError:
        return None
    return counters if len(counters) == len(FIELDS) else None


class ClusterStats:
    """This node's counters out, the peers' in, and their totals."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self.key = node.keys.prefix + b"stats"
        #: The other alive nodes' counters at the last tick.
        self.peers: dict[str, list[int]] = {}
        self._loop: LoopingCall | None = None

    def start(self) -> None:
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.node.reactor
        self._loop.start(INTERVAL, now=True)

    def stop(self) -> Any:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return self.node.commands.command(b"HDEL", self.key, self.node.group)

    def counters(self) -> list[int]:
        broker = self.node.broker
        stats = broker.stats
        return [stats.clients_connected, stats.messages_received, stats.messages_sent,
                int(broker.router.count())]

    def tick(self) -> None:
        node = self.node
        node.router.refresh_weights()
        value = " ".join(str(c) for c in self.counters()).encode()
        d = node.commands.command(b"EVAL", _EXCHANGE, 1, self.key, node.group, value,
                                  node.failover.alive_prefix)
        d.addCallbacks(self._exchanged, node._failed, errbackArgs=("exchanging counters",))

    def _exchanged(self, reply: list[Any]) -> None:
        peers = {}
        for i in range(0, len(reply), 2):
            counters = decode_counters(reply[i + 1])
            if counters is not None:
                peers[reply[i].decode("utf-8")] = counters
        self.peers = peers

    def sys_values(self) -> dict[str, str]:
        """``cluster/...`` totals under ``$SYS/broker/`` (the router adds them)."""
        totals = self.counters()
        for counters in self.peers.values():
            totals = [a + b for a, b in zip(totals, counters)]
        values = {f"cluster/{name}": str(total) for name, total in zip(FIELDS, totals)}
        values["cluster/nodes/alive"] = str(len(self.peers) + 1)
        return values
