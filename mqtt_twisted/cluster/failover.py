"""A node that is gone: a survivor adopts its sessions, takes its routes down and
delivers what was left in its stream.

Each node holds a lease in Redis (``P:cluster:alive:NODE``, ``SET PX``) that it renews
every third of :data:`LEASE`, and at the same pace looks at the other nodes' leases.
The first survivor to take ``P:cluster:adopt:NODE`` (``SET NX PX``) for a node whose
lease is gone adopts it:

1. its sessions: every client id whose home is that node is given this node as its
   home (one script), and each stored session is restored here, which registers its
   filters; a client that was connected when its node died gets its will, after its
   delay, from this node only;
2. its routes: its filters are removed and a RESET tells every node, so that the
   peers stop sending to it (this node stops at once, before step 1);
3. the wills of its clean sessions' clients (``wills.py``).

Then the adopt key goes, and :data:`ADOPT_GRACE` seconds later (forwards already
under way land first) its stream is delivered here in the background, under flow
control (``drain.py``).  A node judges the others only after its own lease has been
renewed promptly for :data:`TRUST` seconds on one connection to Redis: after a Redis
outage every lease has run out, and the nodes, reconnecting one by one, must not adopt
each other.  And Redis itself refuses a look for dead nodes when the judge's own lease
is not fresh (:data:`FRESH`): a look written before the node noticed an outage (its
tick came while the connection was down, or the server hung) would run only when Redis
is back, and find every lease run out (``tests/test_cluster_judging.py``: a Sentinel
failover made a node adopt a live one, whose subscriber's queue then overflowed).
A CONNECT for a client whose node is gone (nobody listens on its control channel)
waits for the lease to run out and for the adoption, which its node runs itself when
nobody else has begun, then resumes the session from whichever node adopted it.  A node that stops cleanly gives its lease up at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqtt_twisted.cluster.adoption import Adoption
from mqtt_twisted.cluster.drain import Drain
from mqtt_twisted.cluster.pace import in_slices
from mqtt_twisted.cluster.routes import RESET, encode_change

if TYPE_CHECKING:
    from mqtt_twisted.cluster.node import ClusterNode

log = Logger()

#: Seconds a node's lease lives unless renewed: how soon a dead node is adopted.
LEASE = 3.0
#: Seconds between taking a dead node's routes down and reading its stream.
ADOPT_GRACE = 1.0
#: Seconds of prompt renewals of its own lease before a node judges the others: a lease,
#: the client's longest reconnection backoff (5 s) and a tick.
TRUST = LEASE + 5.0 + LEASE / 3
#: Milliseconds an adoption may take before another survivor may try again.
ADOPT_TTL = 60_000
#: Milliseconds of the judge's own lease that must be left when Redis runs its look for
#: dead nodes.  The look goes before the tick's renewal, a tick after the last one (2 s
#: of 3 left): a look that Redis runs more than half a tick late is refused.  A node
#: whose renewals reach Redis up to 1.5 ticks apart is then never judged dead by a look
#: delayed by an outage that held back its renewals too.
FRESH = int(LEASE * 1000 / 2)
#: Sessions loaded from the store at once.
BATCH = 500

#: Nodes whose lease is gone, adopted by this one where no other survivor has begun:
#: the winner ends the dead node's epoch in the same step (``fence.py``), so that the
#: node, if it comes back, cannot renew its lease nor write for its old clients.
#: KEYS: the set of nodes, this node's lease; ARGV: this node, the lease, adopt and
#: epoch prefixes, the adoption's TTL, :data:`FRESH`.  -1: this node's own lease is
#: not fresh (the look is late): nobody is judged.
_CHECK = b"""
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[6]) then return -1 end
local won = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if node ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. node) == 0 then
    if redis.call('SET', ARGV[3] .. node, ARGV[1], 'NX', 'PX', ARGV[4]) then
      redis.call('DEL', ARGV[5] .. node)
      won[#won + 1] = node
    end
  end
end
return won
"""
#: One node, for a CONNECT of one of its clients.  KEYS: its lease, its adopt key, its
#: epoch key, this node's lease; ARGV: this node, the adoption's TTL, :data:`FRESH`.
#: 1: won; 0: another survivor has begun, or has adopted it already (its epoch is
#: gone: the adopt key is deleted once an adoption is over, and a second adoption
#: claimed the stream entries the first one was still delivering, which came twice);
#: -1: its lease is back (it is alive); -2: this node's own lease is not fresh (the
#: command ran late): nobody is judged.
_ADOPT_ONE = b"""
if redis.call('PTTL', KEYS[4]) < tonumber(ARGV[3]) then return -2 end
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('DEL', KEYS[3])
return 1
"""
_TAKE_HOMES = b"""
local taken = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i + 1] == ARGV[1] then
    redis.call('HSET', KEYS[1], all[i], ARGV[2])
    taken[#taken + 1] = all[i]
  end
end
return taken
"""
#: The dead node's routes go, and the streams it was still delivering (its own drains,
#: ``P:cluster:drains:NODE``) become this node's, with its own stream: their entries
#: left unacknowledged are delivered here (an adopter that dies while it drains).
#: KEYS: its filters, the set of nodes, its share groups, its drains, this node's
#: drains; ARGV: the dead node, the routes channel, the RESET change.
_DROP = b"""
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
local streams = redis.call('SMEMBERS', KEYS[4])
redis.call('DEL', KEYS[4])
streams[#streams + 1] = ARGV[1]
for _, node in ipairs(streams) do redis.call('SADD', KEYS[5], node) end
return streams
"""


class Failover:
    """This node's lease, and the adoption of nodes whose lease is gone."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        keys = node.keys
        self.alive_prefix = keys.prefix + b"alive:"
        self.adopt_prefix = keys.prefix + b"adopt:"
        self.epoch_prefix = keys.prefix + b"epoch:"
        #: P:cluster:drains:NODE: the dead nodes' streams NODE is delivering.
        self.drains_prefix = keys.prefix + b"drains:"
        #: P:cluster:adopted:NODE:DEAD: the sessions NODE took with DEAD's stream, while
        #: it delivers it (a new run of NODE that goes on with it: ``restart.py``).
        self.adopted_prefix = keys.prefix + b"adopted:"
        self.lease_ms = int(LEASE * 1000)
        self._loop: LoopingCall | None = None
        #: Since when every renewal of this node's lease succeeded (None: the last failed).
        self._healthy_since: float | None = None
        self._renewing = False
        #: The lease's connection the renewals went on since ``_healthy_since``: a
        #: loss of it, even with nothing waiting on it, is an outage (``_connected``).
        self._connection: Any = None
        #: Nodes this node is adopting: the Deferred that fires when it is done, and
        #: which of their sessions are still to come (``adoption.py``).
        self.adopting: dict[str, Deferred[None]] = {}
        self.adoptions: dict[str, Adoption] = {}
        #: Dead nodes whose adoption CONNECTs wait for (``gone``): their Deferreds.
        self._gone: dict[str, list[Deferred[bool]]] = {}
        #: Dead nodes' streams being delivered here (``drain.py``).
        self.drains = 0

    def start(self) -> Deferred[Any]:
        sent_at = self.node.reactor.seconds()
        d = self._renew()
        d.addCallback(self.node.fence.renewed, sent_at)
        d.addCallback(self._started)
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.node.reactor
        self._loop.start(LEASE / 3, now=False)
        return d

    def stop(self) -> Any:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        node = self.node
        return node.lease.command(b"DEL", self.alive_prefix + node.group)

    def _renew(self) -> Deferred[Any]:
        """Renew the lease, unless this node's epoch is over (``fence.py``)."""
        node = self.node
        return node.fence.renewal(self.lease_ms, self.alive_prefix + node.group)

    def rejoined(self) -> None:
        """Fenced and back under a new epoch: judge the others only after a lease."""
        self._healthy_since = None

    def judging(self) -> bool:
        """Whether this node may declare another one gone: its own lease has been
        renewed promptly, without a failure, for :data:`TRUST` seconds, on the
        connection it still has.  After a Redis outage every lease has run out and the
        nodes reconnect one by one (backoff up to 5 s): they must not adopt each other."""
        since = self._healthy_since
        return (since is not None and self.node.reactor.seconds() - since >= TRUST
                and self._connection is not None
                and getattr(self.node.lease, "protocol", None) is self._connection)

    def _connected(self) -> bool:
        """Whether the lease's connection is up and the one of the last look; notes
        the current one.  A tick that comes while it is down would queue its look for
        dead nodes until Redis is back, when every lease has run out."""
        connection = getattr(self.node.lease, "protocol", None)
        same = connection is not None and connection is self._connection
        self._connection = connection
        return same

    def _tick(self) -> None:
        node = self.node
        now = node.reactor.seconds()
        if not self._connected() or self._renewing:
            self._healthy_since = None  # down, lost since, or the last renewal unanswered
        if self.judging():
            # Before this tick's renewal: Redis judges by this node's lease as the last
            # renewal left it (_CHECK refuses a look that runs late, FRESH).
            d = node.lease.command(b"EVAL", _CHECK, 2, node.keys.nodes,
                                      self.alive_prefix + node.group, node.group,
                                      self.alive_prefix, self.adopt_prefix, ADOPT_TTL,
                                      self.epoch_prefix, FRESH)
            d.addCallback(self._looked)
            d.addErrback(node._failed, "looking for nodes that are gone")
        self._renewing = True
        d = self._renew()
        d.addCallbacks(self._renewed, self._not_renewed, callbackArgs=(now,))

    def _looked(self, won: Any) -> None:
        if won == -1:  # Redis ran it late (see FRESH): nobody judged; the next tick looks
            return
        for name in won:
            self.adopt(name.decode("utf-8"))

    def _renewed(self, reply: Any, sent_at: float) -> None:
        self._renewing = False
        if not self.node.fence.renewed(reply, sent_at):
            self._healthy_since = None
            return
        now = self.node.reactor.seconds()
        if self._healthy_since is None or now - sent_at > LEASE / 3:
            self._healthy_since = now  # (again) from now: a late answer is no health

    def _started(self, _: Any) -> None:
        # A node that starts judges after a lease and a tick (every live node has
        # renewed by then), not after the whole TRUST an outage calls for.
        self._healthy_since = self.node.reactor.seconds() - TRUST + LEASE * 4 / 3
        self._connection = getattr(self.node.lease, "protocol", None)

    def _not_renewed(self, failure: Any) -> None:
        self._renewing = False
        self._healthy_since = None
        self.node._failed(failure, "renewing the lease")

    # --- a CONNECT for a client of a node that is gone ---

    def gone(self, dead: str, client_id: str) -> Deferred[bool]:
        """Wait until ``dead``'s lease has run out and it is adopted (by this node if
        nobody has begun), as far as ``client_id`` needs: its home is the adopter's
        (the adoption took the dead node's homes); False when its lease is still
        renewed (it is alive).  The CONNECTs of a dead node's clients share one
        watch: in a reconnect storm thousands of them wait at once, and each polling
        Redis on its own made tens of thousands of commands a second."""
        d: Deferred[bool] = Deferred()
        waiters = self._gone.get(dead)
        if waiters is not None:
            waiters.append(d)
            return d
        waiters = self._gone[dead] = [d]

        def fire(result: Any) -> None:
            for waiter in self._gone.pop(dead, waiters):
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)

        self._watch(dead, client_id).addBoth(fire)
        return d

    @inlineCallbacks
    def _watch(self, dead: str, client_id: str) -> Any:
        node = self.node
        name = dead.encode()
        cut_off = alive = 0.0  # seconds waited for each reason
        while True:
            won = -2  # this node was cut off itself a moment ago: it judges nobody
            if self.judging():
                won = yield node.commands.command(
                    b"EVAL", _ADOPT_ONE, 4, self.alive_prefix + name,
                    self.adopt_prefix + name, self.epoch_prefix + name,
                    self.alive_prefix + node.group, node.group, ADOPT_TTL, FRESH)
            if won >= 0:
                break
            if won == -2:
                if cut_off > TRUST:
                    return False
                cut_off += 0.2
            else:
                if alive > LEASE + 1:
                    return False
                alive += 0.2
            yield deferLater(node.reactor, 0.2, lambda: None)
        if won == 1:
            self.adopt(dead)
        adoption = self.adoptions.get(dead)
        if adoption is not None:
            # Adopted here: the homes are this node's once listed, and the CONNECT
            # waits for its own session only (``wait_for``), not for all of them.
            yield adoption.when_listed()
            return True
        # Another survivor adopts it: go on once the homes are taken there (then ask
        # it, and it answers as the session is restored), or its adoption is over.
        waited = 0.0
        cid = client_id.encode("utf-8")
        while True:
            home, adopting = yield gatherResults([
                node.commands.command(b"HGET", node.keys.home, cid),
                node.commands.command(b"EXISTS", self.adopt_prefix + name)])
            if home != name or not adopting or waited > ADOPT_TTL / 1000:
                return True
            yield deferLater(node.reactor, 0.1, lambda: None)
            waited += 0.1

    def wait_for(self, client_id: str) -> Deferred[Any]:
        """Fires once no adoption under way here is still to restore ``client_id``'s
        session (``adoption.py``)."""
        adoptions = list(self.adoptions.values())
        if not adoptions:
            return succeed(None)
        if len(adoptions) == 1:
            return adoptions[0].wait_for(client_id)
        return gatherResults([a.wait_for(client_id) for a in adoptions], consumeErrors=True)

    # --- adoption ---

    def adopt(self, dead: str) -> Deferred[None]:
        if dead in self.adopting:
            return self.adopting[dead]
        adoption = self.adoptions[dead] = Adoption()
        d = self._adopt(dead, adoption)
        d.addErrback(self.node._failed, f"adopting node {dead}")

        def done(result: Any) -> Any:
            self.adopting.pop(dead, None)
            if self.adoptions.get(dead) is adoption:
                del self.adoptions[dead]
            adoption.end()
            return result

        d.addBoth(done)
        if not d.called:
            self.adopting[dead] = d
        return d

    @inlineCallbacks
    def _adopt(self, dead: str, adoption: Adoption) -> Any:
        node = self.node
        keys = node.keys
        broker = node.broker
        log.info("cluster {name}: node {dead} is gone; adopting its sessions",
                 name=node.name, dead=dead)
        node.turns.mark()  # the longest reactor turn from now on is the adoption's
        taken = yield node.commands.command(b"EVAL", _TAKE_HOMES, 1, keys.home, dead,
                                            node.group)
        client_ids = [c.decode("utf-8") for c in taken]
        adoption.listed(client_ids)
        # Its sessions are here from now on: this node sends it nothing more (the
        # others stop once its filters are dropped below; what they sent is drained).
        node.router.routes.apply(RESET, dead)
        restored: list[int] = [0]
        # What of each stream each session had got already (drain.py skips it there).
        marks: dict[bytes, dict[str, bytes]] = {}

        def restore(loaded: tuple[str, Any]) -> None:
            client_id, state = loaded
            if state is not None and client_id not in broker.sessions:
                broker.restore_session(state)
                restored[0] += 1
                for stream, mark in getattr(state, "marks", {}).items():
                    marks.setdefault(stream, {})[client_id] = mark
            adoption.restored(client_id)  # a CONNECT, a handover waiting for it go on

        # Loaded BATCH at a time (the next batch's loads under way while this one is
        # restored), restored a slice per reactor turn (pace.py): the lease is renewed,
        # sockets are read, and whoever waits for a session goes on as it is restored.
        batches = [client_ids[i:i + BATCH] for i in range(0, len(client_ids), BATCH)]
        loading = gatherResults([broker.store.loadSession(c) for c in batches[0]]) \
            if batches else None
        for at, batch in enumerate(batches):
            states = yield loading
            if at + 1 < len(batches):
                loading = gatherResults([broker.store.loadSession(c)
                                         for c in batches[at + 1]])
            # (From the next turn: this one may have ended the last batch's slices.)
            yield in_slices(node.reactor, zip(batch, states), restore, now=False)
        streams = yield node.commands.command(
            b"EVAL", _DROP, 5, keys.filters(dead), keys.nodes, keys.shared(dead),
            self.drains_prefix + dead.encode(), self.drains_prefix + node.group, dead,
            keys.routes, encode_change(RESET, dead))
        wills = yield node.wills.take(dead)  # its clean sessions' (wills.py)
        inherited = [s.decode("utf-8") for s in streams if s.decode("utf-8") != dead]
        log.info("cluster {name}: adopted node {dead}: {n} sessions, {w} wills of clean "
                 "sessions (longest reactor turn {ms:.0f} ms); its stream in {grace} "
                 "s{also}", name=node.name, dead=dead, n=restored[0], w=wills,
                 ms=node.turns.longest * 1000, grace=ADOPT_GRACE,
                 also=f", and the rest of {', '.join(inherited)}'s, which it was "
                      "delivering" if inherited else "")
        # In the background, under flow control (drain.py): a client of the dead node
        # may connect again meanwhile, and the drain may wait for it.
        # The adoption is over (a CONNECT waiting for it on another node goes on): the
        # dead node is out of the set of nodes, so nobody adopts it again.
        yield node.commands.command(b"DEL", self.adopt_prefix + dead.encode())
        for stream in streams:
            owner = stream.decode("utf-8")
            self._record_adopted(owner, dead, client_ids)
            self.drain(owner, marks.get(keys.inbox(owner)), set(client_ids))

    def adopted_key(self, owner: str, node: bytes | None = None) -> bytes:
        """The key of the sessions ``node`` (this one) took with ``owner``'s stream."""
        return (self.adopted_prefix + (node or self.node.group) + b":"
                + owner.encode("utf-8"))

    def _record_adopted(self, owner: str, dead: str, client_ids: list[str]) -> None:
        """Keep in Redis, while the drain runs, which sessions came with ``owner``'s
        stream: a new run of this node that goes on with the drain gives a message
        that reached this node's own sessions through its own stream only to those
        (``Drain.adopted``).  ``""`` (never a session's id) marks the set as known."""
        commands = self.node.commands
        keys = [self.adopted_key(owner), self.adopted_key(owner, dead.encode("utf-8"))]
        d = commands.command(b"DEL", *keys)
        members = [b""] + [c.encode("utf-8") for c in client_ids]
        for at in range(0, len(members), BATCH):
            d = commands.command(b"SADD", keys[0], *members[at:at + BATCH])
        d.addErrback(self.node._failed, f"recording the sessions taken from {owner}")

    def drain(self, owner: str, marks: dict[str, bytes] | None,
              adopted: set[str] | None) -> Deferred[Any]:
        """Deliver node ``owner``'s stream here (``drain.py``), ADOPT_GRACE seconds from
        now; then it leaves this node's drains (unless what it could not store keeps
        it there: the entries stay pending for this node's own adopter)."""
        node = self.node
        drain = Drain(node, owner, marks, adopted)
        self.drains += 1
        d = deferLater(node.reactor, ADOPT_GRACE, drain.run_until_done)

        def done(_: Any) -> Any:
            if drain.unstored:
                return None
            d = node.commands.command(b"SREM", self.drains_prefix + node.group,
                                      owner.encode("utf-8"))
            return d.addCallback(lambda _: node.commands.command(
                b"DEL", self.adopted_key(owner)))

        d.addCallback(done)
        d.addErrback(node._failed, f"delivering node {owner}'s stream")
        d.addBoth(self._drained)
        return d

    def _drained(self, _: Any) -> None:
        self.drains -= 1

    def delivering(self) -> bool:
        """Whether a dead node's sessions or stream are still coming here (an adoption
        or a drain under way): a session let go meanwhile still has messages to come
        through this node (``moved.py`` keeps forwarding them)."""
        return bool(self.adopting) or self.drains > 0
