"""A node started again under its own name: what its previous run left is its own.

A run that died without stopping (``kill -9``, a crash) leaves its lease in Redis for up
to :data:`failover.LEASE` seconds.  Started again within it (a supervisor's quick
restart, systemd's ``RestartSec=2``), the new run's ``JOIN`` (``fence.py``) renews the
lease under a new epoch before any survivor judged the old one gone: nobody adopts it.
The same holds for a lone node (nobody can), and for a run whose previous one stopped
cleanly and that starts before a survivor has looked.  The new run then takes the
previous run's place itself, as an adopter would (``failover.py``):

- its sessions are those whose home is still this node: restored, with their wills
  (``ClusterNode.restored``);
- its stream is read only once they are (it used to be read first: what the
  previous run had read and not acknowledged, and what came while it was down, was
  delivered to no session and acknowledged: every such QoS 1/2 message of a persistent
  session was lost, 279 of 800 in ``tests/test_cluster_restart.py``);
- an entry the previous run had read is not delivered again into a session it had
  delivered it into (the session's mark of this stream, ``RedisStore.mark``, as the
  adopter's drain skips it: ``drain.py``), so a QoS 2 subscriber does not get it twice;
- a handover request from another node (a client of this node reconnecting there), and
  a CONNECT here, wait until both are done (:attr:`Restart.gate`): answered before, the
  request let go of nothing and the session's messages still in the stream went to
  nobody.

The dead nodes' streams the previous run was delivering (its ``drains``, ``drain.py``)
are this run's to go on with, with the marks of those streams in the restored sessions
and the sessions the previous run took with each (``P:cluster:adopted:NODE:DEAD``, so
that a message this node's own sessions had from its own stream does not come twice).

A previous run that *was* adopted (its epoch gone) is the adopter's: ``JOIN`` waits
while the adoption is under way, and the new run begins empty, as before.  While the
adopter still delivers the previous run's stream (``drain.py``, which reads it with
the consumer group of the node's name, as this run does), this run's ``JOIN`` puts a
marker entry into the stream, where the drain stops, leaving what follows (this run's
messages) to this run; and this run reads its stream only once the drain is over.
Before, it read entries from under the drain and delivered them to nobody (279 of 800
lost).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import Logger

from mqtt_twisted.cluster.adoption import Adoption
from mqtt_twisted.cluster.batch import Item
from mqtt_twisted.cluster.drain import PATIENCE, deliver_one_unless, entry_key
from mqtt_twisted.cluster.inbox import deliver_items

if TYPE_CHECKING:
    from mqtt_twisted.cluster.node import ClusterNode

log = Logger()

#: Seconds between looks at whether a survivor still delivers this node's previous
#: run's stream, and how long this run waits for that at most (a drain that failed
#: leaves the stream in its ``drains`` set): a drain's patience and a minute.
POLL = 0.5
DRAIN_PATIENCE = PATIENCE + 60.0

#: The node delivering this node's stream (a ``drains:NODE`` set names it), or "".
#: KEYS: the set of nodes; ARGV: the drains prefix, this node.
_DRAINER = b"""
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('SISMEMBER', ARGV[1] .. node, ARGV[2]) == 1 then return node end
end
return ''
"""


class Restart:
    """This run of a node taking over what its previous run left, when nobody adopted it."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        #: What handover requests and CONNECTs for this node's sessions wait for
        #: (``failover.wait_for``): the sessions restored and the previous run's
        #: unacknowledged entries delivered.
        self.gate = Adoption()
        #: client id -> the last entry of this node's stream its previous run delivered
        #: into the session (``drain.entry_key``).
        self.marks: dict[str, tuple[int, int, int]] = {}
        #: stream -> client id -> its mark of that stream (the dead nodes' streams the
        #: previous run delivered: :meth:`resume_drains`).
        self.others: dict[bytes, dict[str, bytes]] = {}
        self.skipped = 0
        self._stream = node.keys.inbox(node.name)
        #: The survivor delivering the previous run's stream when this run joined.
        self.drainer = b""

    def begin(self) -> None:
        """Before this node's connections open: a handover request waits (a request
        comes on the control channel as soon as it is subscribed)."""
        self.node.failover.adoptions[self.node.name] = self.gate

    def joined(self, previous: bytes, left_ms: int, drainer: bytes) -> None:
        """``JOIN`` said what became of the previous run: its epoch if still current
        (nobody adopted it), what its lease had left, who delivers its stream."""
        node = self.node
        self.drainer = drainer
        if drainer:
            log.info("cluster {name}: its previous run was adopted and its stream is being "
                     "delivered by {by}: this run reads it once that is over",
                     name=node.name, by=drainer.decode())
        if not previous:
            return
        if left_ms > 0:
            log.info("cluster {name}: its previous run (epoch {epoch}) did not stop and "
                     "its lease had {s:.1f} s left, so nobody adopted it: this run "
                     "recovers its sessions and stream", name=node.name,
                     epoch=previous.decode(), s=left_ms / 1000)
        else:
            log.info("cluster {name}: its previous run (epoch {epoch}) was not adopted: "
                     "this run recovers its sessions and stream", name=node.name,
                     epoch=previous.decode())

    def loaded(self, state: Any) -> None:
        """A stored session restored here at start: how far the previous run
        delivered this node's stream into it, and the dead nodes' streams it was
        delivering (:meth:`resume_drains`)."""
        for stream, mark in getattr(state, "marks", {}).items():
            if stream == self._stream:
                self.marks[state.clientId] = entry_key(mark)
            else:
                self.others.setdefault(stream, {})[state.clientId] = mark

    def restored(self) -> None:
        """The sessions are restored: read the stream, what the previous run left first
        (skipping where it was delivered), then let the requests waiting go on."""
        reader = self.node.inbox
        if self.marks:
            reader.deliver = self.deliver
        reader.caught_up.addCallback(self._caught_up)
        if self.drainer:
            self.end()  # nothing of the previous run is here: nothing to wait for
        self.read(reader, self.drainer)
        d = self.resume_drains()
        d.addErrback(self.node._failed, "going on with its previous run's drains")

    @inlineCallbacks
    def resume_drains(self) -> Any:
        """The dead nodes' streams the previous run was delivering when it died, if
        nobody adopted it (then they would be the adopter's): this run goes on with
        them.  Before, they waited in this node's drains for its next death."""
        node = self.node
        failover = node.failover
        owners = yield node.commands.command(b"SMEMBERS",
                                             failover.drains_prefix + node.group)
        for raw in owners:
            owner = raw.decode("utf-8")
            members = yield node.commands.command(b"SMEMBERS", failover.adopted_key(owner))
            # Unknown (none recorded): every session here is given what matches.
            adopted = {m.decode("utf-8") for m in members if m} if members else None
            log.info("cluster {name}: its previous run was delivering node {owner}'s "
                     "stream: this run goes on with it", name=node.name, owner=owner)
            failover.drain(owner, self.others.get(node.keys.inbox(owner)), adopted)
        self.others = {}

    def read(self, reader: Any, drainer: bytes) -> None:
        """Start ``reader`` (this node's stream), once ``drainer`` (if any) no longer
        delivers the previous run's (a node rejoining after it was fenced too)."""
        if not drainer:
            reader.start()
            return
        d = self._after_drain(drainer)
        d.addErrback(self.node._failed, "waiting for its stream's drain")
        d.addCallback(lambda _: reader.start())  # (it reads nothing once stopped)

    @inlineCallbacks
    def _after_drain(self, by: bytes) -> Any:
        """Until no survivor delivers the previous run's stream (at most
        :data:`DRAIN_PATIENCE` seconds)."""
        node = self.node
        waited = 0.0
        while waited < DRAIN_PATIENCE:
            drainer = yield node.commands.command(
                b"EVAL", _DRAINER, 1, node.keys.nodes, node.failover.drains_prefix,
                node.group)
            if not drainer:
                return
            yield deferLater(node.reactor, POLL, lambda: None)
            waited += POLL
        log.warn("cluster {name}: {by} still lists this node's stream among those it "
                 "delivers after {s:.0f} s: reading it anyway", name=node.name,
                 by=by.decode(), s=waited)

    def _caught_up(self, _: Any) -> None:
        self.node.inbox.deliver = deliver_items
        if self.skipped:
            log.info("cluster {name}: {n} copies its previous run had delivered were not "
                     "delivered again", name=self.node.name, n=self.skipped)
        self.end()

    def end(self) -> None:
        """Nothing waits for this run's recovery any longer (done, or stopping)."""
        self.marks = {}
        failover = self.node.failover
        if failover.adoptions.get(self.node.name) is self.gate:
            del failover.adoptions[self.node.name]
        self.gate.end()

    def deliver(self, node: ClusterNode, origin: str, items: list[Item], start: int = 0,
                publisher: Any = None, entry_id: bytes | None = None,
                stop: int | None = None) -> tuple[int, list[Any]]:
        """``inbox.deliver_items``, except into the sessions the previous run had
        delivered each message into (their marks are at or past it)."""
        end = len(items) if stop is None else stop
        index = start
        writes: list[Any] = []
        while index < end:
            key = entry_key(entry_id, index) if entry_id is not None else None
            done = {c for c, m in self.marks.items() if key is not None and m >= key}
            if not done:  # every mark is behind: the rest as usual
                if key is not None:
                    self.marks = {}
                at, more = deliver_items(node, origin, items, index, publisher, entry_id,
                                         end)
                return at, writes + more
            index, more = deliver_one_unless(self, done, None, node, origin, items,
                                             index, publisher, entry_id)
            writes += more
            if publisher is not None and publisher.paused:
                break
        return index, writes
