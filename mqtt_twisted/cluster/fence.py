"""Owner epochs: a node that was adopted while it was cut off finds out, and harms nothing.

Every run of a node, and every rejoin after it was fenced, takes a new epoch
(``INCR P:cluster:epoch``) and records it under ``P:cluster:epoch:NODE``.  A client's
owner record is the pair (``P:cluster:home``'s entry for its client id, the epoch of
that node): only scripts change them, each comparing what it expects first.

- The lease is renewed by a script that first checks the node's epoch is still the
  one recorded (:data:`RENEW`); the survivor that wins a node's adoption deletes its
  epoch in the same script (``failover._CHECK``).  So a node that comes back after its
  lease ran out and it was adopted (a pause, a partition) cannot renew: its first
  renewal says ``fenced`` and it never again acts as the owner of anything.
- Every write to a client's keys in the store (sessions, subscriptions, queued and
  in-flight messages, QoS 2 packet ids) is made by a script that checks the owner
  record first (``RedisStore.fence``): while the node has not yet heard that it was
  fenced, its writes fail with ``FENCED`` instead of overwriting the adopter's state.
- Until a renewal sent less than :data:`TRUST_WINDOW` seconds ago has been answered,
  the node does not deliver what it reads from its stream (a pause: the entries the
  adopter has delivered already would be delivered twice).

Fenced, the node disconnects its clients (MQTT 5: DISCONNECT 0x8E, session taken
over: the adopter has it), drops its sessions from memory without writing anything
and without their wills (the adopter published them), and rejoins empty under a new
epoch, taking clients as they connect.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import Logger

from mqtt_twisted.constants import ReasonCode

if TYPE_CHECKING:
    from mqtt_twisted.cluster.node import ClusterNode

log = Logger()

#: Seconds after a renewal was sent during which its success proves the node is not
#: adopted: its lease (failover.LEASE, 3 s) less a margin for clocks and the send.
TRUST_WINDOW = 2.5
#: Seconds between a node's attempts to join while a survivor adopts its previous run.
JOIN_POLL = 0.2

#: A new epoch for this node, its lease and its place in the set of nodes, at once
#: (a node in the set without a lease is adopted).  Refused while a survivor adopts
#: this node's previous run (the adopt key lives at most ``failover.ADOPT_TTL``).
#: When a survivor is still to deliver the previous run's stream (a ``drains:NODE``
#: set names it), a marker entry (``j``) goes into the stream: the drain stops there
#: and leaves the rest, this run's, to it (``drain.py``, ``restart.py``).  KEYS: the
#: counter, the node's epoch key, its lease, the set of nodes, its adopt key, its
#: stream; ARGV: the node, the lease in ms, the drains prefix.  ``{0}`` when refused,
#: else ``{epoch, the previous run's epoch if it is still current (not adopted) or
#: "", the ms its lease had left, the node delivering its stream or ""}``.
JOIN = b"""
if redis.call('EXISTS', KEYS[5]) == 1 then return {0} end
local drainer = ''
for _, node in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  if redis.call('SISMEMBER', ARGV[3] .. node, ARGV[1]) == 1 then drainer = node end
end
local previous = redis.call('GET', KEYS[2]) or ''
local left = redis.call('PTTL', KEYS[3])
local epoch = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], epoch)
redis.call('SET', KEYS[3], epoch, 'PX', ARGV[2])
redis.call('SADD', KEYS[4], ARGV[1])
if drainer ~= '' then redis.call('XADD', KEYS[6], '*', 'j', epoch) end
return {epoch, previous, left, drainer}
"""
#: KEYS[1] the node's epoch key, KEYS[2] its lease; ARGV: epoch, lease in ms.
#: 1: renewed; 0: the epoch moved on (the node was adopted): fenced.
RENEW = b"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
"""


