"""The Redis store's batches: the outbound-record writes of one reactor turn on one
connection, applied by one script call (``IBatchedOutboundStore``).

A QoS 1 message to a persistent session costs up to three record writes: stored
queued, stored again in flight (its packet id), removed at PUBACK.  Sent one command
each, every one of them paid a Deferred, an encoded command, a reply and its callbacks
in the broker, and a script run in Redis.  Here a connection gathers the record writes
made during a turn into a :class:`Batch`: per client, the records put and removed
(``seq -> record``, or None to remove: a later write of one seq replaces the earlier,
so a record stored, sent and acknowledged in one turn costs one HDEL) and the highest
sequence number sent.  At the end of the turn (or, while the connection's earlier
commands are unanswered, of the turn that reads the last reply: ``_redislink``'s group
commit, the batch taking the writes of the turns between) the batch is one ``EVALSHA`` of the
``batch`` script (``_redisscripts``), applied to each client's keys only while its
session exists, as the single writes were.  Every write of the batch returns the
batch's one :class:`~mqtt_twisted.writes.SharedWrite`, which fires when Redis has
answered: a publisher's PUBACK still waits for Redis to have the message.

**Sent marks.**  A queued record going in flight with the packet id derived from its
sequence number (``records.packet_id_for``, which the broker allocates whenever that
id is free) is not written again: the session hash's ``sent`` field keeps the highest
sequence number sent, and loading gives every record at or below it without a packet
id that derived id, in flight (``_redisformat.decode_session``).  The broker sends a
session's messages in sequence order, so every record at or below the mark was sent.
A whole ``saveSession`` writes every packet id and drops the mark; ``nextSeq`` on
loading keeps sequence numbers above the mark once every record is gone.

**Order.**  A batch takes its place among its connection's commands when it opens;
any other command on that connection closes it (the writes after that command open a
new batch behind it), as does its being written, so a client's writes keep the order
they were made in.  With a cluster's fence (``RedisStore.fence``) a batch holds one
client's writes, since the fence is checked, and fails, per client.
"""

from __future__ import annotations

from typing import Any
from zlib import crc32

import msgpack
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from mqtt_twisted.cluster import resp
from mqtt_twisted.store._redisformat import FORMAT, PACK
from mqtt_twisted.store._redisscripts import FENCED, SHAS
from mqtt_twisted.writes import SharedWrite

#: The batch's map of records: raw strings, which Redis's Lua cmsgpack reads (it knows
#: no bin type); the records in it are opaque byte strings to the script.
_PACK_MAP = msgpack.Packer(use_bin_type=False).pack
_BATCH = SHAS["batch"]
_FENCED_BATCH = SHAS[FENCED["batch"]]
#: The ``EVALSHA`` of the batch script and its SHA1, in RESP.
_BATCH_HEAD = b"$7\r\nEVALSHA\r\n$%d\r\n%s\r\n" % (len(_BATCH), _BATCH)


class Batch:
    """The writes one connection gathers during a turn (module docstring).  It is its
    own call on the link (``_redislink``: ``deadline``, ``done``, ``deferred``), so a
    batch costs no Deferred and no call object: the reply fires its SharedWrite."""

    __slots__ = ("sections", "write", "fence", "cid", "open", "deadline", "done",
                 "deferred")

    #: As a link call's (``_redislink._Call``): no arguments (the command is encoded
    #: when the turn's commands are written), a write, and itself the item to encode.
    args = None
    is_write = True
    batch = None

    def __init__(self, fence: tuple[bytes, bytes, bytes, bytes] | None, cid: bytes) -> None:
        self.sections: dict[bytes, Section] = {}
        #: What every write of the batch returns; fired by the script's reply.
        self.write = self.deferred = SharedWrite()
        #: The store's fence when the batch opened (then it holds ``cid``'s writes only).
        self.fence = fence
        self.cid = cid
        #: Until the link closes it (``Link.close_batches``): it takes writes.
        self.open = True
        self.deadline = 0.0
        self.done = False

    def command(self) -> tuple[Any, ...]:
        """The ``EVALSHA``: KEYS a session hash and an outbound hash per client; ARGV
        per client its sent mark (empty: none) and its records, a msgpack map of seq
        to record (empty: remove)."""
        keys: list[bytes] = []
        args: list[Any] = []
        for section in self.sections.values():
            keys += (section.session, section.out)
            args += (section.sent or b"", _PACK_MAP(section.ops))
        fence = self.fence
        if fence is None:
            return (b"EVALSHA", _BATCH, len(keys), *keys, *args)
        home, epoch_key, node, epoch = fence
        return (b"EVALSHA", _FENCED_BATCH, len(keys) + 2, home, epoch_key, *keys,
                self.cid, node, epoch, *args)

    def encode(self) -> bytes:
        """:meth:`command` in RESP, built once when the turn's commands are written:
        unfenced, in one bytes join, with no tuple of arguments in between."""
        if self.fence is not None:
            return resp.encode_command(*self.command())
        sections = self.sections
        parts = [b"*%d\r\n%s$%d\r\n%d\r\n" % (3 + 4 * len(sections), _BATCH_HEAD,
                                                 len(str(2 * len(sections))),
                                                 2 * len(sections))]
        args = []
        for section in sections.values():
            session, out = section.session, section.out
            parts.append(b"$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(session), session,
                                                           len(out), out))
            sent = b"%d" % section.sent if section.sent else b""
            ops = _PACK_MAP(section.ops)
            args.append(b"$%d\r\n%s\r\n$%d\r\n" % (len(sent), sent, len(ops)))
            args.append(ops)
            args.append(b"\r\n")
        parts += args
        return b"".join(parts)


