"""What a dead node left in its stream, delivered by its adopter under flow control.

The adopter reads the dead node's stream with the dead node's consumer group: first
the entries it had read and not acknowledged (``XAUTOCLAIM``), then those it never
read, acknowledging each batch once its deliveries are stored (``XACK``).  It does
not replay them as fast as it can: the dead node's reader was held back by its
subscribers, and so is this one —

- a connected subscriber that cannot keep up holds the drain back as it would a
  publisher (the broker's flow control, :class:`DrainPublisher`);
- a restored session whose client has not reconnected yet takes entries only up to
  its queue's high-water mark (half of ``--max-queued``): the drain waits, the
  entries in Redis, until its client is back and catches up, the session has gone
  elsewhere, or it has waited :data:`PATIENCE` seconds for that session in all (then
  the session queues as an offline session does, the oldest dropped beyond
  ``--max-queued``: a client that never comes back holds the drain up once, not once
  a message).

An entry the dead node had delivered into a persistent session before it died, but
not acknowledged, is not delivered into that session again: each outbound record the
dead node stored carried the entry (``RedisStore.mark``), the stored session keeps the
last one (``m:STREAM``), and the drain skips that session for every entry up to it.
So a QoS 2 subscriber does not get it twice (its in-flight record, packet id and
PUBREL state, is in the session it resumes).

The adopter's own subscribers are not given a message they had already: one it
published or sent on itself, or whose destinations (``d``) it was among, goes to the
sessions it adopted from the dead node and to the share groups it names only (a
group's copy comes only from the node picked for it, so it is not skipped).

It runs in the background: the adoption is over (and a client of the dead node may
connect again) before it ends.  The dead node may be started again meanwhile under its
name: its new run puts a marker entry into the stream as it joins (``fence.JOIN``).
What follows the marker is the new run's (its own sessions' messages), so the drain
stops there, gives the marker and what it read after it back to the node's own
consumer (``XCLAIM``), where the new run reads them, and ends; the new run reads its
stream only once no drain lists it (``restart.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, FirstError, gatherResults, inlineCallbacks, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqtt_twisted.cluster.batch import Item, item_message
from mqtt_twisted.cluster.inbox import (
    MARKER,
    READ_COUNT,
    TURN_MESSAGES,
    deliver_items,
    entry_items,
)
from mqtt_twisted.cluster.pace import SLICE
from mqtt_twisted.core.states import CONNECTED

if TYPE_CHECKING:
    from mqtt_twisted.cluster.node import ClusterNode

log = Logger()

#: Seconds the drain waits in all for an offline session at its high-water mark.
PATIENCE = 120.0
#: Seconds between looks at such a session.
POLL = 0.1
#: Seconds before a drain that failed (Redis lost, say) runs again, doubled each time
#: up to RETRY_MAX.
RETRY, RETRY_MAX = 1.0, 30.0


def deliver_one_unless(owner: Any, done: set[str], adopted: set[str] | None,
                       node: ClusterNode, origin: str, items: list[Item], index: int,
                       publisher: Any, entry_id: bytes | None,
                       field: bytes | None = None) -> tuple[int, list[Any]]:
    """``deliver_items`` for the message at ``index`` alone, except into the sessions of
    ``done`` (they had it: their marks are at or past it), nor forwarded to them if they
    left (``moved.py``); with ``adopted``, a plain copy only into adopted sessions (this
    node's own had it from its own stream; a share group's copy comes only from the node
    picked for it).  What is not delivered counts in ``owner.skipped``.  (A drain's,
    and a new run's for what its previous run left: ``restart.py``.)"""
    local = node.router.local
    deliver = local.deliver

    def unless_done(session: Any, *args: Any) -> None:
        client_id = session.clientId
        if client_id in done or (
                adopted is not None and args[-1] is None and client_id not in adopted):
            owner.skipped += 1
            return
        deliver(session, *args)

    local.deliver = unless_done
    node.moved.skip = done
    try:
        return deliver_items(node, origin, items, index, publisher, entry_id, index + 1,
                             field)
    finally:
        local.deliver = deliver
        node.moved.skip = set()


def entry_key(entry_id: bytes, index: int = 0) -> tuple[int, int, int]:
    """A stream entry id (``ms-seq``), or a mark (``ms-seq.INDEX``: the message at
    INDEX of a batch entry, ``batch.py``), as something that compares in stream order."""
    entry_id, _, marked = entry_id.partition(b".")
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0), int(marked) if marked else index


class DrainPublisher:
    """The drain as the broker's flow control sees it: a publisher a subscriber that
    cannot keep up holds back (``throttle``) until it catches up."""

    state = CONNECTED

    def __init__(self, node: ClusterNode, dead: str,
                 marks: dict[str, bytes] | None = None) -> None:
        self.node = node
        #: client id -> the last entry of this stream the dead node delivered into it.
        self.marks = {c: entry_key(m) for c, m in (marks or {}).items()}
        self.skipped = 0
        self.client_id = f"cluster drain of {dead}"
        self.paused = False
        self._resumed: Deferred[None] | None = None

    def throttle(self) -> None:
        self.paused = True

    def unthrottle(self) -> None:
        self.node.broker.flow.debts.pop(self, None)  # waiting costs the stream nothing
        self.paused = False
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            resumed.callback(None)

    def resumed(self) -> Deferred[None]:
        d = self._resumed = Deferred()
        return d


