"""Delivery: a session's outbound messages, from the router to the client's link.

Send at once when the client is online and has room (in-flight window below its
quota, transport not full), else queue within ``max_queued`` (oldest dropped, counted
and logged), and move the queue to the wire as room appears.  QoS 1/2 copies and the
inbound QoS 2 packet ids of a persistent session are journaled before they count.
The link is the session's connection (MQTT or virtual): ``send_publish``,
``send_quota``, ``paused``, ``state``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from mqtt_twisted.codec import PubRel
from mqtt_twisted.constants import ReasonCode
from mqtt_twisted.core import clientlog
from mqtt_twisted.core.retained import send_retained, send_slice
from mqtt_twisted.core.session import NO_ENTRIES
from mqtt_twisted.core.states import CLOSED
from mqtt_twisted.interfaces import IBatchedOutboundStore
from mqtt_twisted.message import Message, expired
from mqtt_twisted.records import AWAITING_PUBCOMP, Outbound, SubscriptionOptions

if TYPE_CHECKING:
    from mqtt_twisted.core.broker import Broker
    from mqtt_twisted.core.session import Session



def release_held(out: Outbound) -> None:
    """``out`` is done with (acknowledged, dropped, expired, its session gone): what
    waited for it goes on (``Outbound.held``)."""
    held, out.held = out.held, None
    if held is not None:
        held.fire(None)


class Delivery:
    """Outbound messages of every session of one broker."""

    log = Logger(namespace="mqtt_twisted.core.broker.Broker")

    __slots__ = ("broker", "clock", "settings", "stats", "store", "journal", "durable", "flow",
                 "high_water", "offline", "hold", "put_outbound", "sent_outbound",
                 "drop_outbound", "closing_full")

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.clock = broker.clock
        self.settings = broker.settings
        self.stats = broker.stats
        self.store = broker.store
        self.journal = broker.journal
        #: Whether per-message writes are made (the journal's, read once: it never changes).
        self.durable = broker.journal.durable
        self.flow = broker.flow
        #: Connections to close at the turn's end for a full queue (``_close_full``).
        self.closing_full: set[Any] = set()
        self.offline = broker.offline
        #: Queue length at which a session's publishers are held back (flow control).
        self.high_water = max(1, min(1000, self.settings.max_queued // 2))
        #: ``hold(session, out)``, told of every share copy made (a cluster router's:
        #: a copy from a peer's stream keeps its entry unacknowledged until the copy
        #: is done with, ``release_held``); None on a single node.
        self.hold: Any = None
        store = self.store
        #: The outbound-record writes: a batching store's (one write per reactor turn,
        #: a queued record going in flight marked as sent), else storeOutbound and
        #: removeOutbound, a queued record going in flight stored again with its packet id.
        if IBatchedOutboundStore.providedBy(store):
            self.put_outbound = store.putOutbound
            self.sent_outbound = store.sentOutbound
            self.drop_outbound = store.dropOutbound
        else:
            self.put_outbound = self.sent_outbound = store.storeOutbound
            self.drop_outbound = store.removeOutbound

    def deliver(self, session: Session, message: Message, qos: int, retain: bool,
                subscription_ids: tuple[int, ...] | None, group: str | None = None) -> None:
        """Send now if the client is online and has room, else queue within bounds."""
        self.stats.deliveries += 1  # the work a PUBLISH makes (fairness per read)
        read_check = session.read_check
        if read_check is not None and not read_check(message.topic):
            return  # a topic the authorizer refuses inside a granted wildcard filter
        conn = session.connection
        if conn is not None:
            if not session.queue:
                if not conn.paused:
                    if not qos:
                        conn.send_publish(message, 0, retain, None, subscription_ids)
                        return
                    if (len(session.inflight) < conn.send_quota
                            and session.inflight_bytes < session.max_inflight_bytes):
                        seq = session._next_seq  # Session.next_seq, inline (per message)
                        session._next_seq = seq + 1
                        out = Outbound(message, qos, retain, subscription_ids, None, 0,
                                       group, seq)
                        if group is not None and self.hold is not None:
                            self.hold(session, out)
                        # In flight now (as pump does for a queued one, inline: per message).
                        inflight = session.inflight
                        if inflight is NO_ENTRIES:
                            inflight = session.inflight = {}
                        pid = (seq - 1) % 65535 + 1  # Session.allocate_packet_id's
                        while pid in inflight:
                            pid = pid + 1 if pid < 65535 else 1
                        out.packet_id = pid
                        inflight[pid] = out
                        session.inflight_bytes += len(message.payload) + len(message.topic)
                        if self.durable and session.expiryInterval != 0:
                            # Stored before it is sent: a crash cannot lose track of it.
                            self.journal.persist(self.put_outbound(session.clientId, out))
                        if not conn.send_publish(message, qos, retain, pid, subscription_ids):
                            self.outbound_done(session, pid)
                        return
                elif not qos and self.flow.hold_back_publisher(
                        conn, len(message.payload) + len(message.topic)):
                    # The publisher is held back, so what the transport buffers beyond its
                    # mark is bounded by one read: write rather than queue.
                    conn.send_publish(message, 0, retain, None, subscription_ids)
                    return
            elif len(session.queue) >= self.high_water:
                self.flow.hold_back_publisher(conn)
        elif not session.persistent or (not qos and not self.settings.queue_qos0_offline):
            return
        seq = session._next_seq  # Session.next_seq, inline (per message)
        session._next_seq = seq + 1
        out = Outbound(message, qos, retain, subscription_ids, None, 0, group, seq)
        if group is not None and self.hold is not None:
            self.hold(session, out)
        if conn is None:  # held for a client that is away: the broker-wide bound too
            offline = self.offline
            if not offline.admit(session, out):
                return
            dropped = session.enqueue(out)
            offline.queued(session, out, dropped)
        else:
            dropped = session.enqueue(out)
        if dropped:
            self._dropped(session, dropped)
            if conn is not None and self.settings.queue_full == "disconnect":
                self._close_full(conn)
            if dropped[0] is out:
                return  # larger than the whole queue: never held, so never stored
        # (expiryInterval != 0: Session.persistent without its property call, on the
        # three per-message writes: here, in flight (here or in pump) and outbound_done.)
        if qos and self.durable and session.expiryInterval != 0:
            self.journal.persist(self.put_outbound(session.clientId, out))

    def _dropped(self, session: Session, dropped: list[Outbound]) -> None:
        for old in dropped:
            if old.held is not None:
                release_held(old)
        if self.durable and session.persistent:
            # Their stored copies go too: a CONNECT or DISCONNECT saves only the session's
            # own fields (journal.save_session), so nothing else would remove them.
            for old in dropped:
                if old.qos:
                    self.journal.persist(self.drop_outbound(session.clientId, old.seq))
        before = session.dropped - len(dropped)
        self.stats.messages_dropped += len(dropped)
        if before.bit_length() != session.dropped.bit_length():  # log 1st, 2nd, 4th, 8th...
            self.log.warn("Queue of {client} is full ({size} messages or {bytes} bytes); "
                          "dropped the oldest (topic {topic}; {n} dropped so far)",
                          client=session.clientId, size=self.settings.max_queued,
                          bytes=self.settings.max_queued_bytes,
                          topic=dropped[-1].message.topic, n=session.dropped)

    def _close_full(self, conn: Any) -> None:
        """``--queue-full disconnect``: close ``conn`` at the turn's end, once (not in the
        middle of a publisher's routing, which a clean session's end would change)."""
        closing = self.closing_full
        if conn not in closing:
            closing.add(conn)
            self.clock.callLater(0, self._closed_full, conn)

    def _closed_full(self, conn: Any) -> None:
        self.closing_full.discard(conn)
        if conn.state != CLOSED:
            self.stats.limit_hit("queue_full")
            clientlog.closing(conn, ReasonCode.QUOTA_EXCEEDED, "its queue is full",
                              why="queue full")
            conn.close(ReasonCode.QUOTA_EXCEEDED)

    def resend(self, session: Session, conn: Any) -> None:
        """A client reconnected to its session: resend its unacknowledged PUBLISHes
        (DUP=1) and PUBRELs, in their order [MQTT-4.4.0-1]."""
        for pid, out in list(session.inflight.items()):
            if out.state == AWAITING_PUBCOMP:
                conn.send(PubRel(pid))
            elif not conn.send_publish(out.message, out.qos, out.retain, pid,
                                       out.subscription_ids, dup=True):
                del session.inflight[pid]
                if out.held is not None:
                    release_held(out)
                session.inflight_bytes -= len(out.message.payload) + len(out.message.topic)
                if self.durable and session.persistent:
                    self.journal.persist(self.drop_outbound(session.clientId, out.seq))

    def pump(self, session: Session) -> None:
        """Move queued messages to the wire while the client has room."""
        conn = session.connection
        queue = session.queue
        if conn is None:
            return
        now = None  # (the clock read once, if a message has properties)
        while queue and not conn.paused and conn.state != CLOSED:
            out = queue[0]
            if out.qos and (len(session.inflight) >= conn.send_quota
                            or session.inflight_bytes >= session.max_inflight_bytes):
                return
            queue.popleft()
            session.queued_bytes -= len(out.message.payload) + len(out.message.topic)
            if out.message.properties and expired(
                    out.message, now if now is not None else (now := self.clock.seconds())):
                # [MQTT-3.3.2-5] not yet sent onward: the copy for this subscriber goes.
                self.stats.messages_expired += 1
                if out.held is not None:
                    release_held(out)
                if out.qos and self.durable and session.persistent:
                    self.journal.persist(self.drop_outbound(session.clientId, out.seq))
                continue
            if not out.qos:
                conn.send_publish(out.message, 0, out.retain, None, out.subscription_ids)
            else:  # in flight now, inline (deliver does the same for one not queued)
                inflight = session.inflight
                if inflight is NO_ENTRIES:
                    inflight = session.inflight = {}
                pid = (out.seq - 1) % 65535 + 1  # Session.allocate_packet_id's
                while pid in inflight:
                    pid = pid + 1 if pid < 65535 else 1
                out.packet_id = pid
                inflight[pid] = out
                message = out.message
                session.inflight_bytes += len(message.payload) + len(message.topic)
                if self.durable and session.expiryInterval != 0:
                    # Stored queued already: only its going in flight is new (a batching
                    # store's sent mark, when the packet id is the derived one).
                    self.journal.persist(self.sent_outbound(session.clientId, out))
                if not conn.send_publish(message, out.qos, out.retain, pid,
                                         out.subscription_ids):
                    self.outbound_done(session, pid)
        congested = self.flow.congested
        if congested and conn in congested and not queue and not conn.paused:
            self.flow.release(conn)
        if session.retained_backlog and not queue and not conn.paused:
            messages, options = session.retained_backlog.pop(0)
            self.clock.callLater(0, self.send_retained_slice, session, messages, options)

    def outbound_done(self, session: Session, packet_id: int) -> None:
        """PUBACK or PUBCOMP: the flow for ``packet_id`` is complete."""
        inflight = session.inflight
        out = inflight.get(packet_id)  # (NO_ENTRIES has no pop)
        if out is None:
            return
        del inflight[packet_id]
        if out.held is not None:
            release_held(out)
        session.inflight_bytes -= len(out.message.payload) + len(out.message.topic)
        if self.durable and session.expiryInterval != 0:
            self.journal.persist(self.drop_outbound(session.clientId, out.seq))
        if session.queue:
            self.pump(session)

    def outbound_released(self, session: Session, out: Outbound) -> None:
        """PUBREC: the message is delivered; only PUBREL/PUBCOMP remain [MQTT-4.3.3]."""
        out.state = AWAITING_PUBCOMP
        if out.held is not None:
            release_held(out)  # the client has it: a second copy elsewhere would be one too many
        if self.durable and session.persistent:
            self.journal.persist(self.put_outbound(session.clientId, out))

    def add_inbound_qos2(self, session: Session, packet_id: int) -> None:
        if session.inboundQoS2:
            session.inboundQoS2.add(packet_id)  # type: ignore[union-attr]
        else:
            session.inboundQoS2 = {packet_id}
        if self.durable and session.persistent:
            self.journal.persist(self.store.addInboundQoS2(session.clientId, packet_id))

    def remove_inbound_qos2(self, session: Session, packet_id: int) -> None:
        if packet_id in session.inboundQoS2:
            session.inboundQoS2.discard(packet_id)  # type: ignore[union-attr]
        if self.durable and session.persistent:
            self.journal.persist(self.store.removeInboundQoS2(session.clientId, packet_id))

    def send_retained_many(self, session: Session,
                           granted: list[tuple[str, SubscriptionOptions, bool]]) -> None:
        """The retained messages for one SUBSCRIBE's granted plain filters ``(filter,
        options, is new)`` [MQTT-3.3.1-9], as v5's retain handling asks: 0 always, 1
        for a new subscription only, 2 never.  A store that can tell that it holds
        none (``mayHaveRetained``) is asked twice a packet, for the filters under
        ``#`` and those under ``$SYS/#``, not searched once per filter."""
        may = getattr(self.store, "mayHaveRetained", None)
        plain = sys = True
        if may is not None:
            plain, sys = may("#"), may("$SYS/#")
        for topic_filter, options in _wanted(granted, may, plain, sys):
            self.send_retained(session, topic_filter, options)

    def send_retained(self, session: Session, topic_filter: str,
                      options: SubscriptionOptions) -> None:
        """Deliver the retained messages matching a new subscription, in slices
        (core/retained.py)."""
        send_retained(self, session, topic_filter, options)

    def send_retained_slice(self, session: Session, messages: Iterator[Message | None],
                            options: SubscriptionOptions) -> None:
        """The next slice of a new subscription's retained messages."""
        send_slice(self, session, messages, options)


def wanted(granted: list[tuple[str, SubscriptionOptions, bool]], may: Any,
           plain: bool, sys: bool) -> list[tuple[str, SubscriptionOptions]]:
    """The granted ``(filter, options, is new)`` whose retained messages are looked up:
    retain handling 0, or 1 on a new subscription; and, where the store can tell
    (``may``, its ``mayHaveRetained``; ``plain`` and ``sys`` its answers for ``#``
    and ``$SYS/#``), only those under a part of the tree that holds any.  The
    specification of its compiled twin (core/_subscribe.pyx)."""
    result = []
    for topic_filter, options, is_new in granted:
        handling = options.retain_handling
        if handling and (handling == 2 or not is_new):
            continue
        if may is not None:
            if topic_filter[:1] != "$":
                if not plain:
                    continue
            elif topic_filter == "$SYS" or topic_filter.startswith("$SYS/"):
                if not sys:
                    continue
            elif not may(topic_filter):
                continue
        result.append((topic_filter, options))
    return result


#: :func:`wanted` or its compiled twin (core/_compiled.py binds it).
_wanted = wanted
