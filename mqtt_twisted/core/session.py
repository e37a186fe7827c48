"""Sessions: what the broker keeps for a client across connections.

A session holds the subscriptions, the outbound messages (in flight, in packet
id order, plus a bounded queue behind them) and the inbound QoS 2 packet ids.
Delivery decisions live here; the wire format lives in the connection.
"""

from __future__ import annotations

from collections import deque
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from zope.interface import implementer

from mqtt_twisted.core._rare import rare_fields
from mqtt_twisted.interfaces import ISessionState
from mqtt_twisted.message import Message

# The records a session holds live below both core and store, which persist them.
from mqtt_twisted.records import (
    AWAITING_ACK,
    AWAITING_PUBCOMP,
    Outbound,
    SubscriptionOptions,
)

if TYPE_CHECKING:
    from mqtt_twisted.core.connection import MQTTConnection

_NO_IDS: frozenset[int] = frozenset()
#: What ``Session.enqueue`` returns when it dropped nothing (shared: never written to).
_NONE_DROPPED: list[Outbound] = []
#: What ``subscriptions`` and ``inflight`` hold until their first entry: one shared,
#: read-only empty mapping instead of two empty dicts (128 bytes) per session.  Code
#: that adds an entry replaces it with a dict first (``if x is NO_ENTRIES``); removals
#: only ever find entries in a real dict.
NO_ENTRIES: Any = MappingProxyType({})

#: (max_queued, max_queued_bytes, max_inflight_bytes) -> the Session subclass holding them.
_LIMITED: dict[tuple[int, int, int], type] = {}

__all__ = ["AWAITING_ACK", "AWAITING_PUBCOMP", "NO_ENTRIES", "Outbound", "Session",
           "SubscriptionOptions"]


