"""A fake :class:`~mqtt_twisted.interfaces.IBrokerService`, to unit-test an adapter alone.

An adapter talks to the broker only through ``IBrokerService``; this stand-in provides
that interface without a broker, store or reactor, records every call, and routes
publishes to the sinks of the sessions it opened, so an adapter author can check what
the adapter asked for and what it does with deliveries::

    service = FakeBrokerService()
    factory = MyAdapterFactory(service)        # the adapter under test
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    protocol.dataReceived(b"PUB a/b hello\\n")
    assert service.published[0].message.topic == "a/b"

It is not a broker: no MQTT rules beyond topic-filter syntax and matching; retained
messages are the ones a test puts in ``retained_messages``; ``authenticate`` answers the
user name and ``authorize`` says yes, except to publishing to ``$SYS`` or to what a test
lists in ``forbidden``; ``fail()`` makes the next call of a method fail, to test an
adapter's error paths.  Every Deferred it returns has already fired, and ``subscribe`` /
``unsubscribe`` for a client with no open session fail theirs with ``ValidationError``
(``BrokerService`` today raises it at once: handle both, e.g. with ``maybeDeferred``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from mqtt_twisted.codec.topics import is_reserved_topic, topic_matches, validate_topic_filter
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.core.stats import BrokerStats
from mqtt_twisted.errors import MQTTError, ValidationError
from mqtt_twisted.interfaces import IBrokerConnection, IBrokerService
from mqtt_twisted.message import Message

__all__ = ["FakeBrokerConnection", "FakeBrokerService", "FakeSession", "Published"]


@implementer(IBrokerConnection)
class FakeBrokerConnection:
    """What ``buildConnection`` returns: records the bytes and events a stream adapter feeds.

    ``transport`` is the adapter's :class:`~mqtt_twisted.interfaces.IConnectionTransport`:
    write to it to play the broker's side.
    """

    def __init__(self, transport: Any, peer: str, listener: Any,
                 certificateIdentity: str | None) -> None:
        self.transport = transport
        self.peer = peer
        self.listener = listener
        self.certificateIdentity = certificateIdentity
        self.received = bytearray()
        self.lost = False
        self.reason: Any = None
        self.writing = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any) -> None:
        self.lost, self.reason = True, reason

    def pauseWriting(self) -> None:
        self.writing = False

    def resumeWriting(self) -> None:
        self.writing = True


@dataclass
class FakeSession:
    """A session ``openSession`` opened: the handle its Deferred fires with."""

    clientId: str
    sink: Any
    clean: bool
    credentials: Any
    #: Topic filter -> granted QoS.
    subscriptions: dict[str, int] = field(default_factory=dict)
    #: False once closed or taken over by another ``openSession`` of the same client id.
    open: bool = True
    #: True if a session of this client id was resumed (``clean=False``).
    present: bool = False
    #: The session expiry interval the adapter asked for, if any.
    expiry: float | None = None


@dataclass
class Published:
    """One ``publish`` call: the message, who published it, and how many sinks got it."""

    message: Message
    clientId: str | None
    delivered: int


@implementer(IBrokerService)
class FakeBrokerService:
    """Records what an adapter asks of the broker; see the module docstring."""

    def __init__(self, reactor: Any = None, maximumQoS: int = 2) -> None:
        #: Stream adapters read ``reactor`` (for deadlines) when not given one.
        self.reactor = reactor
        self.maximumQoS = maximumQoS
        self.stats = BrokerStats()
        self.settings = BrokerSettings(maximum_qos=maximumQoS)
        #: Retained messages ``retained()`` answers from (a test fills it).
        self.retained_messages: list[Message] = []
        #: (action, topic) pairs ``authorize`` refuses, e.g. ("publish", "a/b").
        self.forbidden: set[tuple[str, str]] = set()
        self.connections: list[FakeBrokerConnection] = []
        #: Client id -> its latest session (closed ones stay, with ``open`` False).
        self.sessions: dict[str, FakeSession] = {}
        self.published: list[Published] = []
        #: Every (un)subscribe call: (method name, client id, topic filter, answer).
        self.calls: list[tuple[str, str, str, Any]] = []
        #: Every closeSession call: (client id, remove).
        self.closed: list[tuple[str, bool]] = []
        self._failures: dict[str, list[BaseException]] = {}

    def fail(self, method: str, error: BaseException) -> None:
        """Make the next call of ``method`` (e.g. ``"openSession"``) fail with ``error``."""
        if not callable(getattr(IBrokerService.get(method), "getSignatureInfo", None)):
            raise ValueError(f"IBrokerService has no method {method!r}")
        self._failures.setdefault(method, []).append(error)

    def _failure(self, method: str) -> BaseException | None:
        queued = self._failures.get(method)
        return queued.pop(0) if queued else None

    def _open(self, clientId: str) -> FakeSession:
        session = self.sessions.get(clientId)
        if session is None or not session.open:
            raise ValidationError(f"no open session for {clientId!r}")
        return session

    # --- IBrokerService ------------------------------------------------------------------

    def buildConnection(self, transport: Any, peer: str, listener: Any,
                        certificateIdentity: str | None = None) -> FakeBrokerConnection:
        error = self._failure("buildConnection")
        if error is not None:
            raise error
        connection = FakeBrokerConnection(transport, peer, listener, certificateIdentity)
        self.connections.append(connection)
        return connection

    def connectionRefused(self, why: str = "listener_full") -> None:
        self.stats.connection_refused(why)

    def authenticate(self, credentials: Any) -> Deferred[Any]:
        error = self._failure("authenticate")
        if error is not None:
            return fail(error)
        return succeed(getattr(credentials, "username", None))

    def authorize(self, action: str, identity: Any, clientId: str | None,
                  topic: str) -> Deferred[bool]:
        error = self._failure("authorize")
        if error is not None:
            return fail(error)
        if action == "publish" and is_reserved_topic(topic):
            return succeed(False)
        return succeed((action, topic) not in self.forbidden)

    def mayRemoveSession(self, identity: Any, clientId: str) -> Deferred[bool]:
        return succeed(True)

    def session(self, clientId: str) -> FakeSession | None:
        return self.sessions.get(clientId)

    def retained(self, topicFilter: str) -> Deferred[list[Message]]:
        return succeed([m for m in self.retained_messages
                        if topic_matches(_plain(topicFilter), m.topic)])

    def openSession(self, clientId: str, sink: Any, clean: bool = True,
                    credentials: Any = None,
                    expiry: float | None = None) -> Deferred[FakeSession]:
        error = self._failure("openSession")
        if error is not None:
            return fail(error)
        old = self.sessions.get(clientId)
        session = FakeSession(clientId, sink, clean, credentials, expiry=expiry)
        if old is not None:
            old.open = False  # taken over, as by a second CONNECT
            if not clean:
                session.subscriptions, session.present = dict(old.subscriptions), True
        self.sessions[clientId] = session
        return succeed(session)

    def closeSession(self, clientId: str, remove: bool = False) -> bool:
        error = self._failure("closeSession")
        if error is not None:
            raise error
        self.closed.append((clientId, remove))
        session = self.sessions.get(clientId)
        if session is None:
            return False
        session.open = False
        if remove:
            del self.sessions[clientId]
        return True

    def publish(self, message: Message, clientId: str | None = None) -> Deferred[int]:
        error = self._failure("publish")
        if error is not None:
            return fail(error)
        message.sender = clientId
        delivered = 0
        for session in list(self.sessions.values()):
            qos = self._granted(session, message.topic)
            if qos is not None:
                session.sink.deliver(message, min(qos, message.qos))
                delivered += 1
        self.published.append(Published(message, clientId, delivered))
        return succeed(delivered)

    def subscribe(self, clientId: str, topicFilter: str, qos: int = 0) -> Deferred[int]:
        error = self._failure("subscribe")
        if error is not None:
            return fail(error)
        try:
            session = self._open(clientId)
        except ValidationError as e:
            return fail(e)
        try:
            validate_topic_filter(topicFilter)
        except MQTTError as e:  # a bad filter: answered with its reason code, as a SUBACK
            answer = int(e.reason_code)
        else:
            answer = session.subscriptions[topicFilter] = min(qos, self.maximumQoS)
        self.calls.append(("subscribe", clientId, topicFilter, answer))
        return succeed(answer)

    def unsubscribe(self, clientId: str, topicFilter: str) -> Deferred[bool]:
        error = self._failure("unsubscribe")
        if error is not None:
            return fail(error)
        try:
            session = self._open(clientId)
        except ValidationError as e:
            return fail(e)
        answer = session.subscriptions.pop(topicFilter, None) is not None
        self.calls.append(("unsubscribe", clientId, topicFilter, answer))
        return succeed(answer)

    # --- helpers -------------------------------------------------------------------------

    def _granted(self, session: FakeSession, topic: str) -> int | None:
        """The highest QoS of an open session's filters matching ``topic``, or None."""
        if not session.open:
            return None
        granted = [qos for topic_filter, qos in session.subscriptions.items()
                   if topic_matches(_plain(topic_filter), topic)]
        return max(granted) if granted else None

    def subscribed(self, clientId: str) -> dict[str, int]:
        """The filters ``clientId``'s session holds now, with their granted QoS."""
        session = self.sessions.get(clientId)
        return dict(session.subscriptions) if session is not None else {}


def _plain(topic_filter: str) -> str:
    """A shared subscription's filter without its ``$share/group/`` part."""
    shared = validate_topic_filter(topic_filter)
    return shared.topic_filter if shared is not None else topic_filter
