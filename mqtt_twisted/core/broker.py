"""The sans-IO broker: sessions, routing, retained messages, wills.

It holds the live sessions and the subscription index, and writes every
durable change through to the store (whose calls may answer later: nothing
here assumes a store is synchronous).  Time comes from the injected clock.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mqtt_twisted.codec.packets import Auth, Connect
from mqtt_twisted.constants import PropertyId, ReasonCode
from mqtt_twisted.core._async import when
from mqtt_twisted.core.connection import CLOSED, CONNECTED, MQTTConnection
from mqtt_twisted.core.router import LOCAL, LocalRouter
from mqtt_twisted.core.session import AWAITING_PUBCOMP, Outbound, Session, SubscriptionOptions
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.core.shared import Strategy
from mqtt_twisted.core.stats import BrokerStats
from mqtt_twisted.errors import (
    ClientIdentifierNotValid,
    ConnectError,
    MQTTError,
    StorageError,
    StoreUnavailable,
)
from mqtt_twisted.interfaces import ICredentials
from mqtt_twisted.message import Message

_P = PropertyId
_NEVER_EXPIRES = 0xFFFFFFFF
_EXPIRY = PropertyId.MESSAGE_EXPIRY_INTERVAL


def expired(message: Message, now: float) -> bool:
    """Whether a v5 message's expiry interval has run out [MQTT-3.3.2-5]."""
    interval = message.properties.get(_EXPIRY)
    return interval is not None and now - message.received_at >= interval


@implementer(ICredentials)
class Credentials:
    """What a client presented on CONNECT (or an adapter on its behalf)."""

    __slots__ = ("adapter", "certificateIdentity", "clientId", "password", "peer", "username")

    def __init__(self, clientId: str, username: str | None = None, password: bytes | None = None,
                 certificateIdentity: str | None = None, peer: str = "", adapter: str = "mqtt"):
        self.clientId = clientId
        self.username = username
        self.password = password
        self.certificateIdentity = certificateIdentity
        self.peer = peer
        self.adapter = adapter