@implementer(ISessionState)
class Session:
    """The broker's record of one client id."""

    __slots__ = (
        "clientId", "subscriptions", "expiryInterval", "inflight", "queue", "inboundQoS2",
        "connection", "identity", "max_inflight", "_next_seq",
        "queued_bytes", "inflight_bytes", "read_check", "retained_backlog", "owner", "will", "stored_epoch",
        "_rare",
    )
    # And, in a record made on first use (core/_rare.py), what a connected session
    # leaves at its default: the expiry and will timers, when it went offline and its
    # offline charge, drops, a will's delay (MQTT 5 only).  (A will and the stored epoch
    # stay slots: many real clients have a will, and every persistent session has a
    # stored epoch.)  The broker-wide limits (``max_queued``, ``max_queued_bytes``,
    # ``max_inflight_bytes``) are class attributes of a subclass made once per set of
    # values (:meth:`__new__`): read as fast as slots, 24 bytes less per session.

    max_queued: int
    max_queued_bytes: int
    max_inflight_bytes: int

    def __new__(cls, client_id: str, max_inflight: int = 20, max_queued: int = 1000,
                max_queued_bytes: int = 16 << 20, max_inflight_bytes: int = 0) -> Session:
        key = (max_queued, max_queued_bytes or 1 << 62, max_inflight_bytes or 1 << 62)
        limited = _LIMITED.get(key)
        if limited is None:
            if len(_LIMITED) >= 256:  # (settings change only on reload: a bound, not a case)
                _LIMITED.clear()
            limited = _LIMITED[key] = type(cls.__name__, (cls,), {
                "__slots__": (), "__module__": cls.__module__, "max_queued": key[0],
                "max_queued_bytes": key[1], "max_inflight_bytes": key[2]})
        return object.__new__(limited)

    def __init__(self, client_id: str, max_inflight: int = 20, max_queued: int = 1000,
                 max_queued_bytes: int = 16 << 20, max_inflight_bytes: int = 0) -> None:
        self.clientId = client_id
        self.subscriptions: dict[str, SubscriptionOptions] = NO_ENTRIES
        self.expiryInterval: float | None = 0
        self.inflight: dict[int, Outbound] = NO_ENTRIES
        # Both start as shared empty immutables and become a deque / set on first use:
        # an idle connection's session then costs a few hundred bytes less.
        self.queue: deque[Outbound] | tuple[()] = ()
        self.inboundQoS2: set[int] | frozenset[int] = _NO_IDS
        self.connection: MQTTConnection | None = None
        self.identity: Any = None
        #: The user it belongs to (``records.owner_of`` of the identity that created it).
        self.owner: str | None = None
        self.max_inflight = max_inflight  # (per client: its receive maximum caps it)
        # max_queued, and max_queued_bytes and max_inflight_bytes (0: no limit, kept as
        # a number no session reaches: one compare either way): the class's (__new__).
        #: What the queued messages hold: payload and topic bytes (see queued_size).
        self.queued_bytes = 0
        #: Payload and topic bytes in flight; the window closes at max_inflight_bytes.
        self.inflight_bytes = 0
        self._next_seq = 1
        #: ``topic -> bool`` when an authorizer grants one of its filters only in part
        #: (``core/readcheck.py``); None, the usual case, when every delivery may pass.
        self.read_check: Any = None
        #: Retained deliveries of new subscriptions waiting for the queue to empty.
        #: (A shared empty tuple until first used, as ``queue``.)
        self.retained_backlog: list[tuple[Any, SubscriptionOptions]] | tuple[()] = ()
        self.will: Message | None = None
        #: The journal's failure count when the store last got the whole session (-1:
        #: never from this process): while it is current, the store has every change
        #: since, and a CONNECT or DISCONNECT saves only the session's own fields.
        self.stored_epoch = -1
        self._rare: Any = None

    def next_seq(self) -> int:
        """Sequence numbers order a session's outbound messages, also across restarts."""
        seq = self._next_seq
        self._next_seq = seq + 1
        return seq

    def restore_outbound(self, outbound: list[Outbound], next_seq: int = 0) -> None:
        """Put stored messages back: in-flight ones (with a packet id) first, each in
        sequence order.  Sequence numbers go on after the last one held, and at least
        from ``next_seq`` (a store's ``nextSeq``: those it has seen sent, also after
        every record went)."""
        ordered = sorted(outbound, key=lambda o: o.seq)
        for out in ordered:
            if out.packet_id is None:
                if not self.queue:
                    self.queue = deque()
                self.queue.append(out)  # type: ignore[union-attr]
                self.queued_bytes += queued_size(out.message)
            else:
                if self.inflight is NO_ENTRIES:
                    self.inflight = {}
                self.inflight[out.packet_id] = out
                self.inflight_bytes += queued_size(out.message)
        self._next_seq = max(ordered[-1].seq + 1 if ordered else 1, next_seq)

    @property
    def outbound(self) -> list[Outbound]:
        """Held messages in delivery order: in flight first, then queued."""
        held = list(self.inflight.values())
        held.extend(self.queue)
        return held

    @property
    def persistent(self) -> bool:
        """Whether anything of the session outlives its connection."""
        return self.expiryInterval is None or self.expiryInterval > 0

    def allocate_packet_id(self, seq: int) -> int:
        """The packet id of the message ``seq``: ``records.packet_id_for(seq)``, or the
        next one after it not in flight [MQTT-2.3.1-2].  Derived from the sequence
        number, so that a store need not write it (see ``packet_id_for``)."""
        pid = (seq - 1) % 65535 + 1  # packet_id_for(seq), inline: once per message
        inflight = self.inflight
        while pid in inflight:
            pid = pid + 1 if pid < 65535 else 1
        return pid

    def enqueue(self, item: Outbound) -> list[Outbound]:
        """Queue ``item``; while the queue is over its count or bytes, drop the oldest;
        return what was dropped (the caller counts and logs).  An item larger than
        the whole byte limit is dropped itself."""
        queue = self.queue
        if not queue:
            queue = self.queue = deque()
        message = item.message
        size = len(message.payload) + len(message.topic)  # queued_size, inline
        if size > self.max_queued_bytes or not self.max_queued:
            self.dropped += 1
            return [item]
        if len(queue) < self.max_queued and self.queued_bytes + size <= self.max_queued_bytes:
            # Room: the usual case, with no list of what was dropped and no update of
            # ``dropped`` (a rare field: a descriptor's two calls).
            queue.append(item)
            self.queued_bytes += size
            return _NONE_DROPPED
        dropped = []
        while queue and (len(queue) >= self.max_queued
                         or self.queued_bytes + size > self.max_queued_bytes):
            old = queue.popleft()
            self.queued_bytes -= queued_size(old.message)
            dropped.append(old)
        self.dropped += len(dropped)
        queue.append(item)
        self.queued_bytes += size
        return dropped

    def clear_queue(self) -> None:
        self.queue = ()
        self.queued_bytes = 0


#: ``offline_charge``: what this session's queue adds to the broker-wide offline total
#: while its client is away (``core/offline.py``); 0 while it is connected.
for _name, _field in rare_fields("Session", {
        "disconnectedAt": None, "expiry_call": None, "will_call": None, "dropped": 0,
        "offline_charge": 0, "willDelay": 0}).items():
    setattr(Session, _name, _field)


def queued_size(message: Message) -> int:
    """What a queued copy is counted at: its payload and its whole topic, as it will be
    sent (a topic alias saves the publisher bytes, not the broker)."""
    return len(message.payload) + len(message.topic)
