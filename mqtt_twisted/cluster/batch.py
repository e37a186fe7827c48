"""Copies for a peer node, one stream entry (QoS 1/2) and one pub/sub message (QoS 0)
per destination node per reactor turn, and reading them back.

Why: a message that crosses nodes cost ~35 µs of node CPU against ~14 µs on one node
(docs/cluster.md, "Benchmarks"), and most of the difference was per-message Redis
work: an ``XADD`` of a dozen arguments encoded in Python and its reply parsed on the
sending node, a stream entry of ten RESP tokens parsed on the receiving one.  Redis
sends a pipelined burst in one write anyway; batching makes the *commands* fewer too.
The messages one read of a publisher's socket (one reactor turn) routes to a node go
in one entry: one ``XADD``, one reply, one RESP bulk string to parse on the other side,
whose items are unpacked by one ``msgpack`` call in C.

Stream entry fields (``o`` the origin node first, as before):

- ``r``: a batch, ``msgpack [[message, d, g, s], ...]`` — ``message`` the stored form
  (``store.redis.with_records``: the array ``encode_message`` packs, here unpacked
  with the rest: the whole batch is packed in one msgpack call and read in one, no
  second pack and unpack per message), ``d`` every node the message went to
  (``moved.py`` reads it), ``g`` the share groups field (``shared.encode_groups``) or
  nil, ``s`` the message's sequence number at its origin node (``o``; 0: none; absent
  before message identity): ``(o, s)`` names the message in every stream it is in
  (``barrier.py`` tells a copy the session's old node delivered from a new one by it);
- ``p``: the same with each message packed on its own (``encode_message``), as
  written before ``r`` (still read);
- ``m`` (with ``d``, ``g``, or ``c`` for a session that moved, ``moved.py``, and then
  ``i``: ``b"SEQ ORIGIN"``, the forwarded message's identity): one message, as written
  before batching (and still for directed entries); read as a batch of one.

A QoS 0 pub/sub message is ``msgpack [origin, [[message, groups, resent], ...]]``,
``message`` the stored form unpacked as in ``r`` (before: packed, or
``[origin, message, groups, resent]``; both still read).

A node reads what nodes of earlier versions write; nodes of earlier versions do not
read ``r`` entries nor unpacked QoS 0 messages: the nodes of a cluster are upgraded
together.

Order: the batches of a turn are flushed before anything else is written to a
stream (a directed or a handover barrier entry), so each stream keeps the order its
messages were routed in.  Across streams, a handover needs more (``barrier.py``: when
node N reads publisher node P's first message for a session that moved from node O,
every message P routed to O before it must be in O's stream already).  One entry per
destination cannot follow the routing order across streams (a turn routing to O, N,
O), so when a flush has entries for several nodes they go in one MULTI/EXEC: Redis
makes them visible at once, no reader sees one stream's entry of the turn before
another's.  It costs two commands per flush that has several destinations (none
with one); ``bench/calls_per_message.py --cluster`` counts it.  The publisher's
acknowledgement waits for its message's entry as before: the messages of an entry
share one :class:`~mqtt_twisted.core.journal.SharedWrite`, fired by the entry's
reply (a Deferred each cost 5 Python calls a message; the PUBACKs of a publisher's
messages in one entry then wait as one, ``inbound.ack_after``).  With transactions,
the entries of one flush share one write, fired by ``EXEC``'s reply once every entry
is in (a failed one fails them all: no message is acknowledged unless its whole
transaction succeeded): a publisher spreading its messages over two peers would
otherwise alternate between two writes, and ``ack_after`` joins only acks that wait
for the same one (with three nodes that was four calls a crossing message).

Sans-IO apart from the injected reactor's ``callLater(0, ...)``: the flush is end-of-turn
work (``mqtt_twisted.turns.after_turn``), after every socket read of this turn, and the
commands it makes leave in the same pass (``client.py``): no reactor iteration between.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from mqtt_twisted.cluster.rawlane import RawLane, RawLanes
from mqtt_twisted.cluster.rawlane import encode as encode_raw
from mqtt_twisted.cluster.shared import encode_groups
from mqtt_twisted.codec import also_switch, load_compiled
from mqtt_twisted.core.journal import SharedWrite
from mqtt_twisted.errors import StorageError
from mqtt_twisted.message import Message
from mqtt_twisted.store.redis import FORMAT, decode_message, message_from_record, with_records
from mqtt_twisted.turns import after_turn

#: A stream entry's batch field ("records"), and the one before it ("packed"; not
#: ``b``, which a handover's barrier entries use).
RECORDS = b"r"
BATCH = b"p"
#: A batch is sent before it grows past this many messages or this many bytes of
#: messages (a stream entry and a Redis reply stay small; flow control on the
#: receiving node pauses between messages, not only between entries).
MAX_BATCH = 256
MAX_BATCH_BYTES = 1 << 20

_pack = msgpack.Packer(use_bin_type=True).pack


def _unpack(data: bytes) -> Any:
    # (strict_map_key off: a message's properties are a map of property ids.)
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def pack_records(items: list[list[Any]], prefix: bytes = b"") -> bytes:
    """``prefix``, then ``items`` (``[message, ...]`` lists) packed with each message in
    its stored form (``with_records``): a stream entry's ``r`` field, or a QoS 0 push's
    records after its origin.  The specification of its compiled twin
    (``cluster/_entries.pyx``: the same bytes without a list per message)."""
    return prefix + _pack(with_records(items))


def read_records(data: bytes) -> Any:
    """An ``r`` field's items (``[message, ...]``, each message its stored form as a
    list).  The specification of its compiled twin, whose items hold the message
    object itself where it has no properties (one made in C, no list in between):
    :func:`item_message` and ``inbox.deliver_items`` take either."""
    return _unpack(data)


#: The compiled twins of :func:`pack_records` and :func:`read_records`, when built
#: (setup.py).
_entries = load_compiled("mqtt_twisted.cluster._entries", "the compiled stream entries")
if _entries is not None:
    _entries.use_message_type(Message)
#: The implementations in use (``use``): compiled where built, unless
#: ``MQTT_TWISTED_PURE=1``; switched with the codec's (``codec._accel.use``).
_pack_records = pack_records
_read_records = read_records


def _compiled_pack_records(items: list[list[Any]], prefix: bytes = b"") -> bytes:
    return _entries.pack_records(items, _pack, FORMAT, prefix)  # type: ignore[union-attr]


def _compiled_read_records(data: bytes) -> Any:
    return _entries.read_records(data, FORMAT, read_records)  # type: ignore[union-attr]


def use(compiled: bool) -> bool:
    """Bind the compiled :func:`pack_records` and :func:`read_records` (when built) or
    the pure ones; True for compiled."""
    global _pack_records, _read_records
    chosen = bool(compiled and _entries is not None)
    _pack_records = _compiled_pack_records if chosen else pack_records
    _read_records = _compiled_read_records if chosen else read_records
    return chosen


also_switch(use)


#: One message of a stream entry as read, still encoded (lists, as msgpack unpacks
#: them: no object per message): ``[message, destinations, groups, seq]`` — the stored
#: form (a list in an ``r`` batch, ``message_from_record`` reads it; packed bytes
#: otherwise, ``decode_message``: :func:`item_message` reads either), every node it
#: went to comma-separated (``moved.py``), ``shared.encode_groups``' field or None, its
#: sequence number at the entry's origin (absent from entries written before message
#: identity) — and, for a directed entry, ``[message, destinations, groups, identity,
#: client id]``: the ``i`` field (or None) fourth, the client id of its session
#: (``moved.py``) fifth.
Item = list


def directed(item: Item) -> bytes | None:
    """A directed entry's client id, or None."""
    return item[4] if len(item) > 4 else None


