"""The application message as the broker routes it, whatever adapter it came from."""

from __future__ import annotations

import math
from typing import Any

from mqtt_twisted.constants import PropertyId
from mqtt_twisted.errors import ValidationError

_TOPIC_ALIAS = PropertyId.TOPIC_ALIAS
_SUB_ID = PropertyId.SUBSCRIPTION_IDENTIFIER
_EXPIRY = PropertyId.MESSAGE_EXPIRY_INTERVAL

Properties = dict[int, Any]


#: ``Message.wire`` of a message whose encodings must not be kept: a retained message
#: held by a store.  Cached there, a ``#`` subscriber over 100,000 retained messages of
#: 10 KB left a second gigabyte behind (their PUBLISH bytes), which the retained quota
#: does not count; each retained delivery encodes instead.  Never written to.
NO_WIRE: dict = {}


class Message:
    """One application message: topic, payload, QoS, retain flag and v5 properties.

    Slotted and without validation on the fast constructor path, so that a
    broker can make one per PUBLISH; :meth:`create` validates for API callers.
    ``packet_id`` is the id it travelled under on its last hop, if any;
    ``received_at`` is the broker clock reading when it arrived, used to age the
    message expiry interval.  ``sender`` is the client id of the publisher (for
    no-local), or None.
    """

    __slots__ = (
        "topic", "payload", "qos", "retain", "packet_id", "properties", "received_at",
        "sender", "wire",
    )

    def __init__(
        self,
        topic: str,
        payload: bytes = b"",
        qos: int = 0,
        retain: bool = False,
        packet_id: int | None = None,
        properties: Properties | None = None,
        received_at: float = 0.0,
        sender: str | None = None,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.packet_id = packet_id
        self.properties = properties if properties is not None else {}
        self.received_at = received_at
        self.sender = sender
        # Encoded forms of this message keyed by (version, qos, retain): fan-out
        # encodes each variant once and shares the bytes among subscribers
        # (NO_WIRE: never kept, see there).
        self.wire: dict[tuple[int, int, bool], bytes] | None = None

    @classmethod
    def create(
        cls,
        topic: str,
        payload: bytes | str = b"",
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> Message:
        """Build a message from untrusted API input, checking every field."""
        from mqtt_twisted.codec.topics import validate_topic_name

        validate_topic_name(topic)
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise ValidationError(f"payload must be bytes, not {type(payload).__name__}")
        if qos not in (0, 1, 2):
            raise ValidationError(f"QoS must be 0, 1 or 2, not {qos!r}")
        return cls(topic, bytes(payload), qos, bool(retain), None, dict(properties or {}))

    def copy(self, **changes: Any) -> Message:
        """A shallow copy with some fields replaced (properties are copied, not shared)."""
        new = Message.__new__(Message)
        new.topic = self.topic
        new.payload = self.payload
        new.qos = self.qos
        new.retain = self.retain
        new.packet_id = self.packet_id
        new.properties = dict(self.properties)
        new.received_at = self.received_at
        new.sender = self.sender
        new.wire = None
        for name, value in changes.items():
            setattr(new, name, value)
        return new

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (
            self.topic == other.topic and self.payload == other.payload
            and self.qos == other.qos and self.retain == other.retain
            and self.properties == other.properties
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Message(topic={self.topic!r}, payload={self.payload[:32]!r}"
            f"{'...' if len(self.payload) > 32 else ''}, qos={self.qos}, retain={self.retain})"
        )


def expired(message: Message, now: float) -> bool:
    """Whether a v5 message's expiry interval has run out [MQTT-3.3.2-5]."""
    interval = message.properties.get(_EXPIRY)
    return interval is not None and now - message.received_at >= interval


def forward_properties(
    message: Message, subscription_ids: tuple[int, ...] | None, now: float
) -> dict:
    """The v5 properties a subscriber gets: no topic alias, its subscription ids,
    and the expiry interval less the time the broker held the message [MQTT-3.3.2-6]."""
    props = dict(message.properties)
    props.pop(_TOPIC_ALIAS, None)
    props.pop(_SUB_ID, None)
    if subscription_ids:
        props[_SUB_ID] = list(subscription_ids)
    expiry = props.get(_EXPIRY)
    if expiry is not None:
        # Rounded up: a message forwarded at once keeps its whole interval.
        props[_EXPIRY] = max(0, math.ceil(expiry - (now - message.received_at)))
    return props
