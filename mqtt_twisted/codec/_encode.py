"""Packet encoders: ``packet, version -> bytes``.

Encoders trust the packet's field types but check the values that would put
invalid bytes on the wire (packet ids, QoS, lengths), raising
:class:`~mqtt_twisted.errors.ValidationError`.
"""

from __future__ import annotations

from collections.abc import Callable

from mqtt_twisted.codec._wire import encode_binary, encode_string, encode_vbi
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
    UnsubAck,
    Unsubscribe,
)
from mqtt_twisted.codec.properties import encode_properties
from mqtt_twisted.constants import PROTOCOL_NAMES, WILL_PROPERTIES, PacketType
from mqtt_twisted.errors import ValidationError


def _frame(first_byte: int, body: bytes) -> bytes:
    n = len(body)
    if n < 128:
        return bytes((first_byte, n)) + body
    return bytes((first_byte,)) + encode_vbi(n) + body


def _check_packet_id(packet_id: int | None) -> int:
    if packet_id is None or not 0 < packet_id <= 0xFFFF:
        raise ValidationError(f"packet identifier must be 1..65535, not {packet_id!r}")
    return packet_id


def encode_connect(p: Connect, version: int) -> bytes:
    level = p.protocol_level
    name = p.protocol_name or PROTOCOL_NAMES.get(level)
    if name is None:
        raise ValidationError(f"unknown protocol level {level}")
    flags = 0x02 if p.clean_start else 0
    parts = [encode_string(name), bytes((level,)), b"", p.keep_alive.to_bytes(2, "big")]
    if level == 5:
        parts.append(encode_properties(p.properties, PacketType.CONNECT))
    parts.append(encode_string(p.client_id))
    will = p.will
    if will is not None:
        if will.qos not in (0, 1, 2):
            raise ValidationError(f"will QoS {will.qos}")
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        if level == 5:
            parts.append(encode_properties(will.properties, WILL_PROPERTIES))
        parts.append(encode_string(will.topic))
        parts.append(encode_binary(will.payload))
    if p.username is not None:
        flags |= 0x80
        parts.append(encode_string(p.username))
    if p.password is not None:
        flags |= 0x40
        parts.append(encode_binary(p.password))
    parts[2] = bytes((flags,))
    return _frame(0x10, b"".join(parts))


def encode_connack(p: ConnAck, version: int) -> bytes:
    # MQTT 3.1 has no session-present flag: the byte is reserved (0).
    body = bytes((1 if p.session_present and version > 3 else 0, p.reason_code))
    if version == 5:
        body += encode_properties(p.properties, PacketType.CONNACK)
    return _frame(0x20, body)


def encode_publish(p: Publish, version: int) -> bytes:
    """PUBLISH: the hot path, kept flat."""
    qos = p.qos
    try:
        topic = p.topic.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("topic holds a lone surrogate") from None
    n = len(topic)
    if n > 0xFFFF or b"\x00" in topic:
        raise ValidationError("topic longer than 65,535 bytes or holding U+0000")
    head = n.to_bytes(2, "big") + topic
    if qos:
        if qos > 2:
            raise ValidationError(f"QoS {qos}")
        head += _check_packet_id(p.packet_id).to_bytes(2, "big")
        first = 0x30 | (qos << 1) | (0x08 if p.dup else 0) | (1 if p.retain else 0)
    else:
        first = 0x31 if p.retain else 0x30
    if version == 5:
        head += encode_properties(p.properties, PacketType.PUBLISH) if p.properties else b"\x00"
    length = len(head) + len(p.payload)
    if length < 128:
        return bytes((first, length)) + head + p.payload
    return b"".join((bytes((first,)), encode_vbi(length), head, p.payload))


def encode_publish_plain(topic: str, payload: bytes, qos: int, retain: bool,
                         packet_id: int) -> bytes:
    """A v3/v4 QoS 1/2 PUBLISH, not DUP: ``encode_publish``'s bytes without a ``Publish``
    to build first.  A QoS 1/2 message's copy for each subscriber differs in its packet
    id alone, and one subscriber is the usual case: encoded whole, not as a template
    and a patch (core/wire.py)."""
    try:
        name = topic.encode("utf-8")
    except UnicodeEncodeError:
        name = b"\x00"  # (encode_publish says what is wrong with it)
    n = len(name)
    length = n + len(payload) + 4
    if (length < 128 and b"\x00" not in name and type(qos) is int and 0 < qos <= 2
            and type(packet_id) is int and 0 < packet_id <= 0xFFFF):
        return b"".join((bytes((0x30 | (qos << 1) | (1 if retain else 0), length, n >> 8,
                                n & 0xFF)), name, packet_id.to_bytes(2, "big"), payload))
    return encode_publish(Publish(topic, payload, qos, retain, False, packet_id, {}), 4)


def encode_publishes(topics: list[str], payloads: list[bytes], version: int,
                     retain: bool = True) -> bytes:
    """QoS 0 PUBLISHes without properties, one per topic and payload, in one buffer.

    A new subscription's retained messages go out a slice at a time, as one transport
    write rather than one per message (issue 19); the bytes are exactly those of
    ``encode_publish`` for each message, joined.  ``topics`` and ``payloads`` are
    equally long; an invalid topic raises what ``encode_publish`` raises for it."""
    if len(topics) != len(payloads):
        raise ValueError("topics and payloads differ in length")
    first = 0x31 if retain else 0x30
    props = b"\x00" if version == 5 else b""
    parts: list[bytes] = []
    append = parts.append
    for topic, payload in zip(topics, payloads):
        try:
            name = topic.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError("topic holds a lone surrogate") from None
        n = len(name)
        if n > 0xFFFF or b"\x00" in name:
            raise ValidationError("topic longer than 65,535 bytes or holding U+0000")
        length = 2 + n + len(props) + len(payload)
        append(bytes((first, length)) if length < 128 else bytes((first,)) + encode_vbi(length))
        append(n.to_bytes(2, "big") + name + props)
        append(payload)
    return b"".join(parts)


