"""Property tests: every packet survives encode -> StreamDecoder, however the bytes are cut.

Strategies generate only packets a version can carry: for MQTT 3.1 and 3.1.1
the fields that exist only in 5.0 (properties, most reason codes, subscription
options other than QoS, UNSUBACK reason codes) stay at their defaults.
"""

from __future__ import annotations

from itertools import pairwise

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqtt_twisted.codec import (
    PROPERTY_SPECS,
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
    decode,
    encode,
)
from mqtt_twisted.codec.properties import (
    BINARY,
    BYTE,
    FOUR_BYTE,
    STRING,
    STRING_PAIR,
    TWO_BYTE,
    VBI,
)
from mqtt_twisted.constants import (
    ALLOWED_REASON_CODES,
    MAX_REMAINING_LENGTH,
    WILL_PROPERTIES,
    PacketType,
    PropertyId,
)

VERSIONS = (3, 4, 5)

# Written out from the spec rather than imported, so that the codec's own tables are tested.
# Byte properties whose only valid values are 0 and 1 (3.1.2.11.6-7, 3.2.2.3.4-5, 3.2.2.3.11-13,
# 3.3.2.3.2).
BOOLEAN_PROPERTIES = frozenset({
    PropertyId.PAYLOAD_FORMAT_INDICATOR, PropertyId.REQUEST_PROBLEM_INFORMATION,
    PropertyId.REQUEST_RESPONSE_INFORMATION, PropertyId.MAXIMUM_QOS,
    PropertyId.RETAIN_AVAILABLE, PropertyId.WILDCARD_SUBSCRIPTION_AVAILABLE,
    PropertyId.SUBSCRIPTION_IDENTIFIER_AVAILABLE, PropertyId.SHARED_SUBSCRIPTION_AVAILABLE,
})
# Properties for which 0 is a Protocol Error (3.1.2.11.3-4, 3.3.2.3.4, 3.3.2.3.8).
NON_ZERO_PROPERTIES = frozenset({
    PropertyId.RECEIVE_MAXIMUM, PropertyId.MAXIMUM_PACKET_SIZE, PropertyId.TOPIC_ALIAS,
    PropertyId.SUBSCRIPTION_IDENTIFIER,
})

# UTF-8 strings: no surrogates (Cs) and no U+0000 [MQTT-1.5.4-1] [MQTT-1.5.4-2].
CHARS = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
TEXT = st.text(CHARS, max_size=12)
LEVEL = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00/+#"),
                max_size=6)
# A topic name: non-empty, no wildcards [MQTT-4.7.3-1] [MQTT-3.3.2-2].
TOPIC_NAME = st.lists(LEVEL, min_size=1, max_size=4).map("/".join).filter(bool)
TOPIC_FILTER = st.lists(st.one_of(LEVEL, st.just("+")), min_size=1, max_size=4).flatmap(
    lambda levels: st.sampled_from(["/".join(levels), "/".join([*levels, "#"])])
).filter(bool)
PACKET_ID = st.integers(1, 0xFFFF)
PAYLOAD = st.binary(max_size=64)


def property_value(ident: int, packet_type: int) -> st.SearchStrategy:
    """Values of one property that a receiver must accept."""
    kind = PROPERTY_SPECS[ident][0]
    low = 1 if ident in NON_ZERO_PROPERTIES else 0
    if ident in BOOLEAN_PROPERTIES:
        value: st.SearchStrategy = st.integers(0, 1)
    elif kind == BYTE:
        value = st.integers(0, 0xFF)
    elif kind == TWO_BYTE:
        value = st.integers(low, 0xFFFF)
    elif kind == FOUR_BYTE:
        value = st.integers(low, 0xFFFF_FFFF)
    elif kind == VBI:
        value = st.integers(low, MAX_REMAINING_LENGTH)
    elif kind == STRING:
        value = TEXT
    elif kind == BINARY:
        value = st.binary(max_size=16)
    else:
        assert kind == STRING_PAIR
        value = st.tuples(TEXT, TEXT)
    repeatable = ident == PropertyId.USER_PROPERTY or (
        ident == PropertyId.SUBSCRIPTION_IDENTIFIER and packet_type == PacketType.PUBLISH
    )
    return st.lists(value, min_size=1, max_size=3) if repeatable else value


def properties(packet_type: int, version: int) -> st.SearchStrategy:
    """Any subset of the properties allowed in ``packet_type``; always empty before v5."""
    if version != 5:
        return st.just({})
    allowed = {
        PropertyId(ident): property_value(ident, packet_type)
        for ident, (_, packets) in PROPERTY_SPECS.items()
        if packet_type in packets
    }
    assert allowed, packet_type
    return st.fixed_dictionaries({}, optional=allowed)