class Broker:
    """Routes messages between sessions; one per broker service."""

    log = Logger()

    def __init__(
        self,
        clock: Any,
        store: Any,
        settings: BrokerSettings | None = None,
        authenticator: Any = None,
        authorizer: Any = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.clock = clock
        self.store = store
        self.settings = settings or BrokerSettings()
        self.authenticator = authenticator
        self.authorizer = authorizer
        self.connect_timeout = connect_timeout
        self.sessions: dict[str, Session] = {}
        #: Subscriptions and dispatch: the seam a cluster router wraps.
        self.router: Any = LocalRouter(self.sessions, self.deliver)
        local = self.router
        # The index itself, for $SYS counts and white-box tests.
        self.tree, self.shared_tree = local.tree, local.shared_tree
        self.shared_groups = local.shared_groups
        self.stats = BrokerStats(clock.seconds())
        self.connections: set[MQTTConnection] = set()
        # A store that lives in this process (the memory store) needs no per-message
        # writes: the live sessions are the copy of record.
        self._durable = bool(getattr(store, "persistsMessages", True))
        self._collecting: list[Any] | None = None
        #: The connection whose PUBLISH is being routed, for flow control.
        self.publisher: MQTTConnection | None = None
        #: Queue length at which a session's publishers are held back (flow control).
        self._high_water = max(1, min(1000, self.settings.max_queued // 2))

    @property
    def shared_strategy(self) -> Strategy:
        """How a share group's member is chosen (``core.shared.STRATEGIES``)."""
        return self.router.shared_strategy  # type: ignore[no-any-return]

    @shared_strategy.setter
    def shared_strategy(self, strategy: Strategy) -> None:
        self.router.shared_strategy = strategy

    # --- connections ----------------------------------------------------------------------

    def build_connection(self, transport: Any, peer: str = "", listener: Any = None,
                         certificate_identity: str | None = None) -> MQTTConnection:
        conn = MQTTConnection(self, transport, peer, listener, certificate_identity)
        self.connections.add(conn)
        return conn

    def handle_connect(self, conn: MQTTConnection, packet: Connect) -> None:
        """Authenticate, lock the client id, take over or resume the session, CONNACK."""
        client_id = packet.client_id
        assigned = None
        if not client_id:
            if packet.protocol_level == 3:
                # MQTT 3.1 §3.1: the client identifier has 1 to 23 characters.
                conn.refuse(ClientIdentifierNotValid("MQTT 3.1 needs a client id"))
                return
            if not packet.clean_start and packet.protocol_level < 5:
                conn.refuse(ClientIdentifierNotValid("empty client id needs clean session"))
                return  # [MQTT-3.1.3-8]
            client_id = assigned = self._assign_client_id()
        conn.client_id = client_id
        conn.keep_alive = packet.keep_alive
        will = packet.will
        if will is not None and packet.protocol_level == 5:
            if will.qos > self.settings.maximum_qos:  # [MQTT-3.2.2-12]
                conn.refuse(ConnectError("will QoS not supported", ReasonCode.QOS_NOT_SUPPORTED))
                return
            if will.retain and not self.settings.retain_available:  # [MQTT-3.2.2-13]
                conn.refuse(ConnectError("retained will not supported",
                                         ReasonCode.RETAIN_NOT_SUPPORTED))
                return
        max_keepalive = self.settings.max_keepalive
        if (max_keepalive and packet.protocol_level < 5
                and not 0 < packet.keep_alive <= max_keepalive):
            # v3 has no way to tell the client another keep alive: refuse, as Mosquitto does.
            conn.refuse(ClientIdentifierNotValid(
                f"keep alive {packet.keep_alive} outside 1..{max_keepalive}"))
            return
        username = packet.username
        if conn.certificate_identity is not None and getattr(conn.listener,
                                                             "identityAsUsername", False):
            username = conn.certificate_identity  # Mosquitto's use_identity_as_username
        creds = Credentials(client_id, username, packet.password,
                            conn.certificate_identity, conn.peer,
                            getattr(conn.listener, "adapter", "mqtt"))
        method = packet.properties.get(_P.AUTHENTICATION_METHOD) if packet.properties else None
        if method is not None:
            self._start_exchange(conn, creds, method, packet.properties.get(
                _P.AUTHENTICATION_DATA), lambda identity: self._connect_authenticated(
                    conn, packet, assigned, identity), lambda f: self._connect_failed(conn, f))
            return
        if self.authenticator is None:
            self._connect_authenticated(conn, packet, assigned, username)
            return
        try:
            answer = self.authenticator.authenticate(creds)
        except Exception:
            self._connect_failed(conn, Failure())
            return
        when(answer,
             lambda identity: self._connect_authenticated(conn, packet, assigned, identity),
             lambda f: self._connect_failed(conn, f))

    # --- v5 enhanced authentication [MQTT-4.12] ------------------------------------------

    def _start_exchange(self, conn: MQTTConnection, creds: Credentials, method: str,
                        data: bytes | None, done: Callable[[Any], None],
                        failed: Callable[[Failure], None]) -> None:
        """Run an authentication exchange; ``done(identity)`` once the method succeeds."""
        enhanced = self.authenticator
        if enhanced is None or method not in getattr(enhanced, "methods", ()):
            failed(Failure(ConnectError(f"authentication method {method!r} not supported",
                                        ReasonCode.BAD_AUTHENTICATION_METHOD)))
            return
        conn.auth_method = method
        try:
            exchange = enhanced.startExchange(method, creds)
        except Exception:
            failed(Failure())
            return

        def on_step(step: Any) -> None:
            if conn.state == CLOSED:
                return
            if step.done:
                conn.auth_pending = None
                conn.auth_final_data = step.data
                done(step.identity)
            else:
                conn.auth_pending = (exchange, on_step, failed)
                conn.send(Auth(ReasonCode.CONTINUE_AUTHENTICATION, {
                    _P.AUTHENTICATION_METHOD: method, _P.AUTHENTICATION_DATA: step.data or b""}))

        self._auth_step(exchange, data, on_step, failed)

    @staticmethod
    def _auth_step(exchange: Any, data: bytes | None, on_step: Callable[[Any], None],
                   failed: Callable[[Failure], None]) -> None:
        try:
            result = exchange.step(data)
        except Exception:
            failed(Failure())
            return
        when(result, on_step, failed)

    def auth_continue(self, conn: MQTTConnection, data: bytes | None) -> None:
        """The client's AUTH (0x18) answering our challenge."""
        exchange, on_step, failed = conn.auth_pending
        conn.auth_pending = None
        self._auth_step(exchange, data, on_step, failed)

    def reauthenticate(self, conn: MQTTConnection, data: bytes | None) -> None:
        """AUTH 0x19 from a connected client: a fresh exchange; failure disconnects."""
        session = conn.session
        creds = Credentials(conn.client_id or "", None, None, conn.certificate_identity,
                            conn.peer)

        def done(identity: Any) -> None:
            if session is not None:
                session.identity = identity
            props = {_P.AUTHENTICATION_METHOD: conn.auth_method}
            if conn.auth_final_data is not None:
                props[_P.AUTHENTICATION_DATA] = conn.auth_final_data
            conn.auth_final_data = None
            conn.send(Auth(ReasonCode.SUCCESS, props))

        def failed(failure: Failure) -> None:
            conn.auth_pending = None
            self.log.info("Re-authentication of {client} failed: {error}",
                          client=conn.client_id, error=failure.value)
            conn.close(ReasonCode.NOT_AUTHORIZED)

        self._start_exchange(conn, creds, conn.auth_method, data, done, failed)  # type: ignore[arg-type]

    def _assign_client_id(self) -> str:
        return self.settings.assigned_id_prefix + uuid.uuid4().hex

    def _connect_failed(self, conn: MQTTConnection, failure: Failure) -> None:
        error = failure.value
        if not isinstance(error, MQTTError):
            self.log.failure("CONNECT of {client} failed", failure, client=conn.client_id)
            error = ConnectError("internal error")
        conn.refuse(error)

    def _connect_authenticated(self, conn: MQTTConnection, packet: Connect,
                               assigned: str | None, identity: Any) -> None:
        if conn.state == CLOSED:
            return
        client_id = conn.client_id
        when(self.store.acquireLock(client_id, self.settings.connect_store_timeout),
             lambda lock: self._connect_locked(conn, packet, assigned, identity, lock),
             lambda f: self._connect_failed(conn, f))

    def _connect_locked(self, conn: MQTTConnection, packet: Connect, assigned: str | None,
                        identity: Any, lock: Any) -> None:
        try:
            if conn.state == CLOSED:
                return
            client_id: str = conn.client_id  # type: ignore[assignment]
            session = self.sessions.get(client_id)
            if session is not None and session.connection is not None:
                old = session.connection
                self.stats.takeovers += 1
                self.log.info("{client} connected again from {peer}; closing the old connection",
                              client=client_id, peer=conn.peer)
                old.taken_over()  # detaches it: its will goes out [MQTT-3.1.4-3]
                session = self.sessions.get(client_id)
            present = session is not None and not packet.clean_start
            if session is not None and packet.clean_start:
                self.discard_session(session)  # [MQTT-3.1.2-6]
                session = None
            if session is None:
                session = Session(client_id, min(self.settings.max_inflight, conn.send_quota),
                                  self.settings.max_queued)
                self.sessions[client_id] = session
            self._configure_session(session, conn, packet, identity)
            props = self._connack_properties(conn, packet, assigned)
            if session.persistent:
                self._persist(self.store.saveSession(session))
            self.stats.client_connected()
            conn.accept(session, present, packet, props)
        finally:
            lock.release()

    def _configure_session(self, session: Session, conn: MQTTConnection, packet: Connect,
                           identity: Any) -> None:
        """Apply CONNECT's session settings: expiry, will; attach the connection."""
        if session.expiry_call is not None and session.expiry_call.active():
            session.expiry_call.cancel()
        session.expiry_call = None
        if session.will_call is not None and session.will_call.active():
            session.will_call.cancel()  # [MQTT-3.1.3-9] reconnect within the will delay
        session.will_call = None
        settings = self.settings
        if packet.protocol_level == 5:
            expiry = packet.properties.get(_P.SESSION_EXPIRY_INTERVAL, 0)
            self.set_session_expiry(session, expiry)
        elif packet.clean_start:
            session.expiryInterval = 0
        else:
            session.expiryInterval = settings.persistent_session_expiry
        session.will = None
        session.willDelay = 0
        will = packet.will
        if will is not None:
            props = dict(will.properties)
            session.willDelay = props.pop(_P.WILL_DELAY_INTERVAL, 0)
            session.will = Message(will.topic, will.payload, will.qos, will.retain, None, props,
                                   0.0, session.clientId)
        session.identity = identity
        session.disconnectedAt = None
        session.connection = conn

    def set_session_expiry(self, session: Session, expiry: int) -> None:
        """v5 session expiry interval, capped by the operator's maximum."""
        cap = self.settings.max_session_expiry
        value: float | None = None if expiry == _NEVER_EXPIRES else expiry
        if cap is not None and (value is None or value > cap):
            value = cap
        session.expiryInterval = value

    def _connack_properties(self, conn: MQTTConnection, packet: Connect,
                            assigned: str | None) -> dict:
        if packet.protocol_level != 5:
            return {}
        s = self.settings
        props: dict = {}
        if assigned:
            props[_P.ASSIGNED_CLIENT_IDENTIFIER] = assigned
        if s.receive_maximum != 65535:
            props[_P.RECEIVE_MAXIMUM] = s.receive_maximum
        if s.maximum_qos < 2:
            props[_P.MAXIMUM_QOS] = s.maximum_qos
        if not s.retain_available:
            props[_P.RETAIN_AVAILABLE] = 0
        if s.max_packet_size < 268_435_460:
            props[_P.MAXIMUM_PACKET_SIZE] = s.max_packet_size
        if s.topic_alias_maximum:
            props[_P.TOPIC_ALIAS_MAXIMUM] = s.topic_alias_maximum
        if s.max_keepalive and (not conn.keep_alive or conn.keep_alive > s.max_keepalive):
            conn.keep_alive = s.max_keepalive
            props[_P.SERVER_KEEP_ALIVE] = s.max_keepalive
        if not s.shared_subscriptions:
            props[_P.SHARED_SUBSCRIPTION_AVAILABLE] = 0
        if not s.wildcard_subscriptions:
            props[_P.WILDCARD_SUBSCRIPTION_AVAILABLE] = 0
        if not s.subscription_identifiers:
            props[_P.SUBSCRIPTION_IDENTIFIER_AVAILABLE] = 0
        if s.response_information and packet.properties.get(_P.REQUEST_RESPONSE_INFORMATION):
            props[_P.RESPONSE_INFORMATION] = s.response_information.replace(
                "{client_id}", conn.client_id or "")
        requested = packet.properties.get(_P.SESSION_EXPIRY_INTERVAL, 0)
        cap = s.max_session_expiry
        if cap is not None and requested > cap:
            props[_P.SESSION_EXPIRY_INTERVAL] = int(cap)  # MQTT 5 §3.2.2.3.2: tell the client
        return props

    def connection_ended(self, conn: MQTTConnection, send_will: bool) -> None:
        """A connection closed (any reason): will, then keep or drop its session."""
        self.connections.discard(conn)
        if getattr(conn, "waiters", None):
            self.release_publishers(conn)
        session = conn.session
        conn.session = None
        if session is None or session.connection is not conn:
            return
        session.connection = None
        self.stats.client_disconnected()
        will = session.will
        session.will = None
        if will is not None and send_will:
            if session.willDelay and session.persistent:
                session.will_call = self.clock.callLater(
                    min(session.willDelay, session.expiryInterval or session.willDelay),
                    self._publish_will, session, will)
            else:
                self._publish_will(session, will)
        if not session.persistent:
            self._hand_over_shared(session)
            self.discard_session(session)
            return
        session.disconnectedAt = self.clock.seconds()
        if session.expiryInterval is not None:
            session.expiry_call = self.clock.callLater(session.expiryInterval, self._expire,
                                                       session)
        self._persist(self.store.saveSession(session))

    def _hand_over_shared(self, session: Session) -> None:
        """A departing member's unacknowledged shared messages go to another member."""
        for out in session.outbound:
            if out.group is not None and out.state == 0:
                self.router.hand_over(out, session.clientId)

    def _publish_will(self, session: Session, will: Message) -> None:
        session.will_call = None
        self.stats.wills_published += 1
        will.received_at = self.clock.seconds()
        if self.authorizer is None:
            self.route(will)
            return
        when(self.may_publish(session, will.topic),
             lambda allowed: self.route(will) if allowed else None,
             lambda f: self.log.failure("Authorizer failed on a will", f))

    def _expire(self, session: Session) -> None:
        session.expiry_call = None
        if session.connection is None and self.sessions.get(session.clientId) is session:
            self.log.info("Session of {client} expired", client=session.clientId)
            self.discard_session(session)

    def discard_session(self, session: Session) -> None:
        """End a session: a delayed will goes out now [MQTT-3.1.3-9]; then forget its
        subscriptions, queue and stored state."""
        will_call = session.will_call
        if will_call is not None and will_call.active():
            will = will_call.args[1]  # (a cancelled DelayedCall forgets its arguments)
            will_call.cancel()
            self._publish_will(session, will)
        session.will_call = None
        if self.sessions.get(session.clientId) is session:
            del self.sessions[session.clientId]
        for topic_filter in session.subscriptions:
            self._unindex(session.clientId, topic_filter)
        session.subscriptions.clear()
        session.inflight.clear()
        session.queue = ()
        if session.expiry_call is not None and session.expiry_call.active():
            session.expiry_call.cancel()
        self._persist(self.store.deleteSession(session.clientId))

    # --- subscriptions ------------------------------------------------------------------

    def subscribe(self, session: Session, topic_filter: str, options: SubscriptionOptions) -> bool:
        """Add or replace a subscription [MQTT-3.8.4-3]; True when it is new."""
        is_new = topic_filter not in session.subscriptions
        session.subscriptions[topic_filter] = options
        self._index(session.clientId, topic_filter, options)
        if session.persistent:
            self._persist(self.store.addSubscription(session.clientId, topic_filter, options))
        return is_new

    def unsubscribe(self, session: Session, topic_filter: str) -> bool:
        if session.subscriptions.pop(topic_filter, None) is None:
            return False
        self._unindex(session.clientId, topic_filter)
        if session.persistent:
            self._persist(self.store.removeSubscription(session.clientId, topic_filter))
        return True

    def _index(self, client_id: str, topic_filter: str, options: SubscriptionOptions) -> None:
        self.router.add(client_id, topic_filter, options)

    def _unindex(self, client_id: str, topic_filter: str) -> None:
        self.router.remove(client_id, topic_filter)

    def send_retained(self, session: Session, topic_filter: str,
                      options: SubscriptionOptions) -> None:
        """Deliver the retained messages matching a new subscription, retain=1."""
        def deliver(messages: list[Message]) -> None:
            if self.sessions.get(session.clientId) is not session:
                return
            now = self.clock.seconds()
            for message in messages:
                if message.properties and expired(message, now):
                    self._persist(self.store.deleteRetained(message.topic))
                    continue
                self.deliver(session, message, min(message.qos, options.qos), True,
                             (options.subscription_id,) if options.subscription_id else None)

        when(self.store.matchRetained(topic_filter), deliver, self.store_failed)

    # --- routing --------------------------------------------------------------------------

    def route(self, message: Message, origin: str = LOCAL) -> int:
        """Publish ``message``: retain it if asked, then let the router deliver it to
        every matching session; return how many it reached.  ``origin`` is
        :data:`~mqtt_twisted.core.router.LOCAL` or the peer node it came from."""
        self.stats.messages_received += 1
        if message.retain:
            self._retain(message)
        return self.router.dispatch(message, origin)  # type: ignore[no-any-return]

    def deliver(self, session: Session, message: Message, qos: int, retain: bool,
                subscription_ids: tuple[int, ...] | None, group: str | None = None) -> None:
        """Send now if the client is online and has room, else queue within bounds."""
        conn = session.connection
        if conn is not None:
            if not session.queue:
                if not conn.paused:
                    if not qos:
                        conn.send_publish(message, 0, retain, None, subscription_ids)
                        return
                    if len(session.inflight) < conn.send_quota:
                        self._send_inflight(session, conn, Outbound(
                            message, qos, retain, subscription_ids, None, 0, group,
                            session.next_seq()))
                        return
                elif not qos and self._hold_back_publisher(conn):
                    # The publisher is held back, so what the transport buffers beyond its
                    # mark is bounded by one read: write rather than queue.
                    conn.send_publish(message, 0, retain, None, subscription_ids)
                    return
            elif len(session.queue) >= self._high_water:
                self._hold_back_publisher(conn)
        elif not session.persistent or (not qos and not self.settings.queue_qos0_offline):
            return
        out = Outbound(message, qos, retain, subscription_ids, None, 0, group,
                       session.next_seq())
        dropped = session.enqueue(out)
        if dropped is not None:
            self.stats.messages_dropped += 1
            if session.dropped & (session.dropped - 1) == 0:  # log 1st, 2nd, 4th, 8th...
                self.log.warn("Queue of {client} is full ({size}); dropped the oldest message "
                              "(topic {topic}; {n} dropped so far)", client=session.clientId,
                              size=self.settings.max_queued, topic=dropped.message.topic,
                              n=session.dropped)
        if qos and self._durable and session.persistent:
            self._persist(self.store.storeOutbound(session.clientId, out))

    def _send_inflight(self, session: Session, conn: MQTTConnection, out: Outbound) -> None:
        pid = out.packet_id = session.allocate_packet_id()
        session.inflight[pid] = out
        if self._durable and session.persistent:
            # Stored before it is sent, so that a crash cannot lose track of it.
            self._persist(self.store.storeOutbound(session.clientId, out))
        if not conn.send_publish(out.message, out.qos, out.retain, pid, out.subscription_ids):
            self.outbound_done(session, pid)

    def pump(self, session: Session) -> None:
        """Move queued messages to the wire while the client has room."""
        conn = session.connection
        queue = session.queue
        if conn is None:
            return
        now = self.clock.seconds()
        while queue and not conn.paused and conn.state != CLOSED:
            out = queue[0]
            if out.qos and len(session.inflight) >= conn.send_quota:
                return
            queue.popleft()
            if out.message.properties and expired(out.message, now):
                # [MQTT-3.3.2-5] not yet sent onward: the copy for this subscriber goes.
                self.stats.messages_expired += 1
                if out.qos and self._durable and session.persistent:
                    self._persist(self.store.removeOutbound(session.clientId, out.seq))
                continue
            if out.qos:
                self._send_inflight(session, conn, out)
            else:
                conn.send_publish(out.message, 0, out.retain, None, out.subscription_ids)
        if conn.congested_at is not None and not queue and not conn.paused:
            self.release_publishers(conn)

    # --- flow control ---------------------------------------------------------------------

    def _hold_back_publisher(self, conn: MQTTConnection) -> bool:
        """``conn`` cannot take more now: stop reading from the client whose PUBLISH is
        being routed until ``conn`` catches up, as a stream pipe would.

        True when a publisher is held back.  A subscriber that makes no progress for
        ``slow_consumer_grace`` seconds stops holding publishers back (False): from then
        on its messages queue within ``max_queued`` and the oldest are dropped, so one
        dead reader costs the others nothing but that grace.
        """
        now = self.clock.seconds()
        since = conn.congested_at
        if since is None:
            conn.congested_at = now
        elif now - since > self.settings.slow_consumer_grace:
            if conn.waiters:
                self._stalled(conn)
            return False
        publisher = self.publisher
        if publisher is not None and publisher is not conn and publisher.state == CONNECTED:
            waiters = conn.waiters
            if waiters is None:
                waiters = conn.waiters = []
                # Held-back publishers send nothing more, so nothing else would notice
                # that this subscriber stalled: a timer does.
                conn.stall_call = self.clock.callLater(
                    self.settings.slow_consumer_grace, self._stalled, conn)
            if publisher not in waiters:
                waiters.append(publisher)
                publisher.throttle()
            return True
        return False  # nobody to hold back (a will, $SYS, an HTTP publish): queue

    def release_publishers(self, conn: MQTTConnection) -> None:
        """``conn`` caught up (or went away): resume the publishers it held back."""
        conn.congested_at = None
        self._resume_waiters(conn)

    def _stalled(self, conn: MQTTConnection) -> None:
        conn.stall_call = None
        if conn.waiters:
            self.log.info("{client} is not keeping up; no longer holding publishers back "
                          "for it", client=conn.client_id)
            self._resume_waiters(conn)

    @staticmethod
    def _resume_waiters(conn: MQTTConnection) -> None:
        call = conn.stall_call
        if call is not None:
            conn.stall_call = None
            if call.active():
                call.cancel()
        waiters, conn.waiters = conn.waiters, None
        for publisher in waiters or ():
            publisher.unthrottle()

    def outbound_done(self, session: Session, packet_id: int) -> None:
        """PUBACK or PUBCOMP: the flow for ``packet_id`` is complete."""
        out = session.inflight.pop(packet_id, None)
        if out is None:
            return
        if self._durable and session.persistent:
            self._persist(self.store.removeOutbound(session.clientId, out.seq))
        if session.queue:
            self.pump(session)

    def outbound_released(self, session: Session, out: Outbound) -> None:
        """PUBREC: the message is delivered; only PUBREL/PUBCOMP remain [MQTT-4.3.3]."""
        out.state = AWAITING_PUBCOMP
        if self._durable and session.persistent:
            self._persist(self.store.storeOutbound(session.clientId, out))

    def add_inbound_qos2(self, session: Session, packet_id: int) -> None:
        if session.inboundQoS2:
            session.inboundQoS2.add(packet_id)  # type: ignore[union-attr]
        else:
            session.inboundQoS2 = {packet_id}
        if self._durable and session.persistent:
            self._persist(self.store.addInboundQoS2(session.clientId, packet_id))

    def remove_inbound_qos2(self, session: Session, packet_id: int) -> None:
        if packet_id in session.inboundQoS2:
            session.inboundQoS2.discard(packet_id)  # type: ignore[union-attr]
        if self._durable and session.persistent:
            self._persist(self.store.removeInboundQoS2(session.clientId, packet_id))

    # --- retained -------------------------------------------------------------------------

    def _retain(self, message: Message) -> None:
        if message.payload:
            self._persist(self.store.setRetained(message))
        else:
            self._persist(self.store.deleteRetained(message.topic))  # [MQTT-3.3.1-10]

    # --- authorization ------------------------------------------------------------------------

    def may_publish(self, session: Session | None, topic: str) -> Any:
        """The authorizer's answer: a bool, or a Deferred of one."""
        identity = session.identity if session is not None else None
        client_id = session.clientId if session is not None else None
        return self.authorizer.mayPublish(identity, client_id, topic)

    def may_subscribe(self, session: Session, topic_filter: str) -> Any:
        """The authorizer's answer: a bool, or a Deferred of one."""
        return self.authorizer.maySubscribe(session.identity, session.clientId, topic_filter)

    # --- store plumbing -----------------------------------------------------------------------

    def writes_of(self, action: Callable[..., Any], *args: Any) -> tuple[Any, list[Any]]:
        """Run ``action`` and return its result with the store writes it left pending:
        the caller waits on them (to acknowledge only what is stored) and handles their
        failures."""
        self._collecting = []
        try:
            result = action(*args)
        finally:
            writes, self._collecting = self._collecting, None
        return result, writes

    def _persist(self, result: Any) -> None:
        """A store write: fire-and-forget (failures logged), or collected for an ack."""
        if not hasattr(result, "addErrback"):
            return
        if getattr(result, "called", False) and not isinstance(result.result, Failure):
            return  # stored already (the memory store): nothing to wait for
        if self._collecting is not None:
            self._collecting.append(result)
        else:
            result.addErrback(self.store_failed)

    def store_failed(self, failure: Failure) -> None:
        """Count and log a failed store write (during an outage the store logs it once)."""
        self.stats.store_errors += 1
        if failure.check(StoreUnavailable):
            return
        if failure.check(StorageError):
            self.log.warn("Store write failed: {error}", error=failure.value)
        else:
            self.log.failure("Store write failed", failure)

    # --- lifecycle ----------------------------------------------------------------------------

    def restore_session(self, state: Any) -> Session:
        """Rebuild a live session (and its subscriptions) from stored state at start-up."""
        session = Session(state.clientId, self.settings.max_inflight, self.settings.max_queued)
        session.expiryInterval = state.expiryInterval
        session.will = state.will
        session.willDelay = state.willDelay
        session.disconnectedAt = state.disconnectedAt
        session.inboundQoS2 = set(state.inboundQoS2)
        for topic_filter, options in state.subscriptions.items():
            session.subscriptions[topic_filter] = options
            self._index(session.clientId, topic_filter, options)
        session.restore_outbound(list(state.outbound))
        self.sessions[session.clientId] = session
        now = self.clock.seconds()
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
                session.will_call = self.clock.callLater(delay, self._publish_will, session,
                                                         will)
        if session.expiryInterval is not None:
            gone = now - session.disconnectedAt
            session.expiry_call = self.clock.callLater(
                max(0.0, session.expiryInterval - gone), self._expire, session)
        return session

    def close_all(self, reason_code: int) -> None:
        """Disconnect every client (shutdown): no wills, sessions kept as they are."""
        for conn in list(self.connections):
            conn.clean_exit = True
            conn.close(reason_code)
