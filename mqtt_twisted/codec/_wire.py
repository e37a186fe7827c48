"""Wire primitives: variable byte integers, strings and binary data.

Decoders work on ``bytes`` plus explicit offsets so that a packet is parsed in
place inside the chunk it arrived in; nothing copies the buffer to advance.
"""

from __future__ import annotations

from mqtt_twisted.constants import MAX_REMAINING_LENGTH, MAX_STRING_LENGTH
from mqtt_twisted.errors import MalformedPacket, ValidationError


def decode_vbi(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Decode a variable byte integer at ``pos``; return (value, next offset).

    At most four bytes, and the shortest form only [MQTT-1.5.5-1].
    """
    value = 0
    shift = 0
    for i in range(4):
        if pos >= end:
            raise MalformedPacket("variable byte integer runs past the packet")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and i:
                raise MalformedPacket("variable byte integer is not in its shortest form")
            return value, pos
        shift += 7
    raise MalformedPacket("variable byte integer longer than four bytes")


def encode_vbi(value: int) -> bytes:
    """Encode ``value`` (0 .. 268,435,455) as a variable byte integer."""
    if value < 128:
        if value < 0:
            raise ValidationError(f"variable byte integer out of range: {value}")
        return bytes((value,))
    if value > MAX_REMAINING_LENGTH:
        raise ValidationError(f"variable byte integer out of range: {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_binary(buf: bytes, pos: int, end: int) -> tuple[bytes, int]:
    """Decode two-byte-length-prefixed binary data."""
    if pos + 2 > end:
        raise MalformedPacket("length prefix runs past the packet")
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise MalformedPacket("binary data runs past the packet")
    return bytes(buf[pos + 2 : stop]), stop


def decode_string(buf: bytes, pos: int, end: int) -> tuple[str, int]:
    """Decode a UTF-8 string: well-formed, no surrogates, no U+0000 [MQTT-1.5.4-1..2]."""
    if pos + 2 > end:
        raise MalformedPacket("length prefix runs past the packet")
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise MalformedPacket("string runs past the packet")
    try:
        # The strict codec rejects overlong forms and encoded surrogates.
        text = str(buf[pos + 2 : stop], "utf-8")
    except UnicodeDecodeError as e:
        raise MalformedPacket(f"string is not well-formed UTF-8: {e.reason}") from None
    if "\x00" in text:
        raise MalformedPacket("string contains U+0000")
    return text, stop


def encode_binary(data: bytes) -> bytes:
    """Two-byte length prefix plus data."""
    n = len(data)
    if n > MAX_STRING_LENGTH:
        raise ValidationError("binary data longer than 65,535 bytes")
    return n.to_bytes(2, "big") + data


def encode_string(text: str) -> bytes:
    """Two-byte length prefix plus the UTF-8 bytes of ``text``."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("string holds a lone surrogate") from None
    n = len(data)
    if n > MAX_STRING_LENGTH:
        raise ValidationError("string longer than 65,535 bytes when encoded")
    if "\x00" in text:
        raise ValidationError("string contains U+0000")
    return n.to_bytes(2, "big") + data