def _make_ack_encoder(packet_type: int, first_byte: int) -> Callable[[Packet, int], bytes]:
    def encode_ack(p: PubAck, version: int) -> bytes:
        packet_id = p.packet_id
        if version != 5 or (not p.reason_code and not p.properties):
            # The usual ack, checked inline (a QoS 2 message encodes three).
            if packet_id.__class__ is not int or not 0 < packet_id <= 0xFFFF:
                packet_id = _check_packet_id(packet_id)  # raises ValidationError
            return bytes((first_byte, 2, packet_id >> 8, packet_id & 0xFF))
        pid = _check_packet_id(packet_id).to_bytes(2, "big")
        if not p.properties:
            return bytes((first_byte, 3)) + pid + bytes((p.reason_code,))
        return _frame(
            first_byte,
            pid + bytes((p.reason_code,)) + encode_properties(p.properties, packet_type),
        )

    return encode_ack


def encode_subscribe(p: Subscribe, version: int) -> bytes:
    if not p.subscriptions:
        raise ValidationError("SUBSCRIBE needs at least one filter")
    parts = [_check_packet_id(p.packet_id).to_bytes(2, "big")]
    if version == 5:
        parts.append(encode_properties(p.properties, PacketType.SUBSCRIBE))
    for s in p.subscriptions:
        if s.qos not in (0, 1, 2) or s.retain_handling not in (0, 1, 2):
            raise ValidationError(f"bad subscription options {s!r}")
        options = s.qos
        if version == 5:
            options |= (
                (0x04 if s.no_local else 0)
                | (0x08 if s.retain_as_published else 0)
                | (s.retain_handling << 4)
            )
        parts.append(encode_string(s.topic_filter))
        parts.append(bytes((options,)))
    return _frame(0x82, b"".join(parts))


def encode_suback(p: SubAck, version: int) -> bytes:
    parts = [_check_packet_id(p.packet_id).to_bytes(2, "big")]
    if version == 5:
        parts.append(encode_properties(p.properties, PacketType.SUBACK))
    parts.append(bytes(p.reason_codes))
    return _frame(0x90, b"".join(parts))


def encode_unsubscribe(p: Unsubscribe, version: int) -> bytes:
    if not p.topic_filters:
        raise ValidationError("UNSUBSCRIBE needs at least one filter")
    parts = [_check_packet_id(p.packet_id).to_bytes(2, "big")]
    if version == 5:
        parts.append(encode_properties(p.properties, PacketType.UNSUBSCRIBE))
    parts.extend(encode_string(f) for f in p.topic_filters)
    return _frame(0xA2, b"".join(parts))


def encode_unsuback(p: UnsubAck, version: int) -> bytes:
    body = _check_packet_id(p.packet_id).to_bytes(2, "big")
    if version == 5:
        body += encode_properties(p.properties, PacketType.UNSUBACK) + bytes(p.reason_codes)
    return _frame(0xB0, body)


def encode_pingreq(p: PingReq, version: int) -> bytes:
    return b"\xc0\x00"


def encode_pingresp(p: PingResp, version: int) -> bytes:
    return b"\xd0\x00"


def _make_reason_encoder(packet_type: int, first_byte: int) -> Callable[[Packet, int], bytes]:
    def encode(p: Disconnect | Auth, version: int) -> bytes:
        if version != 5:
            if packet_type == PacketType.AUTH:
                raise ValidationError("AUTH exists only in MQTT 5.0")
            return bytes((first_byte, 0))
        if not p.reason_code and not p.properties:
            return bytes((first_byte, 0))
        body = bytes((p.reason_code,))
        if p.properties:
            body += encode_properties(p.properties, packet_type)
        return _frame(first_byte, body)

    return encode


ENCODERS: dict[type, Callable[[Packet, int], bytes]] = {
    Connect: encode_connect,
    ConnAck: encode_connack,
    Publish: encode_publish,
    PubAck: _make_ack_encoder(PacketType.PUBACK, 0x40),
    PubRec: _make_ack_encoder(PacketType.PUBREC, 0x50),
    PubRel: _make_ack_encoder(PacketType.PUBREL, 0x62),
    PubComp: _make_ack_encoder(PacketType.PUBCOMP, 0x70),
    Subscribe: encode_subscribe,
    SubAck: encode_suback,
    Unsubscribe: encode_unsubscribe,
    UnsubAck: encode_unsuback,
    PingReq: encode_pingreq,
    PingResp: encode_pingresp,
    Disconnect: _make_reason_encoder(PacketType.DISCONNECT, 0xE0),
    Auth: _make_reason_encoder(PacketType.AUTH, 0xF0),
}


def encode(packet: Packet, version: int = 4) -> bytes:
    """Encode ``packet`` for a stream speaking protocol ``version`` (3, 4 or 5)."""
    try:
        return ENCODERS[type(packet)](packet, version)
    except ValidationError:
        raise
    except (OverflowError, ValueError, TypeError) as e:  # a field out of its wire range
        raise ValidationError(f"cannot encode {packet!r}: {e}") from None
