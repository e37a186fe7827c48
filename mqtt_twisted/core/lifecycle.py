"""How sessions end and come back: wills, their delays, expiry, and restore at start-up.

A connection that ends (any reason) sends its will, now or after its delay
[MQTT-3.1.3-9], and its session is dropped (clean) or kept until its expiry
interval runs out.  Timers come from the broker's clock.  At start-up the stored
sessions are rebuilt; those whose client was connected when the broker died get
their wills published.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from mqtt_twisted.core import clientlog
from mqtt_twisted.core._async import when
from mqtt_twisted.core.delivery import release_held
from mqtt_twisted.core.session import NO_ENTRIES, Session
from mqtt_twisted.message import Message

if TYPE_CHECKING:
    from mqtt_twisted.core.broker import Broker

_NEVER_EXPIRES = 0xFFFFFFFF


def capped_expiry(cap: float | None, expiry: float | None) -> float | None:
    """``expiry`` (None or 0xFFFFFFFF: never) within ``cap`` (None: no cap)."""
    value = None if expiry == _NEVER_EXPIRES else expiry
    if cap is not None and (value is None or value > cap):
        return cap
    return value


class Lifecycle:
    """Wills, session expiry and restore, for one broker."""

    log = Logger(namespace="mqtt_twisted.core.broker.Broker")

    __slots__ = ("broker",)

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def connection_ended(self, conn: Any, send_will: bool) -> None:
        """A connection closed (any reason): will, then keep or drop its session."""
        broker = self.broker
        broker.connections.pop(conn, None)
        if broker.flow.congested:
            broker.flow.release(conn)
        session = conn.session
        conn.session = None
        if session is None or session.connection is not conn:
            return
        session.connection = None
        broker.stats.client_disconnected()
        clientlog.disconnected(conn)
        will = session.will
        session.will = None
        if will is not None and broker.wills is not None and not session.persistent:
            broker.wills.ended(session)
        if will is not None and send_will:
            if session.willDelay and session.persistent:
                session.will_call = broker.clock.callLater(
                    min(session.willDelay, session.expiryInterval or session.willDelay),
                    self.publish_will, session, will)
            else:
                self.publish_will(session, will)
        if not session.persistent:
            if session.inflight or session.queue:  # (else nothing held to hand over)
                self._hand_over_shared(session)
            self.discard_session(session)
            return
        broker.offline.away(session)  # (a will just routed to it is counted again here)
        session.disconnectedAt = broker.clock.seconds()
        if session.expiryInterval is not None:
            session.expiry_call = broker.clock.callLater(session.expiryInterval, self._expire,
                                                         session)
        broker.journal.save_session(session)

    def _hand_over_shared(self, session: Session) -> None:
        """A departing member's unacknowledged shared messages go to another member."""
        for out in session.outbound:
            if out.group is not None and out.state == 0:
                self.broker.router.hand_over(out, session.clientId)

    def publish_will(self, session: Session, will: Message) -> None:
        broker = self.broker
        session.will_call = None
        broker.stats.wills_published += 1
        will.received_at = broker.clock.seconds()
        if broker.authorizer is None:
            broker.route(will)
            return
        when(broker.may_publish(session, will.topic),
             lambda allowed: broker.route(will) if allowed else None,
             lambda f: self.log.failure("Authorizer failed on a will", f))

    def _expire(self, session: Session) -> None:
        session.expiry_call = None
        if session.connection is None and self.broker.sessions.get(session.clientId) is session:
            self.log.info("Session of {client} expired", client=session.clientId)
            self.discard_session(session)

    def discard_session(self, session: Session) -> None:
        """End a session: a delayed will goes out now [MQTT-3.1.3-9]; then forget its
        subscriptions, queue and stored state."""
        broker = self.broker
        rare = session._rare is not None  # (else no timers and no offline charge)
        will_call = session.will_call if rare else None
        if will_call is not None and will_call.active():
            will = will_call.args[1]  # (a cancelled DelayedCall forgets its arguments)
            will_call.cancel()
            self.publish_will(session, will)
        if rare:
            session.will_call = None
        if broker.sessions.get(session.clientId) is session:
            del broker.sessions[session.clientId]
        for topic_filter in session.subscriptions:
            broker.router.remove(session.clientId, topic_filter)
        if session.inflight or session.queue:
            for out in session.outbound:
                if out.held is not None:
                    release_held(out)  # given up, as on one node: its stream entry goes on
        session.subscriptions = NO_ENTRIES
        session.inflight = NO_ENTRIES
        session.inflight_bytes = 0
        session.clear_queue()
        if rare or session._rare is not None:  # (publish_will may have made the record)
            broker.offline.back(session)
            if session.expiry_call is not None and session.expiry_call.active():
                session.expiry_call.cancel()
        delete_now = getattr(broker.store, "deleteSessionNow", None)  # (optional)
        if delete_now is not None:
            delete_now(session.clientId)  # (no Deferred to make and look at)
        else:
            broker.journal.persist(broker.store.deleteSession(session.clientId))

    def set_session_expiry(self, session: Session, expiry: float | None) -> None:
        """A session expiry interval (None or 0xFFFFFFFF: never), capped by the
        operator's maximum."""
        session.expiryInterval = capped_expiry(self.broker.settings.max_session_expiry,
                                               expiry)

    def restore_session(self, state: Any) -> Session:
        """Rebuild a live session (and its subscriptions) from stored state at start-up."""
        broker = self.broker
        settings = broker.settings
        session = Session(state.clientId, settings.max_inflight, settings.max_queued,
                          settings.max_queued_bytes, settings.max_inflight_bytes)
        # Stored before the cap was set, or under a higher one: the cap holds from now.
        session.expiryInterval = capped_expiry(settings.max_session_expiry,
                                               state.expiryInterval)
        session.will = state.will
        session.willDelay = state.willDelay
        session.disconnectedAt = state.disconnectedAt
        session.inboundQoS2 = set(state.inboundQoS2)
        session.owner = getattr(state, "owner", None)
        # Until its client is back, the owner's name stands for its identity: the ACL
        # then checks the deliveries queued meanwhile against the owner's own rules.
        session.identity = session.owner
        if state.subscriptions:
            session.subscriptions = dict(state.subscriptions)
            broker.index(session.clientId, list(state.subscriptions.items()))
        session.restore_outbound(list(state.outbound), getattr(state, "nextSeq", 0))
        broker.offline.away(session)
        broker.refresh_read_check(session)
        broker.sessions[session.clientId] = session
        now = broker.clock.seconds()
        if session.disconnectedAt is None:
            # Its client was connected when the broker stopped without saying goodbye
            # (a crash): the connection ended now, and the will (kept while online) goes
            # out once every session is back, after its delay.  (Single node: a cluster
            # must first know which sessions live on other nodes.)
            session.disconnectedAt = now
            will, session.will = session.will, None
            if will is not None:
                delay = session.willDelay if session.persistent else 0
                if session.expiryInterval is not None:
                    delay = min(delay, session.expiryInterval)
                session.will_call = broker.clock.callLater(delay, self.publish_will, session,
                                                           will)
        if session.expiryInterval is not None:
            gone = now - session.disconnectedAt
            session.expiry_call = broker.clock.callLater(
                max(0.0, session.expiryInterval - gone), self._expire, session)
        return session