class Drain:
    """One dead node's stream, delivered here."""

    def __init__(self, node: ClusterNode, dead: str,
                 marks: dict[str, bytes] | None = None,
                 adopted: set[str] | None = None) -> None:
        self.node = node
        #: client id -> the last entry of this stream the dead node delivered into it.
        self.marks = {c: entry_key(m) for c, m in (marks or {}).items()}
        self.skipped = 0
        #: The client ids taken from the dead node (None: not known, every session
        #: here is given what matches).  A message this node had among its own
        #: destinations reached its own sessions from its own stream: from the dead
        #: node's, only these (and the share groups it names) get it.
        self.adopted = adopted
        self.me = node.name.encode("utf-8")
        self.dead = dead
        self.stream = node.keys.inbox(dead)
        self.mark_field = b"m:" + self.stream
        self.group = dead.encode("utf-8")
        self.publisher = DrainPublisher(node, dead)
        self.delivered = 0
        self.waited = 0.0
        #: Client id -> seconds waited for its session (offline, at its high-water mark).
        self.waiting: dict[str, float] = {}
        #: The XACKs of the batches delivered, each once its copies are done with.
        self._acks: list[Deferred[Any]] = []
        #: Entries delivered here (a run again after a failure only acknowledges them),
        #: and those whose store writes failed (left pending: see run_until_done).
        self._had: set[bytes] = set()
        self.unstored: set[bytes] = set()

    @inlineCallbacks
    def run_until_done(self) -> Any:
        """:meth:`run`, again after a failure (a lost connection to Redis, a store
        write that failed) until it succeeds or the node stops: the entries it could
        not acknowledge are still pending in the dead node's stream, and nobody else
        would deliver them while this node lives.  Those delivered here already are
        not delivered again, only acknowledged (unless their store writes failed:
        left pending, for this node's own adopter)."""
        delay = RETRY
        while True:
            try:
                delivered = yield self.run()
            except Exception as e:
                if self.node._stopped:
                    raise
                if isinstance(e, FirstError):  # (an XACK's or a store write's, gathered)
                    e = e.subFailure.value
                log.warn("cluster {name}: delivering node {dead}'s stream failed ({error}); "
                         "again in {delay:.0f} s", name=self.node.name, dead=self.dead,
                         error=repr(e), delay=delay)
                yield deferLater(self.node.reactor, delay, lambda: None)
                delay = min(delay * 2, RETRY_MAX)
                continue
            return delivered

    @inlineCallbacks
    def run(self) -> Any:
        node = self.node
        self._acks = []
        cursor = b"0-0"
        marked = False
        while not marked:
            reply = yield node.commands.command(b"XAUTOCLAIM", self.stream, self.group,
                                                node.group, 0, cursor, b"COUNT", READ_COUNT)
            cursor, entries = reply[0], reply[1]
            marked = yield self._deliver_before_marker(entries)
            if cursor == b"0-0":
                break
        while not marked:
            reply = yield node.commands.command(b"XREADGROUP", b"GROUP", self.group,
                                                node.group, b"COUNT", READ_COUNT,
                                                b"STREAMS", self.stream, b">")
            entries = reply[0][1] if reply else []
            if not entries:
                break
            marked = yield self._deliver_before_marker(entries)
        # Done once every entry is acknowledged: until then the stream stays in this
        # node's drains (its own adopter would deliver what is left).
        yield gatherResults(self._acks, consumeErrors=True)
        log.info("cluster {name}: delivered {n} messages left in node {dead}'s stream "
                 "(waited {w:.1f} s for subscribers; {s} copies skipped that the sessions "
                 "had had, from it or from this node; longest reactor turn since the adoption {ms:.0f} ms)",
                 name=node.name, n=self.delivered, dead=self.dead, w=self.waited,
                 s=self.skipped, ms=node.turns.longest * 1000)
        return self.delivered

    @inlineCallbacks
    def _deliver_before_marker(self, entries: list[Any]) -> Any:
        """Deliver the entries up to a new run's marker, if any; the marker and what
        follows go back to the node's own consumer.  True when there was one."""
        at = next((i for i, (_, fields) in enumerate(entries)
                   if fields and fields[0] == MARKER), None)
        yield self._deliver(entries if at is None else entries[:at])
        if at is None:
            return False
        yield self.node.commands.command(b"XCLAIM", self.stream, self.group, self.group,
                                         0, *[entry_id for entry_id, _ in entries[at:]])
        log.info("cluster {name}: node {dead} was started again: the rest of its stream "
                 "is its own", name=self.node.name, dead=self.dead)
        return True

    @inlineCallbacks
    def _deliver(self, entries: list[Any]) -> Any:
        ids: list[bytes] = []
        writes: list[Any] = []
        delivered = 0
        clock = self.node.reactor
        ends = clock.seconds() + SLICE
        had = self._had
        for entry_id, fields in entries:
            if entry_id in had:  # delivered by a run that failed before its XACK
                if entry_id not in self.unstored:
                    ids.append(entry_id)
                continue
            had.add(entry_id)
            self.delivered += 1
            origin, items = entry_items(fields) or ("", [])
            for index, item in enumerate(items):
                yield self._room(item)
                writes += self._deliver_one(entry_id, origin, items, index)
                delivered += 1
                # Let the reactor turn (the lease...) after a slice's worth (pace.py).
                if not delivered % TURN_MESSAGES or clock.seconds() >= ends:
                    yield deferLater(clock, 0, lambda: None)
                    ends = clock.seconds() + SLICE
            ids.append(entry_id)
        if ids:
            # Acknowledged once its copies are stored or, for a share group's clean
            # member, done with (``ClusterRouter.hold_copy``); not waited for before the
            # next batch: a member that is slow to acknowledge must not stop the drain
            # for every other session (flow control paces it, as before).
            d = gatherResults(writes, consumeErrors=True) if writes else succeed(None)
            unstored = self.unstored

            def not_stored(failure: Failure) -> Failure:
                unstored.update(ids)  # pending: this node's adopter delivers them
                return failure

            d.addCallbacks(lambda _: self.node.commands.command(
                b"XACK", self.stream, self.group, *ids), not_stored)
            self._acks.append(d)

    def _deliver_one(self, entry_id: bytes, origin: str, items: list[Item],
                     index: int) -> list[Any]:
        """Message ``index`` of an entry, except into the sessions the dead node had
        delivered it into already (their marks are at or past it)."""
        marks = self.marks
        node = self.node
        publisher = self.publisher
        item = items[index]
        if type(item) is list and len(item) > 1 and item[1] and self.group in item[1]:
            # The dead node is among its destinations, but never got it (it is here, in
            # its stream): a session that left this node for the dead node's new run
            # (restart.py) has it forwarded, not taken as had directly (moved.py).
            item[1] = b",".join(d for d in item[1].split(b",") if d != self.group)
        # Each copy delivered into a session is marked with the entry and its index
        # (RedisStore.mark, ``ms-seq.INDEX``): if this node dies in turn, the next
        # adopter skips it there.
        field = self.mark_field
        done: set[str] = set()
        if marks:
            key = entry_key(entry_id, index)
            done = {c for c, m in marks.items() if m >= key}
            if not done:
                self.marks = {}  # all behind now
        adopted = self.adopted if self._here_already(items[index], origin) else None
        if not done and adopted is None:
            return deliver_items(node, origin, items, index, publisher, entry_id,
                                 index + 1, field)[1]
        return deliver_one_unless(self, done, adopted, node, origin, items, index,
                                  publisher, entry_id, field)[1]

    def _here_already(self, item: Item, origin: str) -> bool:
        """Whether this node's own subscribers had the message: it was published (or
        sent on) here, or this node was among its destinations (``d``) and had it from
        its own stream."""
        if self.adopted is None or type(item) is not list or len(item) > 4:
            return False  # (a barrier, a directed copy: for one session)
        if origin == self.node.name:
            return True
        destinations = item[1]
        return bool(destinations) and self.me in destinations.split(b",")

    @inlineCallbacks
    def _room(self, item: Item) -> Any:
        """Wait until the subscribers of this message can take it."""
        publisher = self.publisher
        if publisher.paused:
            yield publisher.resumed()
        full = self._full_offline(item)
        waiting = self.waiting
        while full is not None:
            client_id = full.clientId
            yield deferLater(self.node.reactor, POLL, lambda: None)
            self.waited += POLL
            waiting[client_id] = waited = waiting.get(client_id, 0.0) + POLL
            if waited >= PATIENCE:
                log.info("cluster {name}: {client} did not come back for {s:.0f} s: the "
                         "rest of node {dead}'s stream queues for it (the oldest dropped "
                         "beyond --max-queued)", name=self.node.name, client=client_id,
                         s=waited, dead=self.dead)
            if publisher.paused:
                yield publisher.resumed()
            full = self._full_offline(item)

    def _full_offline(self, item: Item) -> Any:
        """A session this message goes to whose client is away and whose queue is at
        its high-water mark, or None."""
        try:
            if type(item) is dict:
                return None  # a handover barrier (barrier.py): nothing to queue
            if len(item) > 4:  # directed to one session (moved.py)
                client_ids = [item[4].decode("utf-8")]
            else:
                topic = item_message(item).topic
                client_ids = [c for c, _ in self.node.router.local.tree.match(topic)]
        except Exception:
            return None  # deliver_items says what is wrong with it
        broker = self.node.broker
        high_water = broker.delivery.high_water
        waiting = self.waiting
        for client_id in client_ids:
            if waiting.get(client_id, 0.0) >= PATIENCE:
                continue  # waited for long enough: it queues, as an offline session does
            session = broker.sessions.get(client_id)
            if (session is not None and session.persistent and session.queue
                    and len(session.queue) >= high_water
                    and (session.connection is None or session.connection.state != CONNECTED)):
                return session
        return None
