"""Fuzzing the framer and decoders: hostile bytes only ever raise our protocol errors.

Whatever arrives, ``StreamDecoder.feed`` either returns packets or raises a
:class:`~mqtt_twisted.errors.ProtocolError` subclass (which carries the reason
code to answer with); never ``IndexError``, ``UnicodeError``, ``struct.error``,
``RecursionError`` or a bare ``ValueError``.  It never holds more than
``max_packet_size`` bytes, and every packet it does return re-encodes to bytes
that decode to the same packet.

The default run takes a few seconds; ``pytest -m slow`` adds a 100,000-case
seeded run.
"""

from __future__ import annotations

import random
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqtt_twisted.codec import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    StreamDecoder,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
    _accel,
    decode,
    encode,
)
from mqtt_twisted.codec import stream as stream_module
from mqtt_twisted.constants import PropertyId
from mqtt_twisted.errors import MQTTError, PacketTooLarge, ProtocolError
from tests.codecimpl import codec_impl  # noqa: F401  (pure and compiled)

P = PropertyId
LIMIT = 512  # max_packet_size for fuzzing: small, so that size checks are exercised


def seed_packets(version: int) -> list:
    """Valid packets of every type, with every kind of field and property, for ``version``."""
    v5 = version == 5

    def props(**kw):
        return {P[k]: v for k, v in kw.items()} if v5 else {}

    user = [("k", "v"), ("k", "\u00e9")]
    packets = [
        Connect(client_id="c1", protocol_level=version, keep_alive=30),
        Connect(
            client_id="fuzz", protocol_level=version, clean_start=False, keep_alive=0xFFFF,
            will=Will("w/t", b"bye", 2, True, props(
                WILL_DELAY_INTERVAL=5, PAYLOAD_FORMAT_INDICATOR=1, MESSAGE_EXPIRY_INTERVAL=9,
                CONTENT_TYPE="text/plain", RESPONSE_TOPIC="r/t", CORRELATION_DATA=b"\x00c",
                USER_PROPERTY=user)),
            username="user", password=b"pw\x00\xff",
            properties=props(
                SESSION_EXPIRY_INTERVAL=60, RECEIVE_MAXIMUM=10, MAXIMUM_PACKET_SIZE=1024,
                TOPIC_ALIAS_MAXIMUM=5, REQUEST_RESPONSE_INFORMATION=1,
                REQUEST_PROBLEM_INFORMATION=0, AUTHENTICATION_METHOD="SCRAM",
                AUTHENTICATION_DATA=b"\x01", USER_PROPERTY=user),
        ),
        ConnAck(True, 0, props(
            SESSION_EXPIRY_INTERVAL=10, RECEIVE_MAXIMUM=20, MAXIMUM_QOS=1, RETAIN_AVAILABLE=0,
            MAXIMUM_PACKET_SIZE=4096, ASSIGNED_CLIENT_IDENTIFIER="auto-1",
            TOPIC_ALIAS_MAXIMUM=3, REASON_STRING="ok", WILDCARD_SUBSCRIPTION_AVAILABLE=1,
            SUBSCRIPTION_IDENTIFIER_AVAILABLE=1, SHARED_SUBSCRIPTION_AVAILABLE=1,
            SERVER_KEEP_ALIVE=60, RESPONSE_INFORMATION="ri", SERVER_REFERENCE="other",
            AUTHENTICATION_METHOD="m", AUTHENTICATION_DATA=b"d", USER_PROPERTY=user)),
        Publish("a/b", b"payload"),
        Publish("sensors/\u2603/t", bytes(range(40)), 1, True, True, 7, props(
            PAYLOAD_FORMAT_INDICATOR=0, MESSAGE_EXPIRY_INTERVAL=3600, TOPIC_ALIAS=2,
            RESPONSE_TOPIC="reply", CORRELATION_DATA=b"id", USER_PROPERTY=user,
            SUBSCRIPTION_IDENTIFIER=[1, 300, 70_000], CONTENT_TYPE="json")),
        Publish("x", b"", 2, packet_id=0xFFFF),
        Publish("big", bytes(200), 1, packet_id=3),  # a 2-byte remaining length
        PubAck(1), PubRec(2), PubRel(3), PubComp(4),
        Subscribe(5, [
            Subscription("a/+", 1, v5, v5, 2 if v5 else 0),
            Subscription("$share/g/#", 2), Subscription("#", 0),
        ], props(SUBSCRIPTION_IDENTIFIER=9, USER_PROPERTY=user)),
        SubAck(5, [0, 1, 2, 0x80]),
        Unsubscribe(6, ["a/+", "#"], props(USER_PROPERTY=user)),
        UnsubAck(6, [0, 0x11] if v5 else []),
        PingReq(), PingResp(), Disconnect(),
    ]
    if v5:
        packets += [
            PubAck(1, 0x10, {P.REASON_STRING: "none", P.USER_PROPERTY: user}),
            PubRec(2, 0x97), PubRel(3, 0x92, {P.REASON_STRING: "?"}), PubComp(4, 0x92),
            SubAck(5, [0x8F, 0xA2], {P.REASON_STRING: "no"}),
            Disconnect(0x8B, {P.SESSION_EXPIRY_INTERVAL: 0, P.SERVER_REFERENCE: "s",
                              P.REASON_STRING: "bye"}),
            Auth(), Auth(0x18, {P.AUTHENTICATION_METHOD: "SCRAM",
                                P.AUTHENTICATION_DATA: b"\x00" * 20}),
        ]
    return packets