class Section:
    """One client's part of a batch: its two keys, its records by sequence number (the
    record, or ``b""`` to remove it) and the highest sequence number sent (0: none)."""

    __slots__ = ("client", "session", "out", "ops", "sent", "write", "batch")

    def __init__(self, client: str, session: bytes, out: bytes, batch: Batch) -> None:
        self.client = client
        self.session = session
        self.out = out
        self.ops: dict[int, bytes] = {}
        self.sent = 0
        self.batch = batch
        self.write = batch.write


class OutboundBatches:
    """:class:`~mqtt_twisted.interfaces.IBatchedOutboundStore` for the Redis store, and
    its ``storeOutbound``/``removeOutbound`` on top (a Deferred each, for callers other
    than the broker).  Mixed into ``RedisStore``, whose ``_links``, ``_keys``,
    ``fence``, ``mark``, ``mark_index`` and ``_write`` it uses."""

    _links: list[Any]
    _keys: Any
    fence: tuple[bytes, bytes, bytes, bytes] | None
    mark: tuple[bytes, bytes] | None
    mark_index: int
    _write: Any
    #: The last message serialized, and its stored form (a message fanned out to many
    #: sessions is serialized once: the broker stores its copies one after the other).
    _last_message: Any = None
    _last_blob = b""
    #: The section written last: the next write of the same client, while its batch is
    #: open (and the fence the same), goes there without a look-up (one subscriber's
    #: stream: every write).
    _hot: Section | None = None

    def _section(self, clientId: str) -> Section:
        """The client's part of its connection's open batch, opening one if needed."""
        cid = clientId.encode("utf-8")
        links = self._links
        link = links[crc32(cid) % len(links)] if len(links) > 1 else links[0]
        fence = self.fence
        key = None if fence is None else cid
        batch = link.batches.get(key)
        if batch is None:
            batch = Batch(fence, cid)
            link.open_batch(key, batch)
        section = batch.sections.get(cid)
        if section is None:
            prefix = self._keys.prefix
            section = batch.sections[cid] = Section(
                clientId, b"%s:session:{%s}" % (prefix, cid), b"%s:out:{%s}" % (prefix, cid),
                batch)
        self._hot = section
        return section

    def putOutbound(self, clientId: str, outbound: Any) -> Any:
        message = outbound.message
        if message is not self._last_message:
            # _redisformat.encode_message and encode_outbound, inline: every message.
            self._last_message = message
            self._last_blob = PACK([FORMAT, message.topic, message.payload, message.qos,
                                    message.retain, message.properties, message.received_at,
                                    message.sender])
        if self.mark is not None:
            return self._marked(clientId, outbound)
        section = self._hot
        if (section is None or section.client != clientId or not section.batch.open
                or section.batch.fence is not self.fence):
            section = self._section(clientId)
        ids = outbound.subscription_ids
        section.ops[outbound.seq] = PACK([
            FORMAT, outbound.seq, outbound.qos, outbound.retain, list(ids) if ids else None,
            outbound.packet_id, outbound.state, outbound.group, self._last_blob])
        return section.write

    def sentOutbound(self, clientId: str, outbound: Any) -> Any:
        seq = outbound.seq
        if outbound.packet_id != (seq - 1) % 65535 + 1 or outbound.state:
            return self.putOutbound(clientId, outbound)  # not the derived id: store it
        section = self._hot
        if (section is None or section.client != clientId or not section.batch.open
                or section.batch.fence is not self.fence):
            section = self._section(clientId)
        if seq > section.sent:
            section.sent = seq
        return section.write

    def dropOutbound(self, clientId: str, seq: int) -> Any:
        section = self._hot
        if (section is None or section.client != clientId or not section.batch.open
                or section.batch.fence is not self.fence):
            section = self._section(clientId)
        section.ops[seq] = b""
        return section.write

    def storeOutbound(self, clientId: str, outbound: Any) -> Deferred[None]:
        return _deferred(self.putOutbound(clientId, outbound))

    def removeOutbound(self, clientId: str, seq: int) -> Deferred[None]:
        return _deferred(self.dropOutbound(clientId, seq))

    def _marked(self, clientId: str, outbound: Any) -> Deferred[None]:
        """A record made while a cluster node delivers a stream entry: written with the
        entry's mark in one script call (``marked``), outside the batches."""
        cid = clientId.encode("utf-8")
        keys = self._keys
        ids = outbound.subscription_ids
        record = PACK([FORMAT, outbound.seq, outbound.qos, outbound.retain,
                       list(ids) if ids else None, outbound.packet_id, outbound.state,
                       outbound.group, self._last_blob])
        field, entry_id = self.mark  # type: ignore[misc]  # (set: see the caller)
        index = self.mark_index
        return self._write(cid, "marked", (keys.key(b"session", cid), keys.key(b"out", cid)),
                           (str(outbound.seq).encode(), record, field,
                            entry_id if not index else b"%s.%d" % (entry_id, index)))


def _deferred(write: Any) -> Deferred[None]:
    """A Deferred of its own for one write of a batch, firing with None or the failure."""
    if isinstance(write, Deferred):
        return write
    d: Deferred[None] = Deferred()
    write.addBoth(_settle, d)
    return d


def _settle(result: Any, d: Deferred[None]) -> None:
    if isinstance(result, Failure):
        d.errback(result)
    else:
        d.callback(None)
