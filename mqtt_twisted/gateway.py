"""The gateway: the broker as every adapter sees it (EMQX's gateway context is the model).

An adapter authenticates a client, asks whether it may publish or subscribe, opens a
session that delivers to a sink, publishes, subscribes, reads retained messages and
closes sessions through this one object, and through nothing else: the broker's
internals can change without touching any adapter.  MQTT streams get a connection
from :meth:`Gateway.buildConnection`; every other adapter (HTTP, CoAP) gets a virtual
session from :meth:`Gateway.openSession`, which goes through the same CONNECT path
(authentication, the client id's lock, takeover, session expiry) as an MQTT client.

It sits just above the sans-IO core, which imports nothing of ``twisted.internet``:
its answers are Deferreds (which need no reactor), and time is the broker's clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from mqtt_twisted.admin import BrokerAdmin
from mqtt_twisted.codec.packets import Connect
from mqtt_twisted.codec.topics import is_reserved_topic, validate_topic_name
from mqtt_twisted.constants import ReasonCode
from mqtt_twisted.core import clientlog
from mqtt_twisted.core.broker import expired
from mqtt_twisted.core.grant import check_filter, granted_qos
from mqtt_twisted.core.limits import over_subscription_quota, topic_refusal
from mqtt_twisted.core.ownership import connecting_owner, is_foreign
from mqtt_twisted.core.plain import publish_plain, qos0_in_use
from mqtt_twisted.core.session import SubscriptionOptions
from mqtt_twisted.core.states import CLOSED
from mqtt_twisted.core.virtual import VirtualConnection
from mqtt_twisted.errors import (
    AuthenticationError,
    AuthorizationError,
    InvalidTopicName,
    MQTTError,
    QuotaExceeded,
    StorageError,
    ValidationError,
)
from mqtt_twisted.interfaces import IBrokerService
from mqtt_twisted.message import Message
from mqtt_twisted.records import owner_of

if TYPE_CHECKING:
    from mqtt_twisted.core.broker import Broker
    from mqtt_twisted.core.session import Session

#: The actions :meth:`Gateway.authorize` answers for.
PUBLISH, SUBSCRIBE = "publish", "subscribe"


def _auth_failed(failure: Any, credentials: Any) -> Any:
    """One log line per refused request (info: who, from where; never the password)."""
    if failure.check(AuthenticationError, AuthorizationError):
        clientlog.auth_failed(credentials, failure.value)
    return failure


@implementer(IBrokerService)
class Gateway:
    """One per broker; every adapter's only door into it."""

    #: What :meth:`buildConnection` returns can be its transport's protocol and push
    #: producer itself (``dataReceived``, ``connectionLost``, ``pauseProducing``,
    #: ``resumeProducing``, ``ended``): the MQTT adapter's plain TCP listeners rely on
    #: it (``adapters/_leanmqtt.py``); with another gateway they keep a protocol object.
    leanConnections = True

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        #: Metrics and the admin API's questions (IBrokerAdmin).
        self.admin = BrokerAdmin(broker, self)
        #: Where the listeners' connection limits register (adapters/kit.py).
        self.listener_limits = self.admin.listener_limits
        #: New connections whose first read waits for a later reactor turn
        #: (``core/admission.py``; ``len()``): MQTT listeners accept fewer meanwhile.
        self.connect_gate = broker.gate
        #: ``core/qos0.py`` or its compiled twin: the one the PUBLISH handler uses.
        self._qos0 = qos0_in_use()

    @property
    def stats(self) -> Any:
        """The broker's counters."""
        return self.broker.stats

    @property
    def settings(self) -> Any:
        """The broker's limits and features (read them, do not change them)."""
        return self.broker.settings

    def addSysValues(self, source: Any) -> None:
        """Publish ``source()`` (topic under ``$SYS/broker/`` -> value) with the broker's
        own $SYS values: how a component that is not an adapter (a bridge) shows its state."""
        self.broker.sys_sources.append(source)

    def removeSysValues(self, source: Any) -> None:
        if source in self.broker.sys_sources:
            self.broker.sys_sources.remove(source)

    # --- connections --------------------------------------------------------------------

    def buildConnection(self, transport: Any, peer: str, listener: Any,
                        certificateIdentity: str | None = None) -> Any:
        return self.broker.build_connection(transport, peer, listener, certificateIdentity)

    def connectionRefused(self, why: str = "listener_full") -> None:
        """An adapter refused a client before it reached the broker: a full listener,
        or a source address over its connection rate."""
        self.broker.stats.connection_refused(why)

    # --- who may do what ------------------------------------------------------------------

    def authenticate(self, credentials: Any) -> Deferred[Any]:
        """The identity the authenticator gives ``credentials`` (on an anonymous broker,
        the user name); fails with the authenticator's error, or with AuthorizationError
        when the credentials name a client id whose session belongs to another user
        (docs/security.md)."""
        authenticator = self.broker.authenticator
        if authenticator is None:
            return succeed(getattr(credentials, "username", None))
        d = maybeDeferred(authenticator.authenticate, credentials)
        d.addCallback(self._not_foreign, getattr(credentials, "clientId", None))
        return d.addErrback(_auth_failed, credentials)

    def _not_foreign(self, identity: Any, clientId: str | None) -> Any:
        session = self.broker.sessions.get(clientId) if clientId else None
        if session is not None and is_foreign(self.broker, session,
                                              connecting_owner(self.broker, identity)):
            self.broker.stats.ownership_refusals += 1
            raise AuthorizationError(
                f"the session of client id {clientId!r} belongs to another user")
        return identity

    def authorize(self, action: str, identity: Any, clientId: str | None,
                  topic: str) -> Deferred[bool]:
        """Whether ``identity`` may ``"publish"`` to ``topic`` or ``"subscribe"`` to a
        filter.  Nobody publishes to the broker's own ``$SYS`` tree."""
        if action == PUBLISH and is_reserved_topic(topic):
            return succeed(False)
        authorizer = self.broker.authorizer
        if authorizer is None:
            return succeed(True)
        ask = authorizer.mayPublish if action == PUBLISH else authorizer.maySubscribe
        return maybeDeferred(ask, identity, clientId, topic).addCallback(bool)

    def isAdmin(self, identity: Any) -> bool:
        """Whether ``identity`` may use the admin API and read the metrics over HTTP:
        anyone on an anonymous broker (as for removing a session), else an ``--admin-user``."""
        broker = self.broker
        if broker.authenticator is None:
            return True
        owner = owner_of(identity)
        return owner is not None and owner in broker.settings.admin_users

    def mayRemoveSession(self, identity: Any, clientId: str) -> Deferred[bool]:
        """Whether ``identity`` may disconnect ``clientId`` and delete its session: anyone
        on an anonymous broker; else the session's owner (the same user), an admin
        (``--admin-user``), or whoever the authorizer's optional
        ``mayDisconnect(identity, clientId)`` allows."""
        broker = self.broker
        if broker.authenticator is None:
            return succeed(True)
        owner = owner_of(identity)
        if owner is not None and owner in broker.settings.admin_users:
            return succeed(True)
        session = broker.sessions.get(clientId)
        if session is not None and identity is not None and (
                owner == session.owner if session.owner is not None
                else identity == session.identity):
            return succeed(True)
        ask = getattr(broker.authorizer, "mayDisconnect", None)
        if ask is not None:
            return maybeDeferred(ask, identity, clientId).addCallback(bool)
        return succeed(False)

    # --- sessions -----------------------------------------------------------------------

    def openSession(self, clientId: str, sink: Any, clean: bool = True,
                    credentials: Any = None, expiry: float | None = None) -> Deferred[Any]:
        """A session delivering to ``sink`` (an ``IMessageSink``), opened as an MQTT
        CONNECT opens one: authenticated, the client id locked, any connection of the
        same client id taken over.  ``expiry`` (seconds) replaces the session expiry a
        clean-session-0 MQTT 3.1.1 client would get.  Fires with the session."""
        d: Deferred[Any] = Deferred()
        # The authenticator sees the adapter and TLS identity the credentials name.
        origin = SimpleNamespace(adapter=getattr(credentials, "adapter", None) or "virtual")
        conn = VirtualConnection(self.broker, sink, clientId,
                                 getattr(credentials, "peer", ""), origin)
        conn.certificate_identity = getattr(credentials, "certificateIdentity", None)

        def accepted(session: Session) -> None:
            if expiry is not None:
                self.broker.set_session_expiry(session, int(expiry))
            d.callback(session)

        conn.on_accept = accepted
        conn.on_refuse = d.errback
        packet = Connect(clientId, 4, clean, 0, None, getattr(credentials, "username", None),
                         getattr(credentials, "password", None))
        self.broker.handle_connect(conn, packet)  # type: ignore[arg-type]
        return d

    def session(self, clientId: str) -> Session | None:
        """The live session of ``clientId`` (online or not), or None."""
        return self.broker.sessions.get(clientId)

    def closeSession(self, clientId: str, remove: bool = False) -> bool:
        """Disconnect ``clientId``, whatever adapter it came through (its will goes out,
        as after any close that is not the client's own DISCONNECT [MQTT-3.1.2-8]);
        ``remove`` also deletes the session.  False if there is no such session."""
        session = self.broker.sessions.get(clientId)
        if session is None:
            return False
        conn = session.connection
        if conn is not None:
            conn.close(ReasonCode.ADMINISTRATIVE_ACTION)
        if remove and self.broker.sessions.get(clientId) is session:
            self.broker.discard_session(session)
        return True

    # --- messages -----------------------------------------------------------------------

    def publish(self, message: Message, clientId: str | None = None) -> Deferred[int]:
        """Route ``message`` for ``clientId``; fires with the number of sessions it
        reached once the store holds what routing wrote (the retained message, queued
        QoS 1/2 copies), or fails with StorageError if the store did not take it, or
        with AuthorizationError for the broker's own topics and InvalidTopicName for a
        topic no client could publish to.  Whether the client may publish there is the
        adapter's question to :meth:`authorize` first."""
        try:
            validate_topic_name(message.topic)
            why = topic_refusal(self.broker.settings, message.topic)
            if why is not None:
                self.broker.stats.limit_hit("topic")
                raise InvalidTopicName(why)
        except MQTTError as e:
            return fail(e)
        if is_reserved_topic(message.topic):
            return fail(AuthorizationError(f"{message.topic!r} is reserved for the broker"))
        broker = self.broker
        if message.retain and not broker.retained_quota.allows(message.topic, message.payload,
                                                               clientId):
            broker.stats.limit_hit("retained")
            return fail(QuotaExceeded("retained messages are over their quota"))
        if message.received_at == 0.0:
            message.received_at = broker.clock.seconds()
        message.sender = clientId
        count, writes = broker.writes_of(broker.route, message)
        if not writes:
            return succeed(count)
        return DeferredList(writes, consumeErrors=True).addCallback(self._stored, count)

    def publish_plain(self, topic: str, payloads: list[bytes], properties: dict[int, Any],
                      clientId: str | None) -> list[Deferred[int]]:
        """:meth:`publish` for an adapter's lean path (``adapters/_coaplean.py``): QoS 0
        messages (``payloads``, in order) that are not retained, on a topic the adapter
        has found valid, within the limits and not the broker's own.  Without properties
        they are written as PUBLISHes' bytes where they can be (``core/plain.py``).  The
        Deferreds of those whose store writes are pending (none, usually), as
        :meth:`publish`'s."""
        if not properties and publish_plain(self.broker, topic, payloads, clientId or "",
                                            self._qos0) is not None:
            return []
        published = (self.publish(Message(topic, payload, 0, False, None, dict(properties)),
                                  clientId) for payload in payloads)
        return [d for d in published if not d.called or isinstance(d.result, Failure)]

    @property
    def open_to_all(self) -> bool:
        """Whether every client may publish wherever clients may: no authenticator
        (the identity is the user name) and no authorizer."""
        broker = self.broker
        return broker.authenticator is None and broker.authorizer is None

    def _stored(self, results: list[tuple[bool, Any]], count: int) -> int:
        failures = [result for ok, result in results if not ok]
        for failure in failures:
            self.broker.store_failed(failure)
        if failures:
            raise StorageError(f"the store did not take the message: "
                               f"{failures[0].getErrorMessage()}")
        return count

    def subscribe(self, clientId: str, topicFilter: str, qos: int = 0) -> Deferred[int]:
        """Subscribe an open session, granted as an MQTT SUBSCRIBE would be (the same
        refusals when features are off); fires with the granted QoS or a reason code.
        Retained messages follow a new subscription.  Fails with ValidationError when
        ``clientId`` has no open session."""
        try:
            session = self._open_session(clientId)
        except ValidationError as e:
            return fail(e)
        code, _ = check_filter(self.broker.settings, topicFilter, stats=self.broker.stats)
        if code:
            return succeed(int(code))
        if self.broker.authorizer is None:
            return succeed(self._subscribe(session, topicFilter, qos, True))
        answer = maybeDeferred(self.broker.may_subscribe, session, topicFilter)
        return answer.addCallback(lambda ok: self._subscribe(session, topicFilter, qos, ok))

    def _subscribe(self, session: Session, topicFilter: str, qos: int, allowed: bool) -> int:
        if not allowed:
            return int(ReasonCode.NOT_AUTHORIZED)
        if over_subscription_quota(self.broker.settings, session.subscriptions, topicFilter):
            self.broker.stats.limit_hit("subscriptions")
            return int(ReasonCode.QUOTA_EXCEEDED)
        options = SubscriptionOptions(granted_qos(self.broker.settings, qos))
        if self.broker.subscribe(session, topicFilter, options):
            self.broker.send_retained(session, topicFilter, options)
        return options.qos

    def unsubscribe(self, clientId: str, topicFilter: str) -> Deferred[bool]:
        """Remove one subscription of an open session; fires with whether it existed
        (fails with ValidationError when ``clientId`` has no open session)."""
        try:
            session = self._open_session(clientId)
        except ValidationError as e:
            return fail(e)
        return succeed(self.broker.unsubscribe(session, topicFilter))

    def retained(self, topicFilter: str) -> Deferred[list[Message]]:
        """The retained messages matching ``topicFilter`` (expired ones left out)."""
        broker = self.broker

        def fresh(messages: list[Message]) -> list[Message]:
            now = broker.clock.seconds()
            return [m for m in messages if not (m.properties and expired(m, now))]

        return maybeDeferred(broker.store.matchRetained, topicFilter).addCallback(fresh)

    def iterRetained(self, topicFilter: str) -> Iterator[Message | None] | None:
        """The same, one at a time without building the list, when the store can
        (optional, like the store's ``iterRetained``; None: ask ``retained``): a
        ``GET /retained`` over 20,000 messages then takes them in slices (None now and
        then: no match yet, a chance to stop)."""
        broker = self.broker
        iterate = getattr(broker.store, "iterRetained", None)
        if iterate is None:
            return None
        clock = broker.clock
        return (m for m in iterate(topicFilter)  # (None: no match yet, a chance to stop)
                if m is None or not (m.properties and expired(m, clock.seconds())))

    def _open_session(self, clientId: str) -> Session:
        session = self.broker.sessions.get(clientId)
        if session is None or session.connection is None or session.connection.state == CLOSED:
            raise ValidationError(f"no open session for {clientId!r}")
        return session