# (decoder version, bytes) pairs: client-side streams of any packet, and server-side streams
# that start with a CONNECT.
CORPUS: list[tuple[int | None, bytes]] = []
for _version in (3, 4, 5):
    _seeds = [encode(p, _version) for p in seed_packets(_version)]
    CORPUS += [(_version, wire) for wire in _seeds]
    CORPUS += [(None, _seeds[1] + wire) for wire in _seeds[2:]]
    CORPUS.append((_version, b"".join(_seeds)))
del _version, _seeds


def check_stream(chunks: list[bytes], version: int | None, limit: int = LIMIT) -> list:
    """Feed ``chunks``; fail on any error that is not a ProtocolError or on over-buffering.

    Returns the packets decoded before the stream ended or was refused.
    """
    decoder = StreamDecoder(version, max_packet_size=limit)
    got = []
    try:
        for chunk in chunks:
            packets = decoder.feed(chunk)
            assert decoder.buffered <= limit
            for packet in packets:
                check_re_encodes(packet, decoder.version)
            got.extend(packets)
    except MQTTError as e:
        # Every decoding error maps to a reason code for CONNACK/DISCONNECT.
        assert isinstance(e, ProtocolError), repr(e)
        assert 0x80 <= e.reason_code <= 0xA2
        for packet in e.packets:
            check_re_encodes(packet, decoder.version)
        got.extend(e.packets)
    return got


def check_re_encodes(packet, version: int) -> None:
    """Whatever the decoder accepts, the encoder writes back and the decoder reads again."""
    if isinstance(packet, Connect):
        version = packet.protocol_level
    assert decode(encode(packet, version), version) == packet


def mutate(rng: random.Random, wire: bytes, count: int) -> bytes:
    """Apply ``count`` random byte-level mutations to ``wire``."""
    data = bytearray(wire)
    for _ in range(count):
        op = rng.randrange(7)
        i = rng.randrange(len(data) + 1)
        if op == 0 and data:  # flip one bit
            i %= len(data)
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and data:  # overwrite a byte, biased towards interesting values
            data[i % len(data)] = rng.choice((0x00, 0x01, 0x02, 0x7F, 0x80, 0xFF,
                                              rng.randrange(256)))
        elif op == 2:  # insert a byte
            data.insert(i, rng.randrange(256))
        elif op == 3 and data:  # delete a run
            del data[i : i + rng.randrange(1, 4)]
        elif op == 4:  # truncate
            del data[i:]
        elif op == 5:  # duplicate a slice
            j = rng.randrange(len(data) + 1)
            data[i:i] = data[min(i, j) : max(i, j)][:32]
        else:  # insert a long run of 0xFF (continuation bits, huge lengths)
            data[i:i] = b"\xff" * rng.randrange(1, 6)
    return bytes(data)


def random_chunks(rng: random.Random, data: bytes) -> list[bytes]:
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(4)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in pairwise(bounds)]


FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(version=st.sampled_from([None, 3, 4, 5]), data=st.binary(max_size=600),
       seed=st.integers(0, 2**32))
def test_random_bytes_raise_only_protocol_errors(version, data, seed):
    """Arbitrary bytes, cut anywhere, give packets or a ProtocolError and nothing else."""
    check_stream(random_chunks(random.Random(seed), data), version)


@FUZZ
@given(case=st.sampled_from(CORPUS), seed=st.integers(0, 2**32), count=st.integers(1, 5))
def test_mutated_packets_raise_only_protocol_errors(case, seed, count):
    """Valid packets with bits flipped, bytes inserted, cut or repeated fail only cleanly."""
    version, wire = case
    rng = random.Random(seed)
    check_stream(random_chunks(rng, mutate(rng, wire, count)), version)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(CORPUS), data=st.data())
