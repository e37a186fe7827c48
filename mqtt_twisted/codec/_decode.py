"""Packet body decoders: ``(flags, buf, pos, end, version) -> packet``.

Each decoder parses the variable header and payload of one packet that lies in
``buf[pos:end]``; the framer has already checked the fixed header's length.
"""

from __future__ import annotations

from collections.abc import Callable

from mqtt_twisted.codec._wire import decode_binary, decode_string
from mqtt_twisted.codec.packets import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)
from mqtt_twisted.codec.properties import NO_LIMITS, DecodeLimits, decode_properties
from mqtt_twisted.constants import (
    ALLOWED_REASON_CODES,
    PROTOCOL_NAMES,
    WILL_PROPERTIES,
    PacketType,
    PropertyId,
)
from mqtt_twisted.errors import (
    InvalidTopicName,
    MalformedPacket,
    ProtocolError,
    UnsupportedProtocolVersion,
)

_NO_PROPS: dict = {}  # never handed out: each packet gets its own dict
_TOPIC_ALIAS = PropertyId.TOPIC_ALIAS

#: The fixed-header flags each packet type must carry [MQTT-2.2.2-1..2].
REQUIRED_FLAGS = {
    PacketType.CONNECT: 0, PacketType.CONNACK: 0, PacketType.PUBACK: 0,
    PacketType.PUBREC: 0, PacketType.PUBREL: 2, PacketType.PUBCOMP: 0,
    PacketType.SUBSCRIBE: 2, PacketType.SUBACK: 0, PacketType.UNSUBSCRIBE: 2,
    PacketType.UNSUBACK: 0, PacketType.PINGREQ: 0, PacketType.PINGRESP: 0,
    PacketType.DISCONNECT: 0, PacketType.AUTH: 0,
}


def _u16(buf: bytes, pos: int, end: int) -> int:
    if pos + 2 > end:
        raise MalformedPacket("two-byte integer runs past the packet")
    return (buf[pos] << 8) | buf[pos + 1]


def _packet_id(buf: bytes, pos: int, end: int) -> int:
    pid = _u16(buf, pos, end)
    if not pid:
        raise MalformedPacket("packet identifier 0")  # [MQTT-2.3.1-1]
    return pid


def _no_trailing(pos: int, end: int, what: str) -> None:
    if pos != end:
        raise MalformedPacket(f"{end - pos} unexpected bytes at the end of {what}")


def _check_reason(packet_type: int, code: int) -> int:
    if code not in ALLOWED_REASON_CODES[packet_type]:
        raise MalformedPacket(f"reason code 0x{code:02X} is not valid in packet type {packet_type}")
    return code


def decode_connect(flags: int, buf: bytes, pos: int, end: int, version: int | None,
        limits: DecodeLimits = NO_LIMITS) -> Connect:
    """CONNECT: the packet that fixes the protocol version of the stream."""
    name, pos = decode_string(buf, pos, end)
    if pos + 4 > end:
        raise MalformedPacket("CONNECT variable header is truncated")
    level = buf[pos]
    cflags = buf[pos + 1]
    keep_alive = (buf[pos + 2] << 8) | buf[pos + 3]
    pos += 4
    if PROTOCOL_NAMES.get(level) != name:
        if name not in ("MQTT", "MQIsdp"):
            raise ProtocolError(f"unknown protocol name {name!r}")  # [MQTT-3.1.2-1]
        raise UnsupportedProtocolVersion(
            f"unsupported protocol {name!r} level {level}", level=level
        )  # [MQTT-3.1.2-2]
    if cflags & 0x01:
        raise MalformedPacket("CONNECT reserved flag is set")  # [MQTT-3.1.2-3]
    clean_start = bool(cflags & 0x02)
    will_flag = cflags & 0x04
    will_qos = (cflags >> 3) & 0x03
    will_retain = bool(cflags & 0x20)
    has_password = cflags & 0x40
    has_username = cflags & 0x80
    if will_qos == 3:
        raise MalformedPacket("will QoS 3")
    if not will_flag and (will_qos or will_retain):
        raise MalformedPacket("will QoS or retain set without a will")  # [MQTT-3.1.2-11..15]
    if level < 5 and has_password and not has_username:
        raise MalformedPacket("password without a user name")  # [MQTT-3.1.2-22]
    props = decode_properties(buf, pos, end, PacketType.CONNECT, limits) if level == 5 else None
    if props is not None:
        properties, pos = props
    else:
        properties = {}
    client_id, pos = decode_string(buf, pos, end)
    will = None
    if will_flag:
        if level == 5:
            will_props, pos = decode_properties(buf, pos, end, WILL_PROPERTIES, limits)
        else:
            will_props = {}
        will_topic, pos = decode_string(buf, pos, end)
        if not will_topic or "+" in will_topic or "#" in will_topic:
            raise InvalidTopicName(f"bad will topic {will_topic!r}")
        will_payload, pos = decode_binary(buf, pos, end)
        will = Will(will_topic, will_payload, will_qos, will_retain, will_props)
    username = password = None
    if has_username:
        username, pos = decode_string(buf, pos, end)
    if has_password:
        password, pos = decode_binary(buf, pos, end)
    _no_trailing(pos, end, "CONNECT")
    return Connect(
        client_id, level, clean_start, keep_alive, will, username, password, properties
    )


