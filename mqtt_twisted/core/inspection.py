"""A read-only view of a running broker: sessions, subscriptions, connections.

Tests (and an operator's admin API) ask what the broker holds through these functions
instead of reading ``Broker``, ``Session`` or ``MQTTConnection`` attributes, so that
where the broker keeps its state can change with only this module following it.

Everything here only reads: no function changes, schedules or cancels anything, and
every answer is a snapshot (frozen dataclasses, tuples, frozensets, read-only mappings)
that does not change when the broker does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from mqtt_twisted.core.connection import AWAIT_CONNECT, CLOSED, CONNECTED, CONNECTING
from mqtt_twisted.core.virtual import VirtualConnection
from mqtt_twisted.records import AWAITING_PUBCOMP, SubscriptionOptions

if TYPE_CHECKING:
    from mqtt_twisted.core.broker import Broker
    from mqtt_twisted.core.connection import MQTTConnection
    from mqtt_twisted.core.session import Session

__all__ = [
    "ConnectionInfo", "HeldMessage", "IndexSizes", "Match", "SessionInfo", "SubscriptionInfo",
    "connection_count", "connection_info", "connections", "held_messages", "index_sizes",
    "matching_clients", "session_ids", "session_info", "sessions", "shared_groups",
    "subscription_count",
]

_STATES = {AWAIT_CONNECT: "awaiting-connect", CONNECTING: "connecting",
           CONNECTED: "connected", CLOSED: "closed"}


@dataclass(frozen=True)
class SubscriptionInfo:
    """A granted subscription's options."""

    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0
    subscription_id: int | None = None

    @classmethod
    def of(cls, options: SubscriptionOptions) -> SubscriptionInfo:
        return cls(*options.as_tuple())


@dataclass(frozen=True)
class SessionInfo:
    """What the broker keeps for one client id."""

    client_id: str
    online: bool  # a connection is attached
    persistent: bool  # it outlives its connection
    expiry_interval: float | None  # None: never expires
    disconnected_at: float | None  # clock time; None while online
    subscriptions: Mapping[str, SubscriptionInfo]
    inflight_ids: tuple[int, ...]  # packet ids sent and not yet acknowledged, in order
    awaiting_pubcomp: frozenset[int]  # of those, the ones PUBREC'd (PUBREL sent)
    queued: int  # messages waiting behind the in-flight window
    dropped: int  # queued messages dropped because the queue was full
    inbound_qos2: frozenset[int]  # the client's QoS 2 ids received and not yet released
    will_topic: str | None  # the will kept while online
    will_delay: float
    will_pending: bool  # a delayed will is waiting to go out
    expiry_pending: bool  # the session's expiry timer runs
    identity: Any  # what the authenticator answered

    @property
    def inflight(self) -> int:
        """How many messages are in flight."""
        return len(self.inflight_ids)


@dataclass(frozen=True)
class HeldMessage:
    """One message a session holds for its client: in flight (a packet id) or queued."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    packet_id: int | None  # None: still queued
    awaiting_pubcomp: bool
    group: str | None  # the share group it was routed through, if any

    @property
    def in_flight(self) -> bool:
        return self.packet_id is not None


@dataclass(frozen=True)
class ConnectionInfo:
    """One client connection: an MQTT stream, or an adapter's virtual one (HTTP...)."""

    client_id: str | None  # None before CONNECT
    peer: str
    version: int  # protocol level: 3, 4 or 5
    state: str  # "awaiting-connect", "connecting", "connected" or "closed"
    keep_alive: int  # as granted (a v5 server keep alive included)
    paused: bool  # its transport is full: the broker queues for it
    throttled: bool  # the broker stopped reading from it (flow control)
    congested: bool  # it holds publishers back, or did until its grace ran out
    attached: bool  # it is the connection of its client id's live session
    virtual: bool  # an adapter's session (HTTP...), not an MQTT stream
    adapter: str = "mqtt"  # the listener's adapter: mqtt, ws, auto, http, coap...


@dataclass(frozen=True)
class Match:
    """One client a published topic reaches through plain subscriptions, merged."""

    client_id: str
    qos: int  # the highest QoS of its matching subscriptions
    retain_as_published: bool
    subscription_ids: tuple[int, ...] | None


@dataclass(frozen=True)
class IndexSizes:
    """The subscription index's size, for metrics and leak checks."""

    subscriptions: int  # plain subscriptions plus shared members ($SYS count)
    plain: int  # (filter, client) entries in the plain index
    shared_groups: int  # share groups with at least one member
    shared_filters: int  # share groups indexed by their filter


# --- sessions ----------------------------------------------------------------------------