def reason_code(packet_type: int, version: int) -> st.SearchStrategy:
    """A reason code valid in ``packet_type`` for v5; 0 (the only value on the wire) before."""
    if version != 5:
        return st.just(0)
    return st.sampled_from(sorted(ALLOWED_REASON_CODES[packet_type]))


@st.composite
def connects(draw, version: int) -> Connect:
    will = None
    if draw(st.booleans()):
        will = Will(
            draw(TOPIC_NAME), draw(PAYLOAD), draw(st.integers(0, 2)), draw(st.booleans()),
            draw(properties(WILL_PROPERTIES, version)),
        )
    username = draw(st.none() | TEXT)
    password = draw(st.none() | st.binary(max_size=16))
    if version < 5 and username is None:
        password = None  # [MQTT-3.1.2-22]
    return Connect(
        client_id=draw(TEXT), protocol_level=version, clean_start=draw(st.booleans()),
        keep_alive=draw(st.integers(0, 0xFFFF)), will=will, username=username,
        password=password, properties=draw(properties(PacketType.CONNECT, version)),
    )


@st.composite
def connacks(draw, version: int) -> ConnAck:
    code = (draw(reason_code(PacketType.CONNACK, version)) if version == 5
            else draw(st.integers(0, 5)))
    # MQTT 3.1 has no session-present flag (its first CONNACK byte is reserved).
    present = draw(st.booleans()) if version > 3 else False
    return ConnAck(present, code, draw(properties(PacketType.CONNACK, version)))


@st.composite
def publishes(draw, version: int) -> Publish:
    qos = draw(st.integers(0, 2))
    props = draw(properties(PacketType.PUBLISH, version))
    topic = draw(TOPIC_NAME)
    if PropertyId.TOPIC_ALIAS in props and draw(st.booleans()):
        topic = ""  # a v5 topic alias may stand for the topic name
    return Publish(
        topic=topic, payload=draw(PAYLOAD), qos=qos, retain=draw(st.booleans()),
        dup=draw(st.booleans()) if qos else False,  # [MQTT-3.3.1-2]
        packet_id=draw(PACKET_ID) if qos else None, properties=props,
    )


def acks(cls: type, packet_type: int, version: int) -> st.SearchStrategy:
    return st.builds(
        cls, PACKET_ID, reason_code(packet_type, version), properties(packet_type, version)
    )


@st.composite
def subscribes(draw, version: int) -> Subscribe:
    subs = []
    for _ in range(draw(st.integers(1, 4))):
        if version == 5:
            subs.append(Subscription(
                draw(TOPIC_FILTER), draw(st.integers(0, 2)), draw(st.booleans()),
                draw(st.booleans()), draw(st.integers(0, 2)),
            ))
        else:
            subs.append(Subscription(draw(TOPIC_FILTER), draw(st.integers(0, 2))))
    return Subscribe(draw(PACKET_ID), subs, draw(properties(PacketType.SUBSCRIBE, version)))


@st.composite
def subacks(draw, version: int) -> SubAck:
    if version == 5:
        code = reason_code(PacketType.SUBACK, version)
    else:
        code = st.sampled_from([0, 1, 2, 0x80])
    return SubAck(
        draw(PACKET_ID), draw(st.lists(code, min_size=1, max_size=4)),
        draw(properties(PacketType.SUBACK, version)),
    )


def unsubscribes(version: int) -> st.SearchStrategy:
    return st.builds(
        Unsubscribe, PACKET_ID, st.lists(TOPIC_FILTER, min_size=1, max_size=4),
        properties(PacketType.UNSUBSCRIBE, version),
    )


def unsubacks(version: int) -> st.SearchStrategy:
    if version != 5:
        return st.builds(UnsubAck, PACKET_ID)  # no reason codes before v5
    return st.builds(
        UnsubAck, PACKET_ID,
        st.lists(reason_code(PacketType.UNSUBACK, 5), min_size=1, max_size=4),
        properties(PacketType.UNSUBACK, 5),
    )


def reason_and_properties(cls: type, packet_type: int, version: int) -> st.SearchStrategy:
    return st.builds(cls, reason_code(packet_type, version), properties(packet_type, version))


def packet_strategies(version: int) -> dict[str, st.SearchStrategy]:
    """One strategy per packet type that ``version`` has."""
    strategies = {
        "CONNECT": connects(version),
        "CONNACK": connacks(version),
        "PUBLISH": publishes(version),
        "PUBACK": acks(PubAck, PacketType.PUBACK, version),
        "PUBREC": acks(PubRec, PacketType.PUBREC, version),
        "PUBREL": acks(PubRel, PacketType.PUBREL, version),
        "PUBCOMP": acks(PubComp, PacketType.PUBCOMP, version),
        "SUBSCRIBE": subscribes(version),
        "SUBACK": subacks(version),
        "UNSUBSCRIBE": unsubscribes(version),
        "UNSUBACK": unsubacks(version),
        "PINGREQ": st.just(PingReq()),
        "PINGRESP": st.just(PingResp()),
        "DISCONNECT": reason_and_properties(Disconnect, PacketType.DISCONNECT, version),
    }
    if version == 5:
        strategies["AUTH"] = reason_and_properties(Auth, PacketType.AUTH, version)
    return strategies


