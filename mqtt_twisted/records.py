"""Records shared by the broker core, the stores and the adapters.

What a session holds (subscription options, outbound messages), what a client
presented (credentials), and who owns a session (:func:`owner_of`).

They sit below both (``core.session`` re-exports them), so that a store can rebuild
them without importing the broker.
"""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from mqtt_twisted.interfaces import ICredentials
from mqtt_twisted.message import Message

#: Outbound states: waiting for PUBACK/PUBREC, or for PUBCOMP after our PUBREL.
AWAITING_ACK = 0
AWAITING_PUBCOMP = 1


def packet_id_for(seq: int) -> int:
    """The packet id a message with sequence number ``seq`` is sent with, unless that id
    is still in flight (``Session.allocate_packet_id``): 1..65535, following ``seq``.
    A store can then record that a queued message went in flight without its packet
    id (the Redis store's ``sent`` mark), and give it back on loading."""
    return (seq - 1) % 65535 + 1


class SubscriptionOptions:
    """A granted subscription: QoS and the v5 options."""

    __slots__ = ("qos", "no_local", "retain_as_published", "retain_handling",
                 "subscription_id")

    def __init__(
        self,
        qos: int = 0,
        no_local: bool = False,
        retain_as_published: bool = False,
        retain_handling: int = 0,
        subscription_id: int | None = None,
    ) -> None:
        self.qos = qos
        self.no_local = no_local
        self.retain_as_published = retain_as_published
        self.retain_handling = retain_handling
        self.subscription_id = subscription_id

    def as_tuple(self) -> tuple[int, bool, bool, int, int | None]:
        return (self.qos, self.no_local, self.retain_as_published, self.retain_handling,
                self.subscription_id)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SubscriptionOptions):
            return NotImplemented
        return self.as_tuple() == other.as_tuple()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "SubscriptionOptions(qos={}, no_local={}, rap={}, rh={}, sid={})".format(
            *self.as_tuple()
        )


class Outbound:
    """One message held for a client: queued (packet_id None) or in flight."""

    __slots__ = ("message", "qos", "retain", "subscription_ids", "packet_id", "state", "seq",
                 "group", "held")


    def __init__(
        self,
        message: Message,
        qos: int,
        retain: bool,
        subscription_ids: tuple[int, ...] | None,
        packet_id: int | None = None,
        state: int = AWAITING_ACK,
        group: str | None = None,
        seq: int = 0,
    ) -> None:
        self.message = message
        self.qos = qos
        self.retain = retain
        self.subscription_ids = subscription_ids
        self.packet_id = packet_id
        self.state = state
        self.group = group  # the shared subscription it was routed through, if any
        # Position in the session's delivery order, and its key in a store.
        self.seq = seq
        #: What waits until this copy is done with (acknowledged, handed to another
        #: member, or given up): its ``fire(None)`` is called then.  A cluster's share
        #: copy from a peer's stream in a clean session, whose stream entry is
        #: acknowledged only then (``cluster/router.py``, ``hold_copy``).  Never stored.
        self.held: Any = None


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


def owner_of(identity: Any) -> str | None:
    """The user a session created under ``identity`` belongs to (docs/security.md).

    A string identity (the password file, SCRAM, the anonymous default) is the user
    name itself; an identity object names its owner in a ``sessionOwner`` attribute
    (a JWT identity: the user name when the token vouched for it, else its subject);
    otherwise its ``username``.  None: the identity proves no user name, so the session
    belongs to nobody in particular.  The broker and every adapter ask this one
    function, so that one CONNECT and one HTTP request agree on who owns what.
    """
    if identity is None or isinstance(identity, str):
        return identity
    name = getattr(identity, "sessionOwner" if hasattr(identity, "sessionOwner")
                   else "username", None)
    return name if isinstance(name, str) else None
