"""MQTT 5.0 properties: their types, the packets that may carry them, and codecs.

Properties are held in a plain ``dict`` keyed by :class:`PropertyId` (an
``IntEnum``, so ``props[0x23]`` works too).  Repeatable properties are lists:
``USER_PROPERTY`` is a list of ``(name, value)`` pairs in wire order, and
``SUBSCRIPTION_IDENTIFIER`` in a PUBLISH is a list of ints (in a SUBSCRIBE,
where it may appear once, it is a single int).
"""

from __future__ import annotations

from typing import Any

from mqtt_twisted.codec._wire import (
    decode_binary,
    decode_string,
    decode_vbi,
    encode_binary,
    encode_string,
    encode_vbi,
)
from mqtt_twisted.constants import (
    MAX_REMAINING_LENGTH,
    WILL_PROPERTIES,
    PacketType,
    PropertyId,
)
from mqtt_twisted.errors import MalformedPacket, PacketTooLarge, ProtocolError, ValidationError

Properties = dict[int, Any]

BYTE, TWO_BYTE, FOUR_BYTE, VBI, STRING, BINARY, STRING_PAIR = range(7)

_P = PacketType
_W = WILL_PROPERTIES

#: id -> (type, packets that may carry it).  The table of [MQTT-2.2.2.2].
PROPERTY_SPECS: dict[int, tuple[int, frozenset[int]]] = {
    PropertyId.PAYLOAD_FORMAT_INDICATOR: (BYTE, frozenset({_P.PUBLISH, _W})),
    PropertyId.MESSAGE_EXPIRY_INTERVAL: (FOUR_BYTE, frozenset({_P.PUBLISH, _W})),
    PropertyId.CONTENT_TYPE: (STRING, frozenset({_P.PUBLISH, _W})),
    PropertyId.RESPONSE_TOPIC: (STRING, frozenset({_P.PUBLISH, _W})),
    PropertyId.CORRELATION_DATA: (BINARY, frozenset({_P.PUBLISH, _W})),
    PropertyId.SUBSCRIPTION_IDENTIFIER: (VBI, frozenset({_P.PUBLISH, _P.SUBSCRIBE})),
    PropertyId.SESSION_EXPIRY_INTERVAL: (
        FOUR_BYTE, frozenset({_P.CONNECT, _P.CONNACK, _P.DISCONNECT})),
    PropertyId.ASSIGNED_CLIENT_IDENTIFIER: (STRING, frozenset({_P.CONNACK})),
    PropertyId.SERVER_KEEP_ALIVE: (TWO_BYTE, frozenset({_P.CONNACK})),
    PropertyId.AUTHENTICATION_METHOD: (STRING, frozenset({_P.CONNECT, _P.CONNACK, _P.AUTH})),
    PropertyId.AUTHENTICATION_DATA: (BINARY, frozenset({_P.CONNECT, _P.CONNACK, _P.AUTH})),
    PropertyId.REQUEST_PROBLEM_INFORMATION: (BYTE, frozenset({_P.CONNECT})),
    PropertyId.WILL_DELAY_INTERVAL: (FOUR_BYTE, frozenset({_W})),
    PropertyId.REQUEST_RESPONSE_INFORMATION: (BYTE, frozenset({_P.CONNECT})),
    PropertyId.RESPONSE_INFORMATION: (STRING, frozenset({_P.CONNACK})),
    PropertyId.SERVER_REFERENCE: (STRING, frozenset({_P.CONNACK, _P.DISCONNECT})),
    PropertyId.REASON_STRING: (STRING, frozenset({
        _P.CONNACK, _P.PUBACK, _P.PUBREC, _P.PUBREL, _P.PUBCOMP, _P.SUBACK,
        _P.UNSUBACK, _P.DISCONNECT, _P.AUTH})),
    PropertyId.RECEIVE_MAXIMUM: (TWO_BYTE, frozenset({_P.CONNECT, _P.CONNACK})),
    PropertyId.TOPIC_ALIAS_MAXIMUM: (TWO_BYTE, frozenset({_P.CONNECT, _P.CONNACK})),
    PropertyId.TOPIC_ALIAS: (TWO_BYTE, frozenset({_P.PUBLISH})),
    PropertyId.MAXIMUM_QOS: (BYTE, frozenset({_P.CONNACK})),
    PropertyId.RETAIN_AVAILABLE: (BYTE, frozenset({_P.CONNACK})),
    PropertyId.USER_PROPERTY: (STRING_PAIR, frozenset({
        _P.CONNECT, _P.CONNACK, _P.PUBLISH, _W, _P.PUBACK, _P.PUBREC, _P.PUBREL,
        _P.PUBCOMP, _P.SUBSCRIBE, _P.SUBACK, _P.UNSUBSCRIBE, _P.UNSUBACK,
        _P.DISCONNECT, _P.AUTH})),
    PropertyId.MAXIMUM_PACKET_SIZE: (FOUR_BYTE, frozenset({_P.CONNECT, _P.CONNACK})),
    PropertyId.WILDCARD_SUBSCRIPTION_AVAILABLE: (BYTE, frozenset({_P.CONNACK})),
    PropertyId.SUBSCRIPTION_IDENTIFIER_AVAILABLE: (BYTE, frozenset({_P.CONNACK})),
    PropertyId.SHARED_SUBSCRIPTION_AVAILABLE: (BYTE, frozenset({_P.CONNACK})),
}