def test_hypothesis_driven_edits_raise_only_protocol_errors(case, data):
    """Edits chosen by hypothesis (so it can shrink them) also fail only cleanly."""
    version, wire = case
    edits = data.draw(st.lists(st.tuples(st.integers(0, len(wire)), st.integers(0, 255)),
                               min_size=1, max_size=4))
    buf = bytearray(wire)
    for index, value in edits:
        if index < len(buf):
            buf[index] = value
        else:
            buf.append(value)
    cut = data.draw(st.integers(0, len(buf)))
    check_stream([bytes(buf[:cut]), bytes(buf[cut:])], version)


@given(limit=st.integers(16, 4096), data=st.data())
@settings(max_examples=150, deadline=None)
def test_never_buffers_more_than_max_packet_size(limit, data):
    """However a stream is cut, buffered bytes never exceed max_packet_size."""
    size = data.draw(st.integers(0, 3 * limit))
    wire = encode(Publish("t", bytes(size)), 4)
    stream = wire * 2
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    bounds = [0, *sorted(cuts), len(stream)]
    decoder = StreamDecoder(4, max_packet_size=limit)
    try:
        for a, b in pairwise(bounds):
            decoder.feed(stream[a:b])
            assert decoder.buffered <= limit
    except PacketTooLarge:
        assert len(wire) > limit  # refused only when the packet really is too large
    else:
        assert len(wire) <= limit


def test_oversized_header_is_refused_without_waiting_for_the_body():
    """The header of a too-large packet is refused at once, even when fed a byte at a time."""
    decoder = StreamDecoder(5, max_packet_size=1000)
    header = bytes.fromhex("32 ff ff ff 7f")  # PUBLISH claiming 268,435,455 bytes
    with pytest.raises(PacketTooLarge):
        for i in range(len(header)):
            decoder.feed(header[i : i + 1])
            assert decoder.buffered < 5


class _JoinCounter(list):
    """A list that counts the bytes ``b"".join`` copies out of it."""

    copied = 0

    def __iter__(self):
        for item in list.__iter__(self):
            _JoinCounter.copied += len(item)
            yield item


class _CountingDecoder(StreamDecoder):
    """A StreamDecoder whose pending-chunk list counts the bytes joined from it."""

    __slots__ = ("_counted",)

    @property
    def _pending(self):
        return self._counted

    @_pending.setter
    def _pending(self, value):
        self._counted = _JoinCounter(value)


def test_large_publish_in_small_chunks_is_linear(monkeypatch):
    """An 8 MiB PUBLISH fed in 4 KiB chunks is joined once and parsed once: linear work."""
    calls = []
    real_decode_body = stream_module.decode_body

    def counting_decode_body(*args):
        calls.append(args[0])
        return real_decode_body(*args)

    monkeypatch.setattr(stream_module, "decode_body", counting_decode_body)
    _JoinCounter.copied = 0
    payload = bytes(range(256)) * (8 * 1024 * 4)  # 8 MiB
    wire = encode(Publish("big/file", payload, 1, packet_id=1), 5)
    decoder = _CountingDecoder(5)
    got = []
    for i in range(0, len(wire), 4096):
        got.extend(decoder.feed(wire[i : i + 4096]))
    assert len(got) == 1
    assert got[0].payload == payload
    if not _accel.compiled_in_use():  # (the compiled framer decodes PUBLISH bodies itself)
        assert calls == [0x32]  # the body is decoded once, when its last byte arrives
    # The chunks are copied into one buffer once; a quadratic framer would copy ~1000x.
    assert len(wire) <= _JoinCounter.copied < 3 * len(wire)


@pytest.mark.slow
def test_seeded_run_of_300k_mutated_packets():
    """300,000 seeded mutations of the corpus and 50,000 random streams fail only cleanly."""
    rng = random.Random(20_240_601)
    decoded = 0
    for _ in range(300_000):
        version, wire = rng.choice(CORPUS)
        mutated = mutate(rng, wire, rng.randrange(1, 6))
        decoded += len(check_stream(random_chunks(rng, mutated), version))
    for _ in range(50_000):
        data = rng.randbytes(rng.randrange(0, 300))
        check_stream(random_chunks(rng, data), rng.choice((None, 3, 4, 5)))
    assert decoded > 30_000  # the mutations leave plenty of packets that still decode


@pytest.mark.slow
@settings(max_examples=50_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(CORPUS), seed=st.integers(0, 2**64), count=st.integers(1, 8))
def test_mutated_packets_long_hypothesis_run(case, seed, count):
    """A longer hypothesis run of corpus mutations (slow marker) fails only cleanly."""
    version, wire = case
    rng = random.Random(seed)
    check_stream(random_chunks(rng, mutate(rng, wire, count)), version)
