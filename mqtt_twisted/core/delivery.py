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
from mqtt_twisted.constants import PropertyId
from mqtt_twisted.core._async import when
from mqtt_twisted.core.session import NO_ENTRIES
from mqtt_twisted.core.states import CLOSED
from mqtt_twisted.interfaces import IBatchedOutboundStore
from mqtt_twisted.message import Message
from mqtt_twisted.records import AWAITING_PUBCOMP, Outbound, SubscriptionOptions

if TYPE_CHECKING:
    from mqtt_twisted.core.broker import Broker
    from mqtt_twisted.core.session import Session

_EXPIRY = PropertyId.MESSAGE_EXPIRY_INTERVAL
#: Retained messages delivered to a new subscription per reactor turn.
RETAINED_SLICE = 100


def expired(message: Message, now: float) -> bool:
    """Whether a v5 message's expiry interval has run out [MQTT-3.3.2-5]."""
    interval = message.properties.get(_EXPIRY)
    return interval is not None and now - message.received_at >= interval


class Delivery:
    """Outbound messages of every session of one broker."""

    log = Logger(namespace="mqtt_twisted.core.broker.Broker")

    __slots__ = ("broker", "clock", "settings", "stats", "store", "journal", "durable", "flow",
                 "high_water", "offline", "put_outbound", "sent_outbound", "drop_outbound")

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
        self.offline = broker.offline
        #: Queue length at which a session's publishers are held back (flow control).
        self.high_water = max(1, min(1000, self.settings.max_queued // 2))
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
                        self._send_inflight(session, conn, Outbound(
                            message, qos, retain, subscription_ids, None, 0, group,
                            session.next_seq()))
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
        out = Outbound(message, qos, retain, subscription_ids, None, 0, group,
                       session.next_seq())
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
            if dropped[0] is out:
                return  # larger than the whole queue: never held, so never stored
        if qos and self.durable and session.persistent:
            self.journal.persist(self.put_outbound(session.clientId, out))

    def _dropped(self, session: Session, dropped: list[Outbound]) -> None:
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

    def _send_inflight(self, session: Session, conn: Any, out: Outbound,
                       queued: bool = False) -> None:
        pid = out.packet_id = session.allocate_packet_id(out.seq)
        inflight = session.inflight
        if inflight is NO_ENTRIES:
            inflight = session.inflight = {}
        inflight[pid] = out
        session.inflight_bytes += len(out.message.payload) + len(out.message.topic)
        if self.durable and session.persistent:
            # Stored before it is sent, so that a crash cannot lose track of it; a queued
            # one is stored already, and only its going in flight is new.
            self.journal.persist((self.sent_outbound if queued else self.put_outbound)(
                session.clientId, out))
        if not conn.send_publish(out.message, out.qos, out.retain, pid, out.subscription_ids):
            self.outbound_done(session, pid)

    def resend(self, session: Session, conn: Any) -> None:
        """A client reconnected to its session: resend its unacknowledged PUBLISHes
        (DUP=1) and PUBRELs, in their order [MQTT-4.4.0-1]."""
        for pid, out in list(session.inflight.items()):
            if out.state == AWAITING_PUBCOMP:
                conn.send(PubRel(pid))
            elif not conn.send_publish(out.message, out.qos, out.retain, pid,
                                       out.subscription_ids, dup=True):
                del session.inflight[pid]
                session.inflight_bytes -= len(out.message.payload) + len(out.message.topic)
                if self.durable and session.persistent:
                    self.journal.persist(self.drop_outbound(session.clientId, out.seq))

    def pump(self, session: Session) -> None:
        """Move queued messages to the wire while the client has room."""
        conn = session.connection
        queue = session.queue
        if conn is None:
            return
        now = self.clock.seconds()
        while queue and not conn.paused and conn.state != CLOSED:
            out = queue[0]
            if out.qos and (len(session.inflight) >= conn.send_quota
                            or session.inflight_bytes >= session.max_inflight_bytes):
                return
            queue.popleft()
            session.queued_bytes -= len(out.message.payload) + len(out.message.topic)
            if out.message.properties and expired(out.message, now):
                # [MQTT-3.3.2-5] not yet sent onward: the copy for this subscriber goes.
                self.stats.messages_expired += 1
                if out.qos and self.durable and session.persistent:
                    self.journal.persist(self.drop_outbound(session.clientId, out.seq))
                continue
            if out.qos:
                self._send_inflight(session, conn, out, True)
            else:
                conn.send_publish(out.message, 0, out.retain, None, out.subscription_ids)
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
        session.inflight_bytes -= len(out.message.payload) + len(out.message.topic)
        if self.durable and session.persistent:
            self.journal.persist(self.drop_outbound(session.clientId, out.seq))
        if session.queue:
            self.pump(session)

    def outbound_released(self, session: Session, out: Outbound) -> None:
        """PUBREC: the message is delivered; only PUBREL/PUBCOMP remain [MQTT-4.3.3]."""
        out.state = AWAITING_PUBCOMP
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

    def send_retained(self, session: Session, topic_filter: str,
                      options: SubscriptionOptions) -> None:
        """Deliver the retained messages matching a new subscription, retain=1, in
        slices of :data:`RETAINED_SLICE` that yield to the reactor between them and wait
        while the client's queue is long: a ``#`` subscriber over 100,000 retained
        messages neither blocks the other clients nor fills its own queue."""
        sessions = self.broker.sessions

        def got(messages: list[Message]) -> None:
            if sessions.get(session.clientId) is session:
                self.send_retained_slice(session, iter(messages), options)

        iterate = getattr(self.store, "iterRetained", None)
        matches = iterate(topic_filter) if iterate is not None else None
        if matches is not None:  # lazily: not even the list is built in one go
            self.send_retained_slice(session, matches, options)
            return
        when(self.store.matchRetained(topic_filter), got, self.journal.store_failed)

    def send_retained_slice(self, session: Session, messages: Iterator[Message],
                            options: SubscriptionOptions) -> None:
        """One slice; the rest is scheduled, or parked until ``pump`` empties the queue."""
        if self.broker.sessions.get(session.clientId) is not session:
            return  # discarded or replaced meanwhile
        now = self.clock.seconds()
        sub_ids = (options.subscription_id,) if options.subscription_id else None
        sent = 0
        for message in messages:
            if message.properties and expired(message, now):
                self.broker.retained_quota.forget(message.topic)
                self.journal.persist(self.store.deleteRetained(message.topic))
                continue
            self.deliver(session, message, min(message.qos, options.qos), True, sub_ids)
            sent += 1
            if sent >= RETAINED_SLICE:
                conn = session.connection
                if conn is not None and (conn.paused or len(session.queue) >= self.high_water):
                    if not session.retained_backlog:
                        session.retained_backlog = []
                    session.retained_backlog.append((messages, options))  # pump resumes
                else:
                    self.clock.callLater(0, self.send_retained_slice, session, messages,
                                         options)
                return
