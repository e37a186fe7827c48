"""A node's QoS 1/2 inbox: its Redis stream, read by its consumer group, delivered here.

Entries (each a batch of messages, ``batch.py``) are read in batches with a blocking
``XREADGROUP`` on the node's own connection, delivered to the local sessions
(``ClusterRouter.receive``, inside ``writes_of``), at most ``TURN_MESSAGES`` a reactor
turn, and acknowledged (``XACK``) once the store writes those deliveries made are done;
a failed write leaves them pending.  At start the node first reads what an
earlier run of it left unacknowledged, then new entries.

Entries whose deliveries made no store write to wait for (clean sessions) are
acknowledged on the reader's connection just before the next ``XREADGROUP``: one
socket write for both, and their replies in one read, instead of an ``XACK`` and its
reply on the commands connection as well.  An ``XACK`` lost with its connection is
sent again before the next read, on the same connection, so Redis has it before the
read that would return those entries again.

Flow control: while it delivers, the reader is ``broker.publisher``, so a subscriber
that cannot keep up holds it back as it would a client's connection; the rest of the
batch (of the entry too) then waits, read but unacknowledged, until the subscriber
catches up.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqtt_twisted.cluster.batch import Item, read_entry
from mqtt_twisted.cluster.resp import ReplyError
from mqtt_twisted.cluster.shared import decode_groups
from mqtt_twisted.core.states import CONNECTED
from mqtt_twisted.message import Message
from mqtt_twisted.store.redis import FORMAT, decode_message, message_from_record

if TYPE_CHECKING:
    from mqtt_twisted.cluster.node import ClusterNode

log = Logger()
new_message = object.__new__

#: Stream entries read at once (each up to ``batch.MAX_BATCH`` messages), and how long
#: one XREADGROUP waits for them.
READ_COUNT = 512
READ_BLOCK = 1.0
#: The field of the entry a new run of a node adds to its stream when it joins while
#: a survivor still delivers its previous run's (``fence.JOIN``, ``drain.py``).
MARKER = b"j"
#: Messages delivered in one reactor turn at most (an entry holds up to
#: ``batch.MAX_BATCH``): a long turn would hold up everything else, the lease renewal
#: among them (``failover.py``).
TURN_MESSAGES = 512


def deliver_items(node: ClusterNode, origin: str, items: list[Item], start: int = 0,
                  publisher: Any = None, entry_id: bytes | None = None,
                  stop: int | None = None,
                  field: bytes | None = None) -> tuple[int, list[Any]]:
    """Deliver the messages of one stream entry here from ``items[start]`` on, until
    ``stop`` or until ``publisher`` (who flow control holds back if a subscriber is
    behind) is paused, at least one: where it stopped, and the store writes made (to
    wait for before XACK).  ``entry_id`` goes with each outbound record made
    (``RedisStore.mark`` and ``.mark_index``: ``entry_id.INDEX`` past the first message
    of a batch) in
    the stored session's ``field`` (this node's own stream's by default; a drain
    passes the dead node's): an adopter does not deliver it there again.  A handover
    barrier entry (``batch.read_entry``: one dict, no message) goes to ``barrier.py``."""
    broker = node.broker
    if type(items[0]) is dict:  # a barrier (barrier.py): c client id, b/a/e
        record = items[0]
        return 1, broker.writes_of(node.barriers.entry, record[b"c"].decode("utf-8"),
                                   record)[1]
    router = node.router
    receive = router.receive
    # The usual case, a message for plain subscriptions only: straight to the local
    # router, as ``ClusterRouter.receive`` would (``plain`` counts them for it).
    dispatch = router.plain_receiver()
    store = node.store
    # This node's own stream: how far each origin's messages have been delivered here
    # (``ClusterNode.delivered``, for a session that leaves: ``barrier.py``).  A dead
    # node's stream (a drain: ``field`` given) is another order of the same origins'
    # numbers: its messages go on without identity (taken as new where forwarded).
    own = field is None
    positions = node.delivered if own else None
    if field is None:
        field = node.mark_field
    mark = (field, entry_id) if entry_id is not None else None
    end = len(items) if stop is None else stop
    at = [start]
    barriers = node.barriers

    def deliver() -> None:
        # One writes_of for the lot: it collects every store write made meanwhile.
        index = start
        plain = 0
        usual = dispatch is not None
        try:
            while index < end:
                item = items[index]
                if mark is not None:
                    # The store formats ``entry_id.INDEX`` only for a record it writes
                    # (a persistent session's copy): not for every message.
                    store.mark = mark
                    store.mark_index = index
                index += 1
                if (usual and type(item) is list and len(item) == 4
                        and type(message := item[0]) is Message and not item[2]):
                    # The usual message (made by the compiled batch.read_records, for
                    # plain subscriptions, no directed session): the branch below with
                    # nothing to decode or test (docs/cluster.md, "Benchmarks").
                    barriers.seq = item[3] if own else 0  # barrier.py
                    plain += 1
                    dispatch(message, origin)
                    if publisher is not None and publisher.paused:
                        break
                    continue
                try:
                    stored = item[0]  # (batch.item_message, inline)
                    if type(stored) is Message:  # made by batch.read_records, compiled
                        message = stored
                    elif type(stored) is list and stored[0] == FORMAT and not stored[5]:
                        # The usual record, without properties: message_from_record
                        # inline (a call less on every message from a peer).
                        message = new_message(Message)
                        (_, message.topic, message.payload, message.qos, message.retain, _,
                         message.received_at, message.sender) = stored
                        message.packet_id = None
                        message.properties = {}
                        message.wire = None
                    else:
                        message = (message_from_record(stored) if type(stored) is list
                                   else decode_message(stored))
                    groups, resent = decode_groups(item[2]) if item[2] else (None, False)
                    n = len(item)
                    to = item[4].decode("utf-8") if n > 4 else None
                except Exception as e:
                    log.warn("cluster: a stream message could not be read: {error}", error=e)
                    continue
                if to is not None:  # for one session that came here before (moved.py)
                    node.moved.directed(to, message, item[3], groups)
                else:
                    barriers.seq = seq = item[3] if own and n > 3 else 0  # barrier.py
                    if groups is None and dispatch is not None:
                        plain += 1
                        dispatch(message, origin)
                    else:
                        receive(message, origin, groups, resent, item[1], seq)
                if publisher is not None and publisher.paused:
                    break
        finally:
            at[0] = index
            if plain:
                router.received += plain
            if positions is not None and index > start:
                last = items[index - 1]
                if type(last) is list and len(last) == 4 and last[3]:
                    positions[origin] = last[3]

    broker.publisher = publisher
    if barriers.windows:
        barriers.origin = origin  # a session that arrived lately may hold it
    try:
        _, pending = broker.writes_of(deliver)
    finally:
        broker.publisher = None
        store.mark = None
        barriers.origin = None
        barriers.seq = 0
    return at[0], pending


def entry_items(fields: list[Any] | None) -> tuple[str, list[Item]] | None:
    """``batch.read_entry``, an entry that is not ours logged (and skipped: None)."""
    if fields and fields[0] == MARKER:
        return None  # where a new run of the node joined (restart.py): no message
    try:
        return read_entry(fields)
    except Exception as e:
        log.warn("cluster: a stream entry could not be read: {error}", error=e)
        return None


class StreamPublisher:
    """The inbox reader as the broker's flow control sees it: a publisher that a
    subscriber which cannot keep up holds back (``throttle``) until it catches up."""

    state = CONNECTED

    def __init__(self, reader: InboxReader) -> None:
        self.reader = reader
        self.client_id = f"cluster inbox of {reader.node.name}"
        self.paused = False

    def throttle(self) -> None:
        self.paused = True

    def unthrottle(self) -> None:
        # Waiting costs the stream nothing (the entries stay in Redis): unlike a
        # client's connection it runs up no hold-back debt (flow.py's budget).
        self.reader.node.broker.flow.debts.pop(self, None)
        if self.paused:
            self.paused = False
            self.reader.resume()


class InboxReader:
    """Reads, delivers and acknowledges the entries of one node's stream."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self.publisher = StreamPublisher(self)
        #: Entries read and not yet delivered (flow control paused the delivery).
        self.backlog: deque[Any] = deque()
        self._cursor = b"0"
        self._reading = False
        self._stopped = False
        #: Whether the last read returned a whole batch (more is likely waiting).
        self._full = False
        #: The backlog's first entry, read (origin, items) once its delivery began; the
        #: next of its items to deliver, and the store writes of those delivered.
        self._current: tuple[str, list[Item]] | None = None
        self._next = 0
        self._writes: list[Any] = []
        #: Entries delivered whose XACK goes before the next read (pipelined with it), or
        #: whose XACK was lost with its connection.
        self._unacked: list[bytes] = []
        #: Entries delivered whose XACK waits for their copies (store writes, share
        #: copies in clean sessions: ``ClusterRouter.hold_copy``), until Redis has it: a
        #: read from the start (a lost connection) returns them and skips them.
        self._waiting: set[bytes] = set()
        #: How an entry's messages are delivered: ``restart.py`` puts its own while
        #: what an earlier run of this node left is delivered (skipping the sessions
        #: that run had delivered it into).
        self.deliver = deliver_items
        #: Fired once what an earlier run left unacknowledged has been delivered.
        self.caught_up: Deferred[None] = Deferred()

    def start(self) -> None:
        self._read()

    def stop(self) -> None:
        self._stopped = True

    def behind(self) -> bool:
        """Whether entries are waiting: read and not delivered, held back by a
        subscriber, or likely unread (the last batch was full)."""
        return bool(self.backlog) or self.publisher.paused or self._full

    def resume(self) -> None:
        """A subscriber caught up: deliver the rest of the batch, then read on."""
        if not self._reading and not self._stopped:
            self._drain()

    def _read(self) -> None:
        if self._stopped:
            return
        self._reading = True
        node = self.node
        if self._unacked:
            self._ack_now(node.reader, self._unacked)
            self._unacked = []
        d = node.reader.command_blocking(
            READ_BLOCK, b"XREADGROUP", b"GROUP", node.group, node.group, b"COUNT",
            READ_COUNT, b"BLOCK", int(READ_BLOCK * 1000), b"STREAMS",
            node.keys.inbox(node.name), self._cursor)
        d.addCallbacks(self._entries, self._read_failed)

    def _entries(self, reply: Any) -> None:
        self._reading = False
        if self._stopped:
            return  # read but not delivered: pending, read again by the next reader
        entries = reply[0][1] if reply else []
        self._full = len(entries) >= READ_COUNT
        if self._cursor != b">":
            # Going through what an earlier run left unacknowledged, then new entries.
            self._cursor = entries[-1][0] if entries else b">"
            if not entries and not self.caught_up.called:
                self.caught_up.callback(None)  # (each page was delivered before the next)
            if self._waiting:  # delivered here, their XACK to come: not again
                entries = [e for e in entries if e[0] not in self._waiting]
        self.backlog.extend(entries)
        self._drain()

    def _drain(self) -> None:
        """Deliver the entries read until a subscriber here cannot take more (within an
        entry too: a batch is delivered message by message), then acknowledge the
        entries delivered whole and, with nothing left, read the next ones."""
        backlog = self.backlog
        publisher = self.publisher
        node = self.node
        if backlog and not node.fence.trusted():
            # Maybe adopted while paused (fence.py): deliver once a renewal says not.
            node.fence.when_trusted(self.resume)
            return
        ids: list[bytes] = []
        writes: list[Any] = []
        moved = node.moved
        budget = TURN_MESSAGES
        while backlog and not publisher.paused:
            if budget <= 0:  # a reactor turn of bounded length: the rest next turn
                node.reactor.callLater(0, self.resume)
                break
            entry_id, fields = backlog[0]
            read = self._current
            if read is None:
                if moved.pending and fields and moved.waiting_for(fields, self.resume):
                    break  # for a session arriving here: it goes on once it is (moved.py)
                read = self._current = entry_items(fields) or ("", [])
                self._next = 0
            origin, items = read
            if items:
                start = self._next
                self._next, done = self.deliver(node, origin, items, start, publisher,
                                                entry_id, min(len(items), start + budget))
                budget -= self._next - start
                self._writes += done
                if self._next < len(items):
                    continue  # held back within the entry, or out of budget: see above
            backlog.popleft()
            self._current = None
            ids.append(entry_id)
            writes += self._writes
            self._writes = []
        reading = not backlog and not publisher.paused
        if ids:
            if writes or not reading:
                self._ack(ids, writes)
            else:
                self._unacked += ids  # with the next read (below), on its connection
        if reading:
            self._read()

    def _ack(self, ids: list[bytes], writes: list[Any]) -> None:
        """XACK once the local deliveries are stored (a failed store write leaves
        the entries pending: read again when the node starts again)."""
        node = self.node
        waiting = self._waiting
        waiting.update(ids)

        def acked(_: Any) -> None:
            waiting.difference_update(ids)

        def failed(failure: Failure) -> None:
            waiting.difference_update(ids)  # pending: read again when the node starts
            node._failed(failure, "acknowledging stream entries")

        if not writes:
            self._ack_now(node.commands, ids).addBoth(acked)
            return
        d = gatherResults(writes, consumeErrors=True)
        d.addCallback(lambda _: self._ack_now(node.commands, ids))
        d.addCallbacks(acked, failed)

    def _ack_now(self, client: Any, ids: list[bytes]) -> Any:
        """XACK ``ids`` on ``client``'s connection; lost with it, again before the next
        read (an error reply is logged: nothing would make a second one succeed)."""
        node = self.node

        def failed(failure: Failure) -> None:
            if not failure.check(ReplyError) and not self._stopped:
                self._unacked += ids
            node._failed(failure, "acknowledging stream entries")

        return client.command(b"XACK", node.keys.inbox(node.name), node.group,
                              *ids).addErrback(failed)

    def _read_failed(self, failure: Failure) -> None:
        if self._stopped:
            return
        self.node._failed(failure, "reading the inbox")
        self._cursor = b"0"  # entries delivered to a lost connection: read them again
        self.node.reactor.callLater(0.5, self._read)
