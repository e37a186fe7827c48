"""Sans-IO tests of the packet limits that keep a hostile client from growing the broker's
memory or blocking its reactor: packet size (before and after CONNECT) and user
properties (issue 14, docs/limits.md)."""

from __future__ import annotations

import time

import pytest

from mqtt_twisted.codec import (
    Connect,
    DecodeLimits,
    Disconnect,
    Publish,
    StreamDecoder,
    decode_properties,
    encode,
    encode_properties,
    encode_vbi,
)
from mqtt_twisted.constants import PacketType
from mqtt_twisted.constants import PropertyId as P
from mqtt_twisted.constants import ReasonCode as RC
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.errors import PacketTooLarge
from mqtt_twisted.testing import FakeClient, make_broker

MiB = 1 << 20


def huge_connect_header(size: int) -> bytes:
    """The fixed header of a CONNECT announcing ``size`` bytes, and nothing more."""
    return b"\x10" + encode_vbi(size)


def user_properties_block(count: int) -> bytes:
    """A property block of ``count`` user properties ("k", "v"), 7 bytes each."""
    body = b"\x26\x00\x01k\x00\x01v" * count
    return encode_vbi(len(body)) + body


def test_defaults_suit_a_broker_on_the_internet() -> None:
    """1 MiB packets (EMQX), 64 KiB before CONNECT, 128 user properties / 64 KiB."""
    s = BrokerSettings()
    assert (s.max_packet_size, s.connect_packet_size) == (MiB, 64 << 10)
    assert (s.max_user_properties, s.max_user_property_bytes) == (128, 64 << 10)


def test_before_connect_the_smaller_limit_holds() -> None:
    """A server-side stream refuses a CONNECT over connect_packet_size from its header."""
    decoder = StreamDecoder(None, MiB, 64 << 10)
    with pytest.raises(PacketTooLarge):
        decoder.feed(huge_connect_header((64 << 10) + 1))
    assert decoder.buffered == 0


def test_an_incomplete_length_that_already_says_too_much_is_refused() -> None:
    """Three bytes of a four-byte length announcing >= 2 MiB are enough to refuse."""
    decoder = StreamDecoder(None, MiB, 64 << 10)
    with pytest.raises(PacketTooLarge):
        decoder.feed(b"\x10\xff\xff\xff")


def test_after_connect_the_packet_limit_holds() -> None:
    """Once CONNECT is decoded, packets up to max_packet_size pass, in the same chunk too."""
    decoder = StreamDecoder(None, MiB, 64 << 10)
    big = encode(Publish("t", bytes(200_000)), 4)
    packets = decoder.feed(encode(Connect("c", 4), 4) + big)
    assert [type(p) for p in packets] == [Connect, Publish]
    with pytest.raises(PacketTooLarge):
        decoder.feed(b"\x30" + encode_vbi(MiB))


def test_a_refused_packet_releases_what_was_buffered() -> None:
    """After an error the decoder holds no bytes (the connection closes anyway)."""
    decoder = StreamDecoder(4, 1000)
    decoder.feed(encode(Publish("t", bytes(900)), 4)[:500])
    assert decoder.buffered == 500
    with pytest.raises(PacketTooLarge):
        decoder.feed(encode(Publish("t", bytes(900)), 4)[500:] + b"\x30\xff\x7f")
    assert decoder.buffered == 0


def test_broker_closes_a_peer_announcing_a_huge_connect() -> None:
    """Before CONNECT a packet over 64 KiB closes the socket: no CONNACK, nothing kept."""
    broker, _ = make_broker()
    c = FakeClient(broker, 5)
    c.send_bytes(huge_connect_header(255 * MiB))
    assert c.transport.closed and c.transport.written == b""
    assert c.connection.decoder.buffered == 0


def test_a_large_connect_fits_an_operator_limit() -> None:
    """--connect-packet-size raises the limit for CONNECTs with big passwords, say."""
    broker, _ = make_broker(BrokerSettings(connect_packet_size=200_000))
    c = FakeClient(broker, 4)
    assert c.connect("c", username="u", password=bytes(65_000))[0].reason_code == 0


