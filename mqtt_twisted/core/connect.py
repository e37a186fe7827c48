"""CONNECT: who the client is, which session it gets, and what CONNACK says.

Authentication (plain or an MQTT 5 enhanced exchange [MQTT-4.12]), the client id's
lock in the store (one CONNECT per client id at a time, also across nodes),
takeover of a connected session [MQTT-3.1.4-3], clean start or resume, the will and
the session expiry, and the CONNACK's properties.  An adapter's virtual session
comes through here too (``Gateway.openSession``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from mqtt_twisted.codec.packets import Auth, Connect
from mqtt_twisted.constants import PropertyId, ReasonCode
from mqtt_twisted.core import clientlog
from mqtt_twisted.core._async import when
from mqtt_twisted.core.limits import over_session_quota, topic_refusal
from mqtt_twisted.core.ownership import (
    FRESH,
    connecting_owner,
    foreign_key,
    is_foreign,
    recheck_subscriptions,
    visible_id,
)
from mqtt_twisted.core.session import Session
from mqtt_twisted.core.states import CLOSED
from mqtt_twisted.errors import (
    AuthorizationError,
    ClientIdentifierNotValid,
    ConnectError,
    InvalidTopicName,
    MQTTError,
    QuotaExceeded,
)
from mqtt_twisted.message import Message
from mqtt_twisted.records import Credentials

if TYPE_CHECKING:
    from mqtt_twisted.core.broker import Broker
    from mqtt_twisted.core.connection import MQTTConnection

_P = PropertyId


class Connector:
    """Answers the CONNECTs of one broker."""

    log = Logger(namespace="mqtt_twisted.core.broker.Broker")

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        #: Client ids whose session a CONNECT here is bringing from another node of a
        #: cluster (``_locate``), and what later CONNECTs of theirs do once it is here.
        self._locating: dict[str, list[Callable[[], None]]] = {}

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
            if will.qos > self.broker.settings.maximum_qos:  # [MQTT-3.2.2-12]
                conn.refuse(ConnectError("will QoS not supported", ReasonCode.QOS_NOT_SUPPORTED))
                return
            if will.retain and not self.broker.settings.retain_available:  # [MQTT-3.2.2-13]
                conn.refuse(ConnectError("retained will not supported",
                                         ReasonCode.RETAIN_NOT_SUPPORTED))
                return
        if will is not None:
            why = topic_refusal(self.broker.settings, will.topic)
            if why is not None:
                self.broker.stats.limit_hit("topic")
                if packet.protocol_level == 5:
                    conn.refuse(ConnectError(f"will topic: {why}", ReasonCode.TOPIC_NAME_INVALID))
                else:  # v3 has no return code for it: close, as for a malformed will topic
                    conn.violation(InvalidTopicName(f"will topic: {why}"))
                return
        max_keepalive = self.broker.settings.max_keepalive
        if (max_keepalive and packet.protocol_level < 5 and not conn.virtual
                and not 0 < packet.keep_alive <= max_keepalive):
            # v3 has no way to tell the client another keep alive: refuse, as Mosquitto does.
            conn.refuse(ClientIdentifierNotValid(
                f"keep alive {packet.keep_alive} outside 1..{max_keepalive}"))
            return
        username = packet.username
        if conn.certificate_identity is not None and getattr(conn.listener,
                                                             "identityAsUsername", False):
            username = conn.certificate_identity  # Mosquitto's use_identity_as_username
        conn.username = username
        method = packet.properties.get(_P.AUTHENTICATION_METHOD) if packet.properties else None
        if method is None and self.broker.authenticator is None:  # (no credentials asked)
            self._connect_authenticated(conn, packet, assigned, username)
            return
        self._authenticate(conn, packet, assigned, username, method)

    def _authenticate(self, conn: MQTTConnection, packet: Connect, assigned: str | None,
                      username: str | None, method: str | None) -> None:
        """Ask the authenticator (or run the v5 exchange ``method`` names), then go on.
        (Apart from ``handle_connect``: its lambdas would make cells of its arguments
        on every CONNECT, asked or not; CPython makes a function's cells as it starts.)"""
        creds = Credentials(conn.client_id, username, packet.password,
                            conn.certificate_identity, conn.peer,
                            getattr(conn.listener, "adapter", "mqtt"))
        if method is not None:
            self._start_exchange(conn, creds, method, packet.properties.get(
                _P.AUTHENTICATION_DATA), lambda identity: self._connect_authenticated(
                    conn, packet, assigned, identity), lambda f: self._connect_failed(conn, f))
            return
        if self.broker.authenticator is None:
            self._connect_authenticated(conn, packet, assigned, username)
            return
        try:
            answer = self.broker.authenticator.authenticate(creds)
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
        enhanced = self.broker.authenticator
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
            if conn.state == CLOSED:
                return
            if session is not None:
                owner = connecting_owner(self.broker, identity)
                if is_foreign(self.broker, session, owner):
                    # Another user now: the session is not theirs to keep.
                    self.broker.stats.ownership_refusals += 1
                    self.log.info("Re-authentication of {client} names another user; "
                                  "disconnecting", client=conn.client_id)
                    conn.close(ReasonCode.NOT_AUTHORIZED)
                    return
                session.identity = identity
                self.broker.refresh_read_check(session)
                if session.owner is None:
                    session.owner = owner
                recheck_subscriptions(self.broker, session, identity, lambda _: None,
                                      lambda f: self.log.failure(
                                          "Authorizer failed re-checking {client}", f,
                                          client=conn.client_id))
            if conn.publish_grants:
                conn.publish_grants.clear()  # answers for the old identity
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
        return self.broker.settings.assigned_id_prefix + uuid.uuid4().hex

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
        waiting = self._locating.get(client_id)  # type: ignore[arg-type]
        if waiting is not None:
            # An earlier CONNECT of this client is bringing its session here (a client
            # retrying after the CONNECT deadline cut it off while a busy cluster moved
            # its session).  Wait for that rather than for the lock it holds: the lock's
            # wait ran out (connect_store_timeout) just before this connection's own
            # deadline, and said "server unavailable" of a session on its way.
            waiting.append(partial(self._connect_authenticated, conn, packet, assigned,
                                   identity))
            return
        store = self.broker.store
        take_now = getattr(store, "takeLockNow", None)  # (optional: the memory store's)
        held = take_now(client_id) if take_now is not None else None
        if held is not None:  # (nobody held it: no Deferred and no callbacks for it)
            try:
                self._locate(conn, packet, assigned, identity, held)
            except Exception:  # (as ``when`` would)
                self._connect_failed(conn, Failure())
            return
        when(store.acquireLock(client_id, self.broker.settings.connect_store_timeout),
             partial(self._locate, conn, packet, assigned, identity),
             partial(self._connect_failed, conn))  # (partials: no cells, see _authenticate)

    def _locate(self, conn: MQTTConnection, packet: Connect, assigned: str | None,
                identity: Any, held: Any) -> None:
        """With the lock held and no session of this client id here: a session that
        lives on another node of a cluster is brought here first (``broker.locate_session``,
        which the cluster sets: the other node lets it go, and it comes back as stored
        state, or None).  On a single node there is nothing to locate."""
        locate = self.broker.locate_session
        if locate is None or conn.client_id in self.broker.sessions or conn.state == CLOSED:
            self._connect_locked(conn, packet, assigned, identity, held)
            return
        self._locate_elsewhere(conn, packet, assigned, identity, held, locate)

    def _locate_elsewhere(self, conn: MQTTConnection, packet: Connect, assigned: str | None,
                          identity: Any, held: Any, locate: Callable[[str], Any]) -> None:
        """``_locate``'s cluster case (its closures' cells made only here)."""
        lock = _ReleaseOnce(held)
        client_id: str = conn.client_id  # type: ignore[assignment]
        self._locating[client_id] = []

        def located(state: Any) -> None:
            waiting = self._locating.pop(client_id, ())
            try:
                if state is not None and client_id not in self.broker.sessions:
                    self.broker.restore_session(state)
                self._connect_locked(conn, packet, assigned, identity, lock)
            finally:
                for retry in waiting:  # (each asks for the lock, behind this CONNECT)
                    retry()

        def failed(failure: Failure) -> None:
            waiting = self._locating.pop(client_id, ())
            lock.release()
            try:
                self._connect_failed(conn, failure)
            finally:
                for retry in waiting:
                    retry()

        try:
            answer = locate(client_id)
        except Exception:
            failed(Failure())
            return
        when(answer, located, failed)

    def _connect_locked(self, conn: MQTTConnection, packet: Connect, assigned: str | None,
                        identity: Any, held: Any) -> None:
        lock = _ReleaseOnce(held)
        try:
            if conn.state == CLOSED:
                lock.release()
                return
            found = self._claim(conn, packet, identity)
        except BaseException:
            lock.release()
            raise
        if found is None:
            lock.release()
            return
        session, present = found
        if not present:
            self._open(conn, packet, assigned, identity, session, False, lock)
            return
        self._recheck(conn, packet, assigned, identity, session, lock)

    def _recheck(self, conn: MQTTConnection, packet: Connect, assigned: str | None,
                 identity: Any, session: Session, lock: _ReleaseOnce) -> None:
        """A resumed session: the authorizer may have changed its mind about its
        subscriptions since they were granted (ACL reloaded, new token claims).
        (Apart from ``_connect_locked``: its closures' cells made only here.)"""

        def rechecked(_: Any) -> None:
            if conn.state == CLOSED:
                lock.release()
                return
            if self.broker.sessions.get(session.clientId) is not session:
                # It expired while the authorizer answered: connect again, afresh.
                self._connect_locked(conn, packet, assigned, identity, lock)
                return
            self._open(conn, packet, assigned, identity, session, True, lock)

        def failed(failure: Failure) -> None:
            lock.release()
            self._connect_failed(conn, failure)

        adopting = session.owner is None and connecting_owner(self.broker, identity) is not None
        recheck_subscriptions(self.broker, session, identity, rechecked, failed, adopting)

    def _claim(self, conn: MQTTConnection, packet: Connect,
               identity: Any) -> tuple[Session, bool] | None:
        """The session this CONNECT gets, and whether it is resumed; None when the
        CONNECT was refused: the client id's session belongs to another user, or a new
        persistent session would exceed ``max_sessions``."""
        broker = self.broker
        client_id: str = conn.client_id  # type: ignore[assignment]
        owner = connecting_owner(broker, identity)
        session = broker.sessions.get(client_id)
        clean = packet.clean_start
        if session is not None and is_foreign(broker, session, owner):
            if conn.virtual or broker.settings.session_owner != FRESH:
                broker.stats.ownership_refusals += 1
                conn.refuse(AuthorizationError(
                    f"the session of client id {client_id!r} belongs to another user"))
                return None
            # A session of its own beside the owner's, under a key no client id can be.
            client_id = conn.client_id = foreign_key(client_id, owner)
            session = broker.sessions.get(client_id)
            clean = True
        if session is not None and session.connection is not None:
            old = session.connection
            broker.stats.takeovers += 1
            clientlog.takeover(old, conn)
            old.taken_over()  # detaches it: its will goes out [MQTT-3.1.4-3]
            session = broker.sessions.get(client_id)
        present = session is not None and not clean
        if session is not None and clean:
            broker.discard_session(session)  # [MQTT-3.1.2-6]
            session = None
        if session is None:
            if over_session_quota(broker.settings, len(broker.sessions), packet, clean):
                broker.stats.limit_hit("sessions")
                conn.refuse(QuotaExceeded(
                    f"{len(broker.sessions)} sessions held: no new persistent session"))
                return None
            settings = broker.settings
            inflight, quota = settings.max_inflight, conn.send_quota
            session = Session(client_id, inflight if inflight < quota else quota,  # (min())
                              settings.max_queued, settings.max_queued_bytes,
                              settings.max_inflight_bytes)
            broker.sessions[client_id] = session
        return session, present

    def _open(self, conn: MQTTConnection, packet: Connect, assigned: str | None,
              identity: Any, session: Session, present: bool, lock: Any) -> None:
        """Attach the connection to its session and CONNACK."""
        try:
            if session.owner is None:  # a new session, or one that belonged to nobody
                session.owner = connecting_owner(self.broker, identity)
            self._configure_session(session, conn, packet, identity)
            props = self._connack_properties(conn, packet, assigned)
            if visible_id(session.clientId) != session.clientId:
                # Another user's client id: a clean session that outlives nothing.
                session.expiryInterval = 0
                if packet.protocol_level == 5:
                    props[_P.SESSION_EXPIRY_INTERVAL] = 0
            if session.persistent:
                self.broker.journal.save_session(session)
            elif session.will is not None and self.broker.wills is not None:
                self.broker.wills.kept(session)  # a stored session keeps its will itself
            self.broker.stats.client_connected()
            conn.accept(session, present, packet, props)
        finally:
            lock.release()

    def _configure_session(self, session: Session, conn: MQTTConnection, packet: Connect,
                           identity: Any) -> None:
        """Apply CONNECT's session settings: expiry, will; attach the connection."""
        rare = session._rare is not None  # (else timers and offline time: defaults)
        if rare:
            if session.expiry_call is not None and session.expiry_call.active():
                session.expiry_call.cancel()
            session.expiry_call = None
            if session.will_call is not None and session.will_call.active():
                session.will_call.cancel()  # [MQTT-3.1.3-9] reconnect within the will delay
            session.will_call = None
        settings = self.broker.settings
        if packet.protocol_level == 5:
            expiry = packet.properties.get(_P.SESSION_EXPIRY_INTERVAL, 0)
            self.broker.set_session_expiry(session, expiry)
        elif packet.clean_start:
            session.expiryInterval = 0
        else:  # v3.1.1 cannot be told, but its session is bounded alike
            self.broker.set_session_expiry(session, settings.persistent_session_expiry)
        session.will = None
        if session._rare is not None:  # (else it reads 0 already: no descriptor call)
            session.willDelay = 0
        will = packet.will
        if will is not None:
            props = dict(will.properties)
            session.willDelay = props.pop(_P.WILL_DELAY_INTERVAL, 0)
            session.will = Message(will.topic, will.payload, will.qos, will.retain, None, props,
                                   0.0, session.clientId)
        if identity != session.identity or session.read_check is not None:
            session.identity = identity
            self.broker.refresh_read_check(session)
        if rare:
            session.disconnectedAt = None
            self.broker.offline.back(session)
        session.connection = conn

    def _connack_properties(self, conn: MQTTConnection, packet: Connect,
                            assigned: str | None) -> dict:
        if packet.protocol_level != 5:
            return {}
        s = self.broker.settings
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
                "{client_id}", visible_id(conn.client_id or ""))
        requested = packet.properties.get(_P.SESSION_EXPIRY_INTERVAL, 0)
        cap = s.max_session_expiry
        if cap is not None and requested > cap:
            props[_P.SESSION_EXPIRY_INTERVAL] = int(cap)  # MQTT 5 §3.2.2.3.2: tell the client
        return props


class _ReleaseOnce:
    """A client id's lock, released exactly once whichever path the CONNECT ends on
    (without a Deferred where the lock has ``releaseNow``: the memory store's)."""

    __slots__ = ("_lock",)

    def __init__(self, lock: Any) -> None:
        self._lock = lock

    def release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            (getattr(lock, "releaseNow", None) or lock.release)()