def any_packet(version: int) -> st.SearchStrategy:
    return st.one_of(*packet_strategies(version).values())


SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def split_at(wire: bytes, cuts: list[int]) -> list[bytes]:
    """Cut ``wire`` at each offset in ``cuts`` (repeats give empty chunks)."""
    return [wire[a:b] for a, b in pairwise([0, *sorted(cuts), len(wire)])]


def assert_decodes_to(chunks: list[bytes], version: int, expected: list) -> None:
    decoder = StreamDecoder(version)
    got = []
    for chunk in chunks:
        got.extend(decoder.feed(chunk))
    assert got == expected
    assert decoder.buffered == 0


def check_whole_packet(version, packet, data):
    """A packet encoded and fed in one chunk decodes to an equal packet, by decode() too."""
    wire = encode(packet, version)
    assert_decodes_to([wire], version, [packet])
    assert decode(wire, version) == packet
    # The encoder is deterministic: re-encoding the decoded packet gives the same bytes.
    assert encode(decode(wire, version), version) == wire


def check_one_byte_at_a_time(version, packet, data):
    """A packet fed one byte per call decodes once, on its last byte, to an equal packet."""
    wire = encode(packet, version)
    decoder = StreamDecoder(version)
    for i in range(len(wire) - 1):
        assert decoder.feed(wire[i : i + 1]) == []
    assert decoder.feed(wire[-1:]) == [packet]
    assert decoder.buffered == 0


def check_random_splits(version, packet, data):
    """A packet cut at arbitrary points (empty chunks included) decodes to an equal packet."""
    wire = encode(packet, version)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=6))
    assert_decodes_to(split_at(wire, cuts), version, [packet])


def _per_case(check, version: int, name: str):
    # One function object per case: pytest-twisted 1.14 re-wraps a @given test's inner
    # function once per pytest item, which breaks @pytest.mark.parametrize on @given tests.
    @SETTINGS
    @given(data=st.data())
    def test(data):
        check(version, data.draw(packet_strategies(version)[name]), data)

    test.__doc__ = check.__doc__
    test.__name__ = f"test_{check.__name__[6:]}_v{version}_{name.lower()}"
    return test


for _version in VERSIONS:
    for _name in packet_strategies(_version):
        for _check in (check_whole_packet, check_one_byte_at_a_time, check_random_splits):
            _test = _per_case(_check, _version, _name)
            globals()[_test.__name__] = _test
del _version, _name, _check, _test


def _per_version(make):
    for version in VERSIONS:
        test = make(version)
        test.__name__ = f"{make.__name__[5:]}_v{version}"
        globals()[test.__name__] = test
    return make


@_per_version
def make_test_concatenated_packets_round_trip(version):
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def test(data):
        """Several packets in one chunk, or cut anywhere across them, decode in order."""
        packets = data.draw(st.lists(any_packet(version), min_size=2, max_size=8))
        wire = b"".join(encode(p, version) for p in packets)
        assert_decodes_to([wire], version, packets)
        cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=10))
        assert_decodes_to(split_at(wire, cuts), version, packets)

    return test


@_per_version
def make_test_server_side_stream_takes_its_version_from_connect(version):
    @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def test(data):
        """With version=None the CONNECT's level fixes the codec for the packets after it."""
        connect = data.draw(connects(version))
        rest = data.draw(st.lists(any_packet(version), max_size=5))
        wire = encode(connect, version) + b"".join(encode(p, version) for p in rest)
        decoder = StreamDecoder()
        assert decoder.feed(wire) == [connect, *rest]
        assert decoder.version == version
        assert decoder.buffered == 0

    return test


@_per_version
def make_test_publish_round_trips_across_remaining_length_sizes(version):
    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(size=st.sampled_from([0, 1, 127, 128, 16_383, 16_384, 70_000]), data=st.data())
    def test(size, data):
        """PUBLISH bodies either side of the 1/2/3-byte remaining-length bounds round-trip."""
        packet = data.draw(publishes(version))
        packet.payload = bytes(size)
        wire = encode(packet, version)
        assert_decodes_to([wire], version, [packet])
        mid = data.draw(st.integers(0, len(wire)))
        assert_decodes_to([wire[:mid], wire[mid:]], version, [packet])

    return test


def test_property_table_covers_every_property_id():
    """PROPERTY_SPECS gives a type and at least one packet for every PropertyId."""
    covered = set()
    for ident, (_, packets) in PROPERTY_SPECS.items():
        for packet_type in packets:
            assert property_value(ident, packet_type) is not None
            covered.add(ident)
    assert covered == set(PropertyId)