def session_ids(broker: Broker) -> frozenset[str]:
    """The client ids with a live session (online or not)."""
    return frozenset(broker.sessions)


def session_info(broker: Broker, client_id: str) -> SessionInfo | None:
    """A snapshot of ``client_id``'s session; None when it has none."""
    session = broker.sessions.get(client_id)
    if session is None:
        return None
    inflight = session.inflight
    will = session.will
    return SessionInfo(
        client_id=session.clientId,
        online=session.connection is not None,
        persistent=session.persistent,
        expiry_interval=session.expiryInterval,
        disconnected_at=session.disconnectedAt,
        subscriptions=MappingProxyType({f: SubscriptionInfo.of(o)
                                        for f, o in session.subscriptions.items()}),
        inflight_ids=tuple(inflight),
        awaiting_pubcomp=frozenset(p for p, o in inflight.items()
                                   if o.state == AWAITING_PUBCOMP),
        queued=len(session.queue),
        dropped=session.dropped,
        inbound_qos2=frozenset(session.inboundQoS2),
        will_topic=will.topic if will is not None else None,
        will_delay=session.willDelay,
        # The broker drops a timer's handle when it fires or is cancelled.
        will_pending=session.will_call is not None,
        expiry_pending=session.expiry_call is not None,
        identity=session.identity,
    )


def sessions(broker: Broker) -> tuple[SessionInfo, ...]:
    """Every live session, oldest first."""
    return tuple(info for client_id in list(broker.sessions)
                 if (info := session_info(broker, client_id)) is not None)


def held_messages(broker: Broker, client_id: str) -> tuple[HeldMessage, ...]:
    """What ``client_id``'s session holds, in delivery order: in flight, then queued."""
    session = broker.sessions.get(client_id)
    if session is None:
        return ()
    return tuple(HeldMessage(o.message.topic, o.message.payload, o.qos, o.retain, o.packet_id,
                             o.state == AWAITING_PUBCOMP, o.group)
                 for o in session.outbound)


# --- the subscription index --------------------------------------------------------------


def subscription_count(broker: Broker) -> int:
    """Subscriptions indexed, shared members included."""
    return int(broker.router.count())


def index_sizes(broker: Broker) -> IndexSizes:
    """The sizes of the index's parts: all zero once every subscription is gone."""
    router = broker.router
    return IndexSizes(int(router.count()), len(router.tree), len(router.shared_groups),
                      len(router.shared_tree))


def shared_groups(broker: Broker) -> Mapping[str, frozenset[str]]:
    """Each share group (``$share/{name}/{filter}``) and the client ids in it."""
    return MappingProxyType({key: frozenset(group.members)
                             for key, group in broker.router.shared_groups.items()})


def matching_clients(broker: Broker, topic: str, sender: str | None = None) -> tuple[Match, ...]:
    """The clients a message on ``topic`` from ``sender`` reaches by plain subscriptions
    (share groups pick one member per message, so they are not in it)."""
    return tuple(Match(c, q, rap, ids) for c, q, rap, ids in broker.router.match(topic, sender))


# --- connections -------------------------------------------------------------------------


def connection_count(broker: Broker) -> int:
    """MQTT stream connections the broker tracks, connected or not yet."""
    return len(broker.connections)


def connections(broker: Broker) -> tuple[ConnectionInfo, ...]:
    """Every MQTT stream connection the broker tracks (virtual ones are not tracked: ask
    :func:`connection_info` with their client id)."""
    return tuple(_describe(broker, conn) for conn in broker.connections)


def connection_info(broker: Broker, which: str | MQTTConnection) -> ConnectionInfo | None:
    """A client id's connection, virtual ones included (None when offline or unknown),
    or a given MQTT connection (None once the broker no longer tracks it)."""
    if isinstance(which, str):
        session = broker.sessions.get(which)
        conn = session.connection if session is not None else None
    else:
        conn = which if which in broker.connections else None
    return _describe(broker, conn) if conn is not None else None


def _describe(broker: Broker, conn: MQTTConnection | VirtualConnection) -> ConnectionInfo:
    session: Session | None = conn.session
    attached = (session is not None and session.connection is conn
                and broker.sessions.get(session.clientId) is session)
    return ConnectionInfo(conn.client_id, conn.peer, conn.version,
                          _STATES.get(conn.state, str(conn.state)), conn.keep_alive,
                          conn.paused, getattr(conn, "throttles", 0) > 0,
                          conn in broker.flow.congested, attached,
                          isinstance(conn, VirtualConnection),
                          getattr(conn.listener, "adapter", None) or "mqtt")