class Fence:
    """This node's epoch, and what it does once it learns it was adopted."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        keys = node.keys
        self.counter = keys.prefix + b"epoch"
        self.key = keys.prefix + b"epoch:" + node.name.encode()
        #: This node's current epoch (bytes, as Redis returns and compares it).
        self.epoch = b""
        #: When the newest renewal that was answered as renewed was sent.
        self.confirmed_at: float | None = None
        self.fenced = 0  # times this node found out it had been adopted
        self._waiting: list[Callable[[], Any]] = []
        self._rejoining = False

    @inlineCallbacks
    def join(self) -> Any:
        """Take a new epoch, once no survivor adopts this node's previous run; the
        store's writes carry it from now on.  Fires with ``(the previous run's epoch if
        it was still current, else b"", the ms its lease had left, the node delivering
        its stream or b"")``."""
        node = self.node
        failover = node.failover
        told = False
        while True:
            sent_at = node.reactor.seconds()
            reply = yield node.commands.command(
                b"EVAL", JOIN, 6, self.counter, self.key,
                failover.alive_prefix + node.group, node.keys.nodes,
                failover.adopt_prefix + node.group, node.keys.inbox(node.name),
                node.group, failover.lease_ms, failover.drains_prefix)
            if reply[0]:
                break
            if not told:
                told = True
                log.info("cluster {name}: its previous run is being adopted: joining once "
                         "that is over", name=node.name)
            yield deferLater(node.reactor, JOIN_POLL, lambda: None)
        epoch, previous, left, drainer = reply
        self._joined(epoch, sent_at)
        return previous, left, drainer

    def _joined(self, epoch: Any, sent_at: float) -> None:
        node = self.node
        self.epoch = str(epoch).encode() if isinstance(epoch, int) else epoch
        self.confirmed_at = sent_at
        node.store.fence = (node.keys.home, self.key, node.group, self.epoch)
        log.info("cluster {name}: epoch {epoch}", name=node.name, epoch=self.epoch.decode())

    def renewal(self, lease_ms: int, alive_key: bytes) -> Deferred[Any]:
        """Renew the lease; fires with ``(answer, the epoch it was sent for)``."""
        epoch = self.epoch
        d = self.node.lease.command(b"EVAL", RENEW, 2, self.key, alive_key, epoch,
                                       lease_ms)
        d.addCallback(lambda reply: (reply, epoch))
        return d

    # --- trust ---

    def renewed(self, answer: tuple[Any, bytes], sent_at: float) -> bool:
        """A renewal's answer; False (and the node drops everything) when fenced."""
        reply, epoch = answer
        if epoch != self.epoch:
            return False  # sent for an epoch that is over: it says nothing of this one
        if reply == 0:
            self.lost()
            return False
        if self.confirmed_at is None or sent_at > self.confirmed_at:
            self.confirmed_at = sent_at
        waiting, self._waiting = self._waiting, []
        for callback in waiting:
            callback()
        return True

    def trusted(self) -> bool:
        """Whether this node surely still owns its clients: a renewal sent within
        :data:`TRUST_WINDOW` seconds was answered (nobody adopts a node with a lease)."""
        at = self.confirmed_at
        return at is not None and self.node.reactor.seconds() - at < TRUST_WINDOW

    def when_trusted(self, callback: Callable[[], Any]) -> None:
        """Call ``callback`` after the next renewal that says this node is not fenced."""
        self._waiting.append(callback)

    # --- fenced ---

    def lost(self) -> None:
        """This node was adopted while it could not renew its lease: let go of everything
        without writing, then rejoin empty."""
        if self._rejoining:
            return
        self._rejoining = True
        self.fenced += 1
        node = self.node
        log.warn("cluster {name}: this node was adopted by another one (its epoch "
                 "{epoch} is over): disconnecting its clients and rejoining empty",
                 name=node.name, epoch=self.epoch.decode())
        self._waiting = []
        node.moved.clear()
        node.barriers.clear()
        dropped = drop_sessions(node.broker)
        log.info("cluster {name}: dropped {n} sessions", name=node.name, n=dropped)
        d = node.rejoin()
        d.addErrback(node._failed, "rejoining")
        d.addBoth(self._rejoined)

    def _rejoined(self, _: Any) -> None:
        self._rejoining = False


def drop_sessions(broker: Any) -> int:
    """Forget every session here, writing nothing: their clients are disconnected
    (MQTT 5: DISCONNECT 0x8E), no will is sent and no timer left; the sessions live
    on the node that adopted this one.  Returns how many were dropped."""
    sessions = list(broker.sessions.values())
    connections = []
    for session in sessions:
        for call in (session.expiry_call, session.will_call):
            if call is not None and call.active():
                call.cancel()
        session.expiry_call = session.will_call = None
        session.will = None
        conn = session.connection
        if conn is not None:
            session.connection = None  # connection_ended then leaves the session alone
            broker.stats.client_disconnected()
            connections.append(conn)
        broker.offline.back(session)
        if broker.sessions.get(session.clientId) is session:
            del broker.sessions[session.clientId]
        for topic_filter in session.subscriptions:
            broker.router.remove(session.clientId, topic_filter)
    for conn in connections:
        conn.clean_exit = True
        conn.close(ReasonCode.SESSION_TAKEN_OVER)
    return len(sessions)