def test_v5_publish_over_1_mib_is_disconnect_0x95() -> None:
    """By default a 2 MiB PUBLISH ends the connection with DISCONNECT 0x95; CONNACK
    told the client the maximum."""
    broker, _ = make_broker()
    c = FakeClient(broker, 5)
    assert c.connect("c")[0].properties[P.MAXIMUM_PACKET_SIZE] == MiB
    out = c.publish("t", bytes(2 * MiB))
    assert isinstance(out[-1], Disconnect) and out[-1].reason_code == RC.PACKET_TOO_LARGE
    assert c.connection.decoder.buffered == 0


def test_protocol_maximum_is_available_by_option() -> None:
    """max_packet_size=268435460 accepts a 2 MiB PUBLISH, and CONNACK then names no limit."""
    broker, _ = make_broker(BrokerSettings(max_packet_size=268_435_460))
    sub, pub = FakeClient(broker, 5), FakeClient(broker, 5)
    assert P.MAXIMUM_PACKET_SIZE not in sub.connect("s")[0].properties
    sub.subscribe("t")
    pub.connect("p")
    pub.publish("t", bytes(2 * MiB))
    assert [len(p.payload) for p in sub.received()] == [2 * MiB]


def test_user_properties_within_the_limits_are_decoded() -> None:
    """128 user properties decode; the 129th is refused before the list grows further."""
    block = user_properties_block(128)
    props, _ = decode_properties(block, 0, len(block), PacketType.PUBLISH, DecodeLimits(128))
    assert len(props[P.USER_PROPERTY]) == 128
    block = user_properties_block(129)
    with pytest.raises(PacketTooLarge):
        decode_properties(block, 0, len(block), PacketType.PUBLISH, DecodeLimits(128))


def test_user_property_bytes_are_limited() -> None:
    """The bytes of names and values count with their length prefixes: 10 x 6 > 59."""
    block = user_properties_block(10)
    with pytest.raises(PacketTooLarge):
        decode_properties(block, 0, len(block), PacketType.CONNECT, DecodeLimits(128, 59))
    props, _ = decode_properties(block, 0, len(block), PacketType.CONNECT, DecodeLimits(128, 60))
    assert len(props[P.USER_PROPERTY]) == 10


def test_a_million_user_properties_cost_the_reactor_little() -> None:
    """A CONNECT of 1,000,000 user properties (7 MB, under an operator's large packet
    limit) is refused after 129 of them: well under 50 ms, where decoding all took
    over a second."""
    settings = BrokerSettings(max_packet_size=268_435_460, connect_packet_size=268_435_460)
    broker, _ = make_broker(settings)
    c = FakeClient(broker, 5)
    wire = encode(Connect("c", 5, properties={P.USER_PROPERTY: [("k", "v")] * 1_000_000}), 5)
    started = time.perf_counter()
    c.send_bytes(wire)
    assert time.perf_counter() - started < 0.05
    assert c.transport.closed and c.transport.written == b""  # before CONNACK: just close


def test_v5_publish_with_too_many_user_properties_is_disconnect_0x95() -> None:
    """After CONNECT the refusal is a DISCONNECT 0x95 naming the limit."""
    broker, _ = make_broker(BrokerSettings(max_user_properties=2))
    c = FakeClient(broker, 5)
    c.connect("c")
    assert c.publish("t", b"", properties={P.USER_PROPERTY: [("a", "b")] * 2}) == []
    out = c.publish("t", b"", properties={P.USER_PROPERTY: [("a", "b")] * 3})
    assert isinstance(out[-1], Disconnect) and out[-1].reason_code == RC.PACKET_TOO_LARGE


def test_encoded_user_properties_round_trip_within_limits() -> None:
    """The encoder's blocks decode under the default limits (no false refusals)."""
    block = encode_properties({P.USER_PROPERTY: [("name", "value")] * 128}, PacketType.PUBLISH)
    props, _ = decode_properties(block, 0, len(block), PacketType.PUBLISH, DecodeLimits(128))
    assert props[P.USER_PROPERTY][-1] == ("name", "value")


def test_zero_user_property_limits_mean_no_limit() -> None:
    """0 turns both user property limits off."""
    limits = BrokerSettings(max_user_properties=0, max_user_property_bytes=0).decode_limits()
    block = user_properties_block(1000)
    props, _ = decode_properties(block, 0, len(block), PacketType.PUBLISH, limits)
    assert len(props[P.USER_PROPERTY]) == 1000