def decode_connack(flags: int, buf: bytes, pos: int, end: int, version: int | None,
        limits: DecodeLimits = NO_LIMITS) -> ConnAck:
    if pos + 2 > end:
        raise MalformedPacket("CONNACK is truncated")
    ack_flags = buf[pos]
    code = buf[pos + 1]
    pos += 2
    if ack_flags & 0xFE:
        raise MalformedPacket("CONNACK reserved flags are set")
    if version == 5:
        _check_reason(PacketType.CONNACK, code)
        properties, pos = decode_properties(buf, pos, end, PacketType.CONNACK, limits)
    else:
        if code > 5:
            raise MalformedPacket(f"CONNACK return code {code}")
        properties = {}
    _no_trailing(pos, end, "CONNACK")
    # MQTT 3.1 has no session-present flag: the byte is reserved and read as 0.
    return ConnAck(bool(ack_flags & 1) and version != 3, code, properties)


def decode_publish(flags: int, buf: bytes, pos: int, end: int, version: int | None,
        limits: DecodeLimits = NO_LIMITS) -> Publish:
    """PUBLISH: the hot path, kept flat."""
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")  # [MQTT-3.3.1-4]
    dup = bool(flags & 0x08)
    if dup and not qos:
        raise MalformedPacket("DUP set on a QoS 0 PUBLISH")  # [MQTT-3.3.1-2]
    if pos + 2 > end:
        raise MalformedPacket("PUBLISH is truncated")
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise MalformedPacket("PUBLISH topic runs past the packet")
    try:
        topic = str(buf[pos + 2 : stop], "utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket("PUBLISH topic is not well-formed UTF-8") from None
    pos = stop
    if "+" in topic or "#" in topic or "\x00" in topic:
        if "\x00" in topic:
            raise MalformedPacket("PUBLISH topic contains U+0000")  # [MQTT-1.5.4-2]
        raise InvalidTopicName(f"PUBLISH topic {topic!r} is invalid")  # [MQTT-3.3.2-2]
    packet_id = None
    if qos:
        if pos + 2 > end:
            raise MalformedPacket("PUBLISH packet identifier is truncated")
        packet_id = (buf[pos] << 8) | buf[pos + 1]
        if not packet_id:
            raise MalformedPacket("PUBLISH with packet identifier 0")
        pos += 2
    if version == 5:
        if pos < end and not buf[pos]:
            properties = {}
            pos += 1
        else:
            properties, pos = decode_properties(buf, pos, end, PacketType.PUBLISH, limits)
        if not topic and _TOPIC_ALIAS not in properties:
            # A protocol error (0x82), not an invalid topic name (MQTT 5 §3.3.2.1).
            raise ProtocolError("empty PUBLISH topic without a topic alias")
    else:
        properties = {}
        if not topic:
            raise InvalidTopicName("empty PUBLISH topic")  # [MQTT-4.7.3-1]
    return Publish(topic, buf[pos:end], qos, bool(flags & 1), dup, packet_id, properties)


def _make_ack_decoder(cls: type, packet_type: int) -> Callable[..., Packet]:
    def decode_ack(flags: int, buf: bytes, pos: int, end: int, version: int | None,
        limits: DecodeLimits = NO_LIMITS) -> Packet:
        if end - pos == 2:
            # The usual ack, in every version: a packet id alone (v5: success, no
            # properties). Inline, as a QoS 2 message has three of them to decode.
            packet_id = buf[pos] << 8 | buf[pos + 1]
            if packet_id:
                return cls(packet_id, 0, {})
        packet_id = _packet_id(buf, pos, end)
        pos += 2
        code = 0
        properties: dict = {}
        if version == 5 and pos < end:
            # v5 may omit the reason code (and then the properties) [MQTT-3.4.2.1].
            code = _check_reason(packet_type, buf[pos])
            pos += 1
            if pos < end:
                properties, pos = decode_properties(buf, pos, end, packet_type, limits)
        _no_trailing(pos, end, cls.__name__.upper())
        return cls(packet_id, code, properties)

    decode_ack.__name__ = f"decode_{cls.__name__.lower()}"
    return decode_ack


decode_puback = _make_ack_decoder(PubAck, PacketType.PUBACK)
decode_pubrec = _make_ack_decoder(PubRec, PacketType.PUBREC)
decode_pubrel = _make_ack_decoder(PubRel, PacketType.PUBREL)
decode_pubcomp = _make_ack_decoder(PubComp, PacketType.PUBCOMP)


def decode_subscribe(flags: int, buf: bytes, pos: int, end: int, version: int | None,
        limits: DecodeLimits = NO_LIMITS) -> Subscribe:
    packet_id = _packet_id(buf, pos, end)
    pos += 2
    properties: dict = {}
    if version == 5:
        properties, pos = decode_properties(buf, pos, end, PacketType.SUBSCRIBE, limits)
    subscriptions = []
    while pos < end:
        topic_filter, pos = decode_string(buf, pos, end)
        if pos >= end:
            raise MalformedPacket("SUBSCRIBE filter without options")
        options = buf[pos]
        pos += 1
        qos = options & 0x03
        if version == 5:
            if options & 0xC0:
                raise MalformedPacket("SUBSCRIBE option reserved bits set")  # [MQTT-3.8.3-5]
            if qos == 3:
                raise ProtocolError("SUBSCRIBE requests QoS 3")  # a Protocol Error (3.8.3.1)
            retain_handling = (options >> 4) & 0x03
            if retain_handling == 3:
                raise ProtocolError("SUBSCRIBE retain handling 3")
            subscriptions.append(Subscription(
                topic_filter, qos, bool(options & 0x04), bool(options & 0x08), retain_handling
            ))
        else:
            if options & 0xFC or qos == 3:
                # Reserved bits or QoS 3 [MQTT-3-8.3-4].
                raise MalformedPacket("SUBSCRIBE QoS byte reserved bits set or QoS 3")
            subscriptions.append(Subscription(topic_filter, qos))
    if not subscriptions:
        raise ProtocolError("SUBSCRIBE without topic filters")  # [MQTT-3.8.3-3]
    return Subscribe(packet_id, subscriptions, properties)


def decode_suback(flags: int, buf: bytes, pos: int, end: int, version: int | None,
        limits: DecodeLimits = NO_LIMITS) -> SubAck:
    packet_id = _packet_id(buf, pos, end)
    pos += 2
    properties: dict = {}
    if version == 5:
        properties, pos = decode_properties(buf, pos, end, PacketType.SUBACK, limits)
        codes = [_check_reason(PacketType.SUBACK, c) for c in buf[pos:end]]
    else:
        codes = list(buf[pos:end])
        for c in codes:
            if c not in (0, 1, 2, 0x80):
                raise MalformedPacket(f"SUBACK return code 0x{c:02X}")
    if not codes:
        raise ProtocolError("SUBACK without return codes")
    return SubAck(packet_id, codes, properties)


def decode_unsubscribe(
    flags: int, buf: bytes, pos: int, end: int, version: int | None,
    limits: DecodeLimits = NO_LIMITS,
) -> Unsubscribe:
    packet_id = _packet_id(buf, pos, end)
    pos += 2
    properties: dict = {}
    if version == 5:
        properties, pos = decode_properties(buf, pos, end, PacketType.UNSUBSCRIBE, limits)
    filters = []
    while pos < end:
        topic_filter, pos = decode_string(buf, pos, end)
        filters.append(topic_filter)
    if not filters:
        raise ProtocolError("UNSUBSCRIBE without topic filters")  # [MQTT-3.10.3-2]
    return Unsubscribe(packet_id, filters, properties)


def decode_unsuback(flags: int, buf: bytes, pos: int, end: int, version: int | None,
        limits: DecodeLimits = NO_LIMITS) -> UnsubAck:
    packet_id = _packet_id(buf, pos, end)
    pos += 2
    if version != 5:
        _no_trailing(pos, end, "UNSUBACK")
        return UnsubAck(packet_id)
    properties, pos = decode_properties(buf, pos, end, PacketType.UNSUBACK, limits)
    codes = [_check_reason(PacketType.UNSUBACK, c) for c in buf[pos:end]]
    if not codes:
        raise ProtocolError("UNSUBACK without reason codes")
    return UnsubAck(packet_id, codes, properties)


def _decode_empty(cls: type) -> Callable[..., Packet]:
    def decode_empty(flags: int, buf: bytes, pos: int, end: int, version: int | None,
        limits: DecodeLimits = NO_LIMITS) -> Packet:
        _no_trailing(pos, end, cls.__name__.upper())
        return cls()

    return decode_empty


def _decode_reason_and_properties(cls: type, packet_type: int) -> Callable[..., Packet]:
    """DISCONNECT and AUTH: an optional reason code and optional properties in v5."""

    def decode(flags: int, buf: bytes, pos: int, end: int, version: int | None,
        limits: DecodeLimits = NO_LIMITS) -> Packet:
        if version != 5:
            if packet_type == PacketType.AUTH:
                raise ProtocolError("AUTH exists only in MQTT 5.0")
            _no_trailing(pos, end, "DISCONNECT")
            return cls()
        code = 0
        properties: dict = {}
        if pos < end:
            code = _check_reason(packet_type, buf[pos])
            pos += 1
            if pos < end:
                properties, pos = decode_properties(buf, pos, end, packet_type, limits)
        _no_trailing(pos, end, cls.__name__.upper())
        return cls(code, properties)

    return decode


DECODERS: dict[int, Callable[..., Packet]] = {
    PacketType.CONNECT: decode_connect,
    PacketType.CONNACK: decode_connack,
    PacketType.PUBLISH: decode_publish,
    PacketType.PUBACK: decode_puback,
    PacketType.PUBREC: decode_pubrec,
    PacketType.PUBREL: decode_pubrel,
    PacketType.PUBCOMP: decode_pubcomp,
    PacketType.SUBSCRIBE: decode_subscribe,
    PacketType.SUBACK: decode_suback,
    PacketType.UNSUBSCRIBE: decode_unsubscribe,
    PacketType.UNSUBACK: decode_unsuback,
    PacketType.PINGREQ: _decode_empty(PingReq),
    PacketType.PINGRESP: _decode_empty(PingResp),
    PacketType.DISCONNECT: _decode_reason_and_properties(Disconnect, PacketType.DISCONNECT),
    PacketType.AUTH: _decode_reason_and_properties(Auth, PacketType.AUTH),
}
# Plain-int keys so that the framer's lookup by nibble never builds an enum.
DECODERS = {int(k): v for k, v in DECODERS.items()}
REQUIRED_FLAGS = {int(k): v for k, v in REQUIRED_FLAGS.items()}


def decode_body(first_byte: int, buf: bytes, pos: int, end: int, version: int | None,
        limits: DecodeLimits = NO_LIMITS) -> Packet:
    """Decode one packet whose body is ``buf[pos:end]`` under ``version``."""
    packet_type = first_byte >> 4
    flags = first_byte & 0x0F
    if packet_type != 3:
        decoder = DECODERS.get(packet_type)
        if decoder is None:
            raise MalformedPacket(f"reserved packet type {packet_type}")
        if flags != REQUIRED_FLAGS[packet_type]:
            raise MalformedPacket(f"bad fixed-header flags 0x{flags:X} for packet type {packet_type}")
        return decoder(flags, buf, pos, end, version, limits)
    return decode_publish(flags, buf, pos, end, version, limits)
