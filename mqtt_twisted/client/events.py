"""What the client core reports, and the errors the client raises.

The core returns these events from :meth:`ClientCore.receive`; the Twisted shell
turns them into Deferred results.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mqtt_twisted.codec import ConnAck, Publish
from mqtt_twisted.errors import ConnectError, MQTTError

__all__ = [
    "AuthMethodError", "ConnectError", "ConnectRefused", "Connected", "Event", "Message",
    "PublishDone", "PublishError", "Reauthenticated", "ServerDisconnect", "SessionLost",
    "Subscribed", "Unsubscribed", "connect_error",
]


class PublishError(MQTTError):
    """The broker answered a QoS 1 or 2 PUBLISH with a failure reason code (v5)."""


class SessionLost(MQTTError):
    """The broker has no session for us: in-flight messages cannot complete."""


class AuthMethodError(ConnectError):
    """Our enhanced authentication method gave up: the server's data did not parse or
    the server did not prove itself (SCRAM's server signature).  The client closes
    the connection (v5 DISCONNECT 0x80 once connected)."""


# --- events ------------------------------------------------------------------------------


@dataclass(slots=True)
class Connected:
    """CONNACK with reason code 0: the connection is open.

    ``lost``: ids of our publishes that cannot complete because the broker had
    no session for us (session present 0).
    """

    connack: ConnAck
    lost: list[int] = field(default_factory=list)


@dataclass(slots=True)
class ConnectRefused:
    """CONNACK with a failure code; the broker closes the connection next."""

    connack: ConnAck


@dataclass(slots=True)
class Message:
    """An application message from the broker (topic alias already resolved)."""

    publish: Publish

    @property
    def topic(self) -> str:
        return self.publish.topic

    @property
    def payload(self) -> bytes:
        return self.publish.payload


@dataclass(slots=True)
class PublishDone:
    """A QoS 1/2 publish of ours is complete (PUBACK/PUBCOMP) or refused (code >= 0x80)."""

    packet_id: int
    reason_code: int
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Subscribed:
    packet_id: int
    reason_codes: list[int]
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Unsubscribed:
    packet_id: int
    reason_codes: list[int]
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class ServerDisconnect:
    """A v5 DISCONNECT from the broker."""

    reason_code: int
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Reauthenticated:
    """AUTH 0x00 ended a re-authentication we started; the method checked its data."""

    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class _Pong:
    pass


Event = (Connected | ConnectRefused | Message | PublishDone | Subscribed | Unsubscribed
         | ServerDisconnect | Reauthenticated)


def connect_error(connack: ConnAck) -> ConnectError:
    """The typed error for a refused CONNACK (its reason or v3 return code)."""
    error = ConnectError(f"connection refused: code 0x{connack.reason_code:02X}",
                         connack.reason_code, connack.properties)
    error.connack = connack  # type: ignore[attr-defined]
    return error
