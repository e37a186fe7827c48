"""The MQTT control packets as plain slotted data classes.

One class per packet type serves every protocol version: fields a version does
not have (properties, most reason codes) keep their defaults and are neither
read nor written for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from mqtt_twisted.constants import PacketType

Properties = dict[int, Any]


@dataclass(slots=True)
class Will:
    """The will message carried in CONNECT."""

    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    properties: Properties = field(default_factory=dict)


@dataclass(slots=True)
class Connect:
    type: ClassVar[int] = PacketType.CONNECT
    client_id: str = ""
    protocol_level: int = 4
    clean_start: bool = True
    keep_alive: int = 60
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None
    properties: Properties = field(default_factory=dict)
    protocol_name: str = ""  # empty: the canonical name for protocol_level


@dataclass(slots=True)
class ConnAck:
    type: ClassVar[int] = PacketType.CONNACK
    session_present: bool = False
    reason_code: int = 0
    properties: Properties = field(default_factory=dict)


@dataclass(slots=True)
class Publish:
    type: ClassVar[int] = PacketType.PUBLISH
    topic: str = ""
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    properties: Properties = field(default_factory=dict)
    #: The whole packet as received, kept by the framer for QoS 0 non-retained PUBLISHes
    #: so that a broker can forward the same bytes without encoding them again.
    raw: bytes | None = field(default=None, compare=False, repr=False)


@dataclass(slots=True)
class PubAck:
    type: ClassVar[int] = PacketType.PUBACK
    packet_id: int = 0
    reason_code: int = 0
    properties: Properties = field(default_factory=dict)


@dataclass(slots=True)
class PubRec:
    type: ClassVar[int] = PacketType.PUBREC
    packet_id: int = 0
    reason_code: int = 0
    properties: Properties = field(default_factory=dict)


@dataclass(slots=True)
class PubRel:
    type: ClassVar[int] = PacketType.PUBREL
    packet_id: int = 0
    reason_code: int = 0
    properties: Properties = field(default_factory=dict)


@dataclass(slots=True)
class PubComp:
    type: ClassVar[int] = PacketType.PUBCOMP
    packet_id: int = 0
    reason_code: int = 0
    properties: Properties = field(default_factory=dict)


@dataclass(slots=True)
class Subscription:
    """One topic filter of a SUBSCRIBE with its options (v5 options default off)."""

    topic_filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0


@dataclass(slots=True)
class Subscribe:
    type: ClassVar[int] = PacketType.SUBSCRIBE
    packet_id: int = 0
    subscriptions: list[Subscription] = field(default_factory=list)
    properties: Properties = field(default_factory=dict)


@dataclass(slots=True)
class SubAck:
    type: ClassVar[int] = PacketType.SUBACK
    packet_id: int = 0
    reason_codes: list[int] = field(default_factory=list)
    properties: Properties = field(default_factory=dict)


@dataclass(slots=True)
class Unsubscribe:
    type: ClassVar[int] = PacketType.UNSUBSCRIBE
    packet_id: int = 0
    topic_filters: list[str] = field(default_factory=list)
    properties: Properties = field(default_factory=dict)


@dataclass(slots=True)
class UnsubAck:
    """UNSUBACK; ``reason_codes`` exists on the wire only in v5."""

    type: ClassVar[int] = PacketType.UNSUBACK
    packet_id: int = 0
    reason_codes: list[int] = field(default_factory=list)
    properties: Properties = field(default_factory=dict)


@dataclass(slots=True)
class PingReq:
    type: ClassVar[int] = PacketType.PINGREQ


@dataclass(slots=True)
class PingResp:
    type: ClassVar[int] = PacketType.PINGRESP


@dataclass(slots=True)
class Disconnect:
    type: ClassVar[int] = PacketType.DISCONNECT
    reason_code: int = 0
    properties: Properties = field(default_factory=dict)


@dataclass(slots=True)
class Auth:
    type: ClassVar[int] = PacketType.AUTH
    reason_code: int = 0
    properties: Properties = field(default_factory=dict)


Packet = (
    Connect | ConnAck | Publish | PubAck | PubRec | PubRel | PubComp | Subscribe | SubAck
    | Unsubscribe | UnsubAck | PingReq | PingResp | Disconnect | Auth
)