_BOOLEAN_BYTES = frozenset({
    PropertyId.PAYLOAD_FORMAT_INDICATOR, PropertyId.REQUEST_PROBLEM_INFORMATION,
    PropertyId.REQUEST_RESPONSE_INFORMATION, PropertyId.MAXIMUM_QOS,
    PropertyId.RETAIN_AVAILABLE, PropertyId.WILDCARD_SUBSCRIPTION_AVAILABLE,
    PropertyId.SUBSCRIPTION_IDENTIFIER_AVAILABLE, PropertyId.SHARED_SUBSCRIPTION_AVAILABLE,
})
_NON_ZERO = frozenset({
    PropertyId.RECEIVE_MAXIMUM, PropertyId.MAXIMUM_PACKET_SIZE, PropertyId.TOPIC_ALIAS,
    PropertyId.SUBSCRIPTION_IDENTIFIER,
})

# Plain ints for the hot loop: enum attribute lookups cost more than dict hits.
_USER = int(PropertyId.USER_PROPERTY)
_SUB_ID = int(PropertyId.SUBSCRIPTION_IDENTIFIER)
_PUBLISH = int(PacketType.PUBLISH)
_ID_ENUM = {int(p): p for p in PropertyId}


class DecodeLimits:
    """What one packet may carry beyond the protocol's own limits, checked while it is
    decoded, before the objects are built: a CONNECT or PUBLISH of a million user
    properties is refused at the 129th, not after a million tuples were made.  And the
    stream's packet sizes (``StreamDecoder``): the largest packet, and the largest
    while the stream still waits for its CONNECT.  One object for every connection of
    a broker, not two numbers in each decoder."""

    __slots__ = ("max_user_properties", "max_user_property_bytes", "max_packet_size",
                 "connect_packet_size")

    def __init__(self, max_user_properties: int = 1 << 31,
                 max_user_property_bytes: int = 1 << 31,
                 max_packet_size: int = MAX_REMAINING_LENGTH + 5,
                 connect_packet_size: int | None = None) -> None:
        self.max_user_properties = max_user_properties
        self.max_user_property_bytes = max_user_property_bytes
        self.max_packet_size = max_packet_size
        self.connect_packet_size = min(connect_packet_size or max_packet_size,
                                       max_packet_size)

    def sized(self, max_packet_size: int, connect_packet_size: int | None) -> DecodeLimits:
        """These limits with the given packet sizes (itself when they are its own)."""
        connect = min(connect_packet_size or max_packet_size, max_packet_size)
        if max_packet_size == self.max_packet_size and connect == self.connect_packet_size:
            return self
        return DecodeLimits(self.max_user_properties, self.max_user_property_bytes,
                            max_packet_size, connect)


#: The protocol's limits only (clients, tests, tools).
NO_LIMITS = DecodeLimits()


def is_repeatable(prop: int, packet_type: int) -> bool:
    """User properties repeat anywhere; subscription identifiers only in PUBLISH."""
    return prop == _USER or (prop == _SUB_ID and packet_type == _PUBLISH)