def item_message(item: Item) -> Message:
    """The message of an item (of a stream entry or a QoS 0 push), in either form."""
    stored = item[0]
    if type(stored) is Message:  # (read by the compiled read_records)
        return stored
    return message_from_record(stored) if type(stored) is list else decode_message(stored)


def read_entry(fields: list[Any] | None) -> tuple[str, list[Item]] | None:
    """A stream entry's origin node and messages; None for an entry trimmed away while
    it was pending.  A handover barrier entry (``c`` and ``b``/``a``/``e``, no message)
    is read as one item, the entry's fields as a dict (``inbox.deliver_items`` gives it
    to ``barrier.py``).  Raises for one that is not ours (the caller logs and skips it)."""
    if not fields:
        return None
    record = dict(zip(fields[::2], fields[1::2]))
    origin = record[b"o"].decode("utf-8")
    batch = record.get(RECORDS)
    if batch:
        items = _read_records(batch)
    else:
        batch = record.get(BATCH)
        items = _unpack(batch) if batch is not None else None
    if batch is not None:
        if type(items) is not list:  # (an item that is not ours: skipped as it is read)
            raise ValueError("a batch is a list of [message, destinations, groups]")
        return origin, items
    if b"m" not in record and b"c" in record:
        return origin, [record]  # a handover barrier (barrier.py): its fields, no message
    item = [record[b"m"], record.get(b"d", b""), record.get(b"g")]
    if b"c" in record:
        item += (record.get(b"i"), record[b"c"])
    return origin, [item]


