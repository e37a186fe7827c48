"""Hand-encoded MQTT 3.1.1 packets and a minimal incremental reader for the load generator.

Why by hand rather than with ``mqtt_twisted.codec``: the load generator drives four different
brokers, so it must not depend on (or be slowed or broken by) the broker under test, and the
few packets it needs are a handful of bytes each.  Everything here works on ``bytes`` and
``bytearray``: encoding happens once at setup, and the hot path only patches a timestamp
into a pre-encoded batch or walks fixed headers.

Payload layout of every benchmark message (at least 16 bytes)::

    [0:8]   send time, ``time.monotonic_ns()`` (big-endian u64; CLOCK_MONOTONIC is system-wide
            on Linux, so a subscriber process can compare it with its own clock)
    [8:12]  sequence number (u32)
    [12:16] publisher index (u32)
    [16:]   padding
"""

from __future__ import annotations

import struct

PAYLOAD_HEADER = struct.Struct(">QII")  # send time ns, sequence number, publisher index
TIMESTAMP = struct.Struct(">Q")
PACKET_ID = struct.Struct(">H")

CONNACK_LEN = 4
PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"

# First byte of each control packet type this tool reads (flags masked off by the caller).
PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK = 3, 4, 5, 6, 7, 9


def vbi(n: int) -> bytes:
    """Encode a Variable Byte Integer (the fixed header's remaining length)."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_string(s: str | bytes) -> bytes:
    """A length-prefixed UTF-8 string."""
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(b)) + b


def connect(client_id: str, keepalive: int = 0, clean: bool = True) -> bytes:
    """CONNECT (MQTT 3.1.1, no will, no credentials); keep alive 0 means never time out."""
    body = mqtt_string("MQTT") + bytes([4, 0x02 if clean else 0]) + struct.pack(">H", keepalive)
    body += mqtt_string(client_id)
    return b"\x10" + vbi(len(body)) + body


def subscribe(packet_id: int, filters: list[str], qos: int) -> bytes:
    """One SUBSCRIBE carrying every filter in ``filters`` at ``qos``."""
    body = struct.pack(">H", packet_id) + b"".join(mqtt_string(f) + bytes([qos]) for f in filters)
    return b"\x82" + vbi(len(body)) + body


def publish(topic: str, payload: bytes, qos: int = 0, packet_id: int = 0,
            retain: bool = False) -> bytes:
    """One PUBLISH; ``packet_id`` is used only when ``qos`` > 0."""
    body = mqtt_string(topic) + (struct.pack(">H", packet_id) if qos else b"") + payload
    return bytes([0x30 | (qos << 1) | int(retain)]) + vbi(len(body)) + body


def payload(size: int, seq: int = 0, publisher: int = 0) -> bytes:
    """A benchmark payload of ``size`` bytes (timestamp 0, to be patched before sending)."""
    head = PAYLOAD_HEADER.pack(0, seq, publisher)
    if size < len(head):
        raise ValueError(f"payload must hold at least {len(head)} bytes")
    return head + b"\xa5" * (size - len(head))


def payload_offset(packet: bytes) -> int:
    """Offset of the payload inside one encoded PUBLISH (where the timestamp goes)."""
    pos = 1
    while packet[pos] & 0x80:
        pos += 1
    pos += 1
    topic_len = (packet[pos] << 8) | packet[pos + 1]
    pos += 2 + topic_len
    if packet[0] & 0x06:
        pos += 2
    return pos


def ack(kind: int, packet_id_bytes: bytes) -> bytes:
    """PUBACK / PUBREC / PUBREL / PUBCOMP for a 2-byte packet identifier."""
    first = (kind << 4) | (0x02 if kind == PUBREL else 0)
    return bytes((first, 2)) + packet_id_bytes


def count_publishes(buf: bytes | bytearray, pos: int = 0) -> tuple[int, int]:
    """Count the whole PUBLISH packets in ``buf[pos:]``; return ``(count, next_pos)``.

    The hot loop of every throughput subscriber.  When the packets ahead are all the same
    QoS 0 PUBLISH size (the common case: one topic length, one payload size), a strided slice
    checks all their first two bytes at C speed; by induction every one of them is a whole
    packet of that size.  Otherwise it walks fixed headers one by one.  Non-PUBLISH packets
    (SUBACK, PINGRESP) are skipped, not counted.
    """
    end = len(buf)
    count = 0
    while end - pos >= 2:
        first = buf[pos]
        rl = buf[pos + 1]
        if rl < 128 and (first & 0xF6) == 0x30:
            size = rl + 2
            k = (end - pos) // size
            if k > 1:
                stop = pos + k * size
                if buf[pos:stop:size].count(first) == k and buf[pos + 1:stop:size].count(rl) == k:
                    count += k
                    pos = stop
                    continue
            return _count_slow(buf, pos, end, count)
        return _count_slow(buf, pos, end, count)
    return count, pos


def _count_slow(buf: bytes | bytearray, pos: int, end: int, count: int) -> tuple[int, int]:
    """Header-by-header walk for mixed packet sizes (the fallback of ``count_publishes``)."""
    while end - pos >= 2:
        rl = buf[pos + 1]
        head = 2
        if rl & 0x80:
            rl, head = _long_length(buf, pos, end)
            if rl < 0:
                break
        nxt = pos + head + rl
        if nxt > end:
            break
        if buf[pos] >> 4 == PUBLISH:
            count += 1
        pos = nxt
    return count, pos


def _long_length(buf: bytes | bytearray, pos: int, end: int) -> tuple[int, int]:
    """Decode a multi-byte remaining length at ``buf[pos+1:]``: ``(length, header size)``.

    Returns ``(-1, 0)`` when the length itself is not all there yet.
    """
    value, shift, i = 0, 0, pos + 1
    while i < end:
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value, i - pos
        shift += 7
    return -1, 0


def split(buf: bytes | bytearray) -> tuple[list[tuple[int, int, int]], int]:
    """The whole packets in ``buf`` as ``(first_byte, body_start, end)``, and where the
    incomplete rest starts.

    The general reader for the QoS 1/2, latency and sequence-checking subscribers, which
    need to look inside packets (packet identifiers, payload timestamps).
    """
    found = []
    pos, end = 0, len(buf)
    while end - pos >= 2:
        rl = buf[pos + 1]
        head = 2
        if rl & 0x80:
            rl, head = _long_length(buf, pos, end)
            if rl < 0:
                break
        nxt = pos + head + rl
        if nxt > end:
            break
        found.append((buf[pos], pos + head, nxt))
        pos = nxt
    return found, pos


def publish_parts(buf: bytes | bytearray, first: int, body: int) -> tuple[int, int]:
    """For a PUBLISH whose body starts at ``body``: ``(packet id offset or -1, payload start)``."""
    topic_len = (buf[body] << 8) | buf[body + 1]
    pos = body + 2 + topic_len
    if first & 0x06:
        return pos, pos + 2
    return -1, pos