def decode_properties(buf: bytes, pos: int, end: int, packet_type: int,
                      limits: DecodeLimits = NO_LIMITS) -> tuple[Properties, int]:
    """Decode a property block (length VBI plus properties) for ``packet_type``.

    User properties beyond ``limits`` raise :class:`PacketTooLarge` as soon as the
    first one too many is read."""
    length, pos = decode_vbi(buf, pos, end)
    users = user_bytes = 0
    stop = pos + length
    if stop > end:
        raise MalformedPacket("properties run past the packet")
    props: Properties = {}
    while pos < stop:
        # A property identifier is a VBI; every defined one fits in one byte.
        ident, pos = decode_vbi(buf, pos, stop)
        spec = PROPERTY_SPECS.get(ident)
        if spec is None:
            raise MalformedPacket(f"unknown property identifier 0x{ident:02X}")
        kind, allowed = spec
        if packet_type not in allowed:
            # "An Identifier which is not valid for its packet type ... is a Malformed Packet".
            raise MalformedPacket(
                f"property {_ID_ENUM[ident].name} not allowed in packet type {packet_type}"
            )  # [MQTT-2.2.2.2]
        if kind == BYTE:
            if pos >= stop:
                raise MalformedPacket("property runs past its block")
            value: Any = buf[pos]
            pos += 1
        elif kind == TWO_BYTE:
            if pos + 2 > stop:
                raise MalformedPacket("property runs past its block")
            value = (buf[pos] << 8) | buf[pos + 1]
            pos += 2
        elif kind == FOUR_BYTE:
            if pos + 4 > stop:
                raise MalformedPacket("property runs past its block")
            value = int.from_bytes(buf[pos : pos + 4], "big")
            pos += 4
        elif kind == VBI:
            value, pos = decode_vbi(buf, pos, stop)
        elif kind == STRING:
            value, pos = decode_string(buf, pos, stop)
        elif kind == BINARY:
            value, pos = decode_binary(buf, pos, stop)
        else:
            start = pos
            name, pos = decode_string(buf, pos, stop)
            text, pos = decode_string(buf, pos, stop)
            value = (name, text)
            users += 1
            user_bytes += pos - start
            if users > limits.max_user_properties or user_bytes > limits.max_user_property_bytes:
                raise PacketTooLarge(
                    f"more than {limits.max_user_properties} user properties or "
                    f"{limits.max_user_property_bytes} bytes of them")
        if ident in _BOOLEAN_BYTES and value > 1:
            raise ProtocolError(f"property {_ID_ENUM[ident].name} must be 0 or 1")
        if ident in _NON_ZERO and value == 0:
            raise ProtocolError(f"property {_ID_ENUM[ident].name} must not be 0")
        key = _ID_ENUM[ident]
        if is_repeatable(ident, packet_type):
            props.setdefault(key, []).append(value)
        elif key in props:
            raise ProtocolError(f"property {key.name} appears more than once")
        else:
            props[key] = value
    return props, pos


def _encode_value(kind: int, value: Any) -> bytes:
    if kind == BYTE:
        return bytes((value,))
    if kind == TWO_BYTE:
        return value.to_bytes(2, "big")
    if kind == FOUR_BYTE:
        return value.to_bytes(4, "big")
    if kind == VBI:
        return encode_vbi(value)
    if kind == STRING:
        return encode_string(value)
    if kind == BINARY:
        return encode_binary(bytes(value))
    name, text = value
    return encode_string(name) + encode_string(text)


def encode_properties(props: Properties | None, packet_type: int) -> bytes:
    """Encode a property block, checking each property is allowed in ``packet_type``."""
    if not props:
        return b"\x00"
    parts: list[bytes] = []
    for ident, value in props.items():
        spec = PROPERTY_SPECS.get(ident)
        if spec is None:
            raise ValidationError(f"unknown property identifier {ident!r}")
        kind, allowed = spec
        if packet_type not in allowed:
            raise ValidationError(f"property {_ID_ENUM[ident].name} not allowed here")
        head = bytes((ident,))
        try:
            if is_repeatable(ident, packet_type):
                for item in value:
                    parts.append(head + _encode_value(kind, item))
            else:
                parts.append(head + _encode_value(kind, value))
        except (OverflowError, TypeError, ValueError) as e:
            if isinstance(e, ValidationError):
                raise
            raise ValidationError(f"bad value for {_ID_ENUM[ident].name}: {value!r}") from None
    block = b"".join(parts)
    return encode_vbi(len(block)) + block