def read_push(data: bytes) -> tuple[str, list[Item]]:
    """A QoS 0 pub/sub message: its origin node and ``[message, groups, resent]``s
    (:func:`item_message` reads the message)."""
    origin, body, *rest = _unpack(data)
    if type(body) is list:
        return origin, body
    groups, resent = rest
    return origin, [[body, groups, resent]]


class _Batch:
    __slots__ = ("items", "write", "size")

    def __init__(self) -> None:
        self.items: list[list[Any]] = []
        #: What every message of the batch waits for: the entry's reply.
        self.write = SharedWrite()
        self.size = 0


class Outbox:
    """This turn's copies for the peer nodes, sent once the turn is over.

    ``add(to, *fields)`` XADDs an entry to node ``to``'s stream and returns a Deferred
    of the reply; ``push(to, data)`` sends a QoS 0 pub/sub message to node ``to``;
    ``transaction([(to, fields), ...])`` XADDs several entries in one MULTI/EXEC and
    returns a Deferred of ``EXEC``'s reply, the list of the entries' ids or errors
    (without it, they are XADDed one after another, each entry with its own write)."""

    def __init__(self, reactor: Any, origin: str,
                 add: Callable[..., Deferred[Any]],
                 push: Callable[[str, bytes], None],
                 transaction: Callable[[list[tuple[str, tuple[Any, ...]]]],
                                       Deferred[Any]] | None = None) -> None:
        self.reactor = reactor
        self.origin = origin
        self._add = add
        self._push = push
        self._transaction = transaction
        #: With transactions: the write every batch gathered since the last flush
        #: shares (the module's docstring, "Order").
        self._write: SharedWrite | None = None
        self._entries: dict[str, _Batch] = {}
        #: node -> this turn's QoS 0 copies for it, in order: ``[message, groups,
        #: resent]`` lists and plain PUBLISHes' lanes (``rawlane.py``).
        self._pushes: dict[str, list[Any]] = {}
        self.lanes = RawLanes(self)
        #: Whether a flush is due at the end of this turn.
        self._due = False
        #: Entries and pub/sub messages sent, and the messages in them (for tests and
        #: the benchmark's notes); MULTI/EXEC transactions sent.
        self.batches = 0
        self.messages = 0
        self.transactions = 0

    def append(self, to: str, message: Message, destinations: bytes = b"",
               groups: list[str] | None = None, resent: int = 0,
               seq: int = 0) -> SharedWrite:
        """A QoS 1/2 copy for ``to`` (``NodeLink.append``'s arguments): the batch's
        write, which fires with its entry's id once Redis has it (shared by every
        message of the entry).  The message is packed when the batch is sent."""
        batch = self._entries.get(to)
        if batch is None:
            batch = self._entries[to] = _Batch()
            if self._transaction is not None:
                if self._write is None:
                    self._write = SharedWrite()
                batch.write = self._write
            self._schedule()
        items = batch.items
        items.append([message, destinations,
                      encode_groups(groups, resent) if groups else None, seq])
        batch.size += len(message.payload)
        if len(items) >= MAX_BATCH or batch.size >= MAX_BATCH_BYTES:
            self.flush_entries(to)
        return batch.write

    def publish(self, to: str, message: Message, groups: list[str] | None,
                resent: bool) -> None:
        """A QoS 0 copy for ``to`` (at most once: nothing to wait for)."""
        items = self._pushes.get(to)
        if items is None:
            items = self._pushes[to] = []
            self._schedule()
        elif self.lanes.open:
            self.lanes.close(to)  # (the publisher's next plain ones come after this)
        items.append([message, groups, resent])
        if len(items) >= MAX_BATCH:
            self.send_pushes(to)

    def queue(self, to: str, lane: RawLane) -> None:
        """A lane of plain PUBLISHes for ``to``, after what the turn has for it."""
        items = self._pushes.get(to)
        if items is None:
            items = self._pushes[to] = []
            self._schedule()
        items.append(lane)

    def send_pushes(self, to: str) -> None:
        """Send what this turn has for ``to`` now (a full batch or lane)."""
        self.lanes.close(to)
        items = self._pushes.pop(to, None)
        if items:
            self._send_push(to, items)

    def _schedule(self) -> None:
        if not self._due:
            self._due = True
            after_turn(self.reactor, _flush_due, self)

    def flush(self) -> None:
        """Send everything gathered (the end of the turn; a node stopping)."""
        self._due = False
        self.flush_entries()
        self.lanes.close()
        pushes, self._pushes = self._pushes, {}
        for to, items in pushes.items():
            self._send_push(to, items)

    def flush_entries(self, to: str | None = None) -> None:
        """Send this turn's batches now: at the end of the turn, when one is full, or
        before a directed or barrier entry for ``to`` (``NodeLink.direct``,
        ``.barrier``).  All of them, not only ``to``'s: several go in one MULTI/EXEC,
        so no stream has a message of this turn before another stream has the ones
        routed before it (see "Order" above)."""
        entries = self._entries
        if not entries:
            return
        self._entries = {}
        self._write = None
        batches = list(entries.items())
        self.batches += len(batches)
        for _, batch in batches:
            self.messages += len(batch.items)
        try:
            if len(batches) == 1 or self._transaction is None:
                replies = [self._add(dest, RECORDS, _pack_records(batch.items))
                           for dest, batch in batches]
            else:
                self.transactions += 1
                self._transaction([
                    (dest, (RECORDS, _pack_records(batch.items)))
                    for dest, batch in batches]).addBoth(_all_in, batches[0][1].write)
                return
        except Exception:
            failure = Failure()
            for _, batch in batches:
                batch.write.fire(failure)
            return
        for d, (_, batch) in zip(replies, batches):
            d.addBoth(batch.write.fire)

    def _send_push(self, to: str, items: list[Any]) -> None:
        """``items`` for ``to``, in order: one pub/sub message per stretch of messages
        or of lanes."""
        start = 0
        for i in range(len(items) + 1):
            if i < len(items) and type(items[i]) is type(items[start]):
                continue
            part = items[start:i] if start or i < len(items) else items
            start = i
            self.batches += 1
            if type(part[0]) is RawLane:
                data = encode_raw(self.origin, part)
                if data is not None:
                    self._push(to, data)
                continue
            self.messages += len(part)
            # (``[origin, records]``: an array of two, the origin, then the records.)
            self._push(to, _pack_records(part, b"\x92" + _pack(self.origin)))


def _flush_due(outbox: Outbox) -> None:
    """The end of the turn: ``outbox.flush``, unless it was flushed meanwhile."""
    if outbox._due:
        outbox.flush()


def _all_in(result: Any, write: SharedWrite) -> None:
    """``EXEC``'s reply to a flush's transaction: its write done once every entry is in
    (with the entries' ids), failed if the transaction or any entry failed."""
    if result is None:  # aborted (nothing here WATCHes; said for completeness)
        result = Failure(StorageError("Redis aborted a transaction"))
    elif type(result) is list:
        for reply in result:
            if isinstance(reply, Exception):
                result = Failure(reply)
                break
    write.fire(result)
