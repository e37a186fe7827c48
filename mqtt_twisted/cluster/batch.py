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

- ``p``: a batch, ``msgpack [[message, d, g, s], ...]`` — ``message`` the stored form
  (``encode_message``), ``d`` every node the message went to (``moved.py`` reads it),
  ``g`` the share groups field (``shared.encode_groups``) or nil, ``s`` the message's
  sequence number at its origin node (``o``; 0: none; absent before message identity):
  ``(o, s)`` names the message in every stream it is in (``barrier.py`` tells a copy
  the session's old node delivered from a new one by it);
- ``m`` (with ``d``, ``g``, or ``c`` for a session that moved, ``moved.py``, and then
  ``i``: ``b"SEQ ORIGIN"``, the forwarded message's identity): one message, as written
  before batching (and still for directed entries); read as a batch of one.

A QoS 0 pub/sub message is ``msgpack [origin, [[message, groups, resent], ...]]``
(before: ``[origin, message, groups, resent]``, still read).

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
acknowledgement waits for its message's entry as before (each message gets its own
Deferred, fired by the batch's reply).

Sans-IO apart from the injected reactor's ``callLater(0, ...)``: the flush is the
next reactor iteration, after every socket read of this one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from mqtt_twisted.cluster.shared import encode_groups

#: A stream entry's batch field ("packed"; not ``b``, which a handover's barrier
#: entries use in the cluster-correctness work).
BATCH = b"p"
#: A batch is sent before it grows past this many messages or this many bytes of
#: messages (a stream entry and a Redis reply stay small; flow control on the
#: receiving node pauses between messages, not only between entries).
MAX_BATCH = 256
MAX_BATCH_BYTES = 1 << 20

_pack = msgpack.Packer(use_bin_type=True).pack


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


#: One message of a stream entry as read, still encoded (lists, as msgpack unpacks
#: them: no object per message): ``[message, destinations, groups, seq]`` — the stored
#: form (``decode_message`` reads it), every node it went to comma-separated
#: (``moved.py``), ``shared.encode_groups``' field or None, its sequence number at the
#: entry's origin (absent from entries written before message identity) — and, for a
#: directed entry, ``[message, destinations, groups, identity, client id]``: the
#: ``i`` field (or None) fourth, the client id of its session (``moved.py``) fifth.
Item = list


def directed(item: Item) -> bytes | None:
    """A directed entry's client id, or None."""
    return item[4] if len(item) > 4 else None


def read_entry(fields: list[Any] | None) -> tuple[str, list[Item]] | None:
    """A stream entry's origin node and messages; None for an entry trimmed away while
    it was pending.  A handover barrier entry (``c`` and ``b``/``a``/``e``, no message)
    is read as one item, the entry's fields as a dict (``inbox.deliver_items`` gives it
    to ``barrier.py``).  Raises for one that is not ours (the caller logs and skips it)."""
    if not fields:
        return None
    record = dict(zip(fields[::2], fields[1::2]))
    origin = record[b"o"].decode("utf-8")
    batch = record.get(BATCH)
    if batch is not None:
        items = _unpack(batch)
        if type(items) is not list:  # (an item that is not ours: skipped as it is read)
            raise ValueError("a batch is a list of [message, destinations, groups]")
        return origin, items
    if b"m" not in record and b"c" in record:
        return origin, [record]  # a handover barrier (barrier.py): its fields, no message
    item = [record[b"m"], record.get(b"d", b""), record.get(b"g")]
    if b"c" in record:
        item += (record.get(b"i"), record[b"c"])
    return origin, [item]


def read_push(data: bytes) -> tuple[str, list[tuple[bytes, list[str] | None, bool]]]:
    """A QoS 0 pub/sub message: its origin node and ``(message, groups, resent)``s."""
    origin, body, *rest = _unpack(data)
    if type(body) is list:
        return origin, body
    groups, resent = rest
    return origin, [(body, groups, resent)]


class _Batch:
    __slots__ = ("items", "deferreds", "size")

    def __init__(self) -> None:
        self.items: list[list[Any]] = []
        self.deferreds: list[Deferred[Any]] = []
        self.size = 0


class Outbox:
    """This turn's copies for the peer nodes, sent once the turn is over.

    ``add(to, *fields)`` XADDs an entry to node ``to``'s stream and returns a Deferred
    of the reply; ``push(to, data)`` sends a QoS 0 pub/sub message to node ``to``;
    ``transaction([(to, fields), ...])`` XADDs several entries in one MULTI/EXEC and
    returns a Deferred of each reply (without it, they are XADDed one after another)."""

    def __init__(self, reactor: Any, origin: str,
                 add: Callable[..., Deferred[Any]],
                 push: Callable[[str, bytes], None],
                 transaction: Callable[[list[tuple[str, tuple[Any, ...]]]],
                                       list[Deferred[Any]]] | None = None) -> None:
        self.reactor = reactor
        self.origin = origin
        self._add = add
        self._push = push
        self._transaction = transaction
        self._entries: dict[str, _Batch] = {}
        self._pushes: dict[str, list[list[Any]]] = {}
        self._call: Any = None
        #: Entries and pub/sub messages sent, and the messages in them (for tests and
        #: the benchmark's notes); MULTI/EXEC transactions sent.
        self.batches = 0
        self.messages = 0
        self.transactions = 0

    def append(self, to: str, blob: bytes, destinations: bytes = b"",
               groups: list[str] | None = None, resent: bool = False,
               seq: int = 0) -> Deferred[Any]:
        """A QoS 1/2 copy for ``to`` (``NodeLink.append``'s arguments): fires with its
        entry's id once Redis has it."""
        batch = self._entries.get(to)
        if batch is None:
            batch = self._entries[to] = _Batch()
            self._schedule()
        d: Deferred[Any] = Deferred()
        batch.items.append([blob, destinations,
                            encode_groups(groups, resent) if groups else None, seq])
        batch.deferreds.append(d)
        batch.size += len(blob)
        if len(batch.items) >= MAX_BATCH or batch.size >= MAX_BATCH_BYTES:
            self.flush_entries(to)
        return d

    def publish(self, to: str, blob: bytes, groups: list[str] | None,
                resent: bool) -> None:
        """A QoS 0 copy for ``to`` (at most once: nothing to wait for)."""
        items = self._pushes.get(to)
        if items is None:
            items = self._pushes[to] = []
            self._schedule()
        items.append([blob, groups, resent])
        if len(items) >= MAX_BATCH:
            self._send_push(to, self._pushes.pop(to))

    def _schedule(self) -> None:
        if self._call is None:
            self._call = self.reactor.callLater(0, self.flush)

    def flush(self) -> None:
        """Send everything gathered (the end of the turn; a node stopping)."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        self.flush_entries()
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
        batches = list(entries.items())
        self.batches += len(batches)
        for _, batch in batches:
            self.messages += len(batch.items)
        try:
            if len(batches) == 1 or self._transaction is None:
                replies = [self._add(dest, BATCH, _pack(batch.items))
                           for dest, batch in batches]
            else:
                self.transactions += 1
                replies = self._transaction([(dest, (BATCH, _pack(batch.items)))
                                             for dest, batch in batches])
        except Exception:
            failure = Failure()
            for _, batch in batches:
                _fire(failure, batch.deferreds)
            return
        for d, (_, batch) in zip(replies, batches):
            d.addBoth(_fire, batch.deferreds)

    def _send_push(self, to: str, items: list[list[Any]]) -> None:
        self.batches += 1
        self.messages += len(items)
        self._push(to, _pack([self.origin, items]))


def _fire(result: Any, deferreds: list[Deferred[Any]]) -> None:
    """The batch's reply to each of its messages (a failure: each one fails)."""
    if isinstance(result, Failure):
        for d in deferreds:
            d.errback(result)
    else:
        for d in deferreds:
            d.callback(result)
