"""Byte-exact vectors written by hand from the spec's field layouts, and rejection vectors.

Each positive vector is checked both ways: ``encode`` gives exactly the bytes and
``decode`` gives back exactly the packet.  Each negative vector names the error
class and the reason code the broker would send.
"""

from __future__ import annotations

import pytest

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
    SharedFilter,
    StreamDecoder,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
    decode,
    decode_vbi,
    encode,
    encode_string,
    encode_vbi,
    parse_shared_filter,
    topics,
    validate_topic_filter,
    validate_topic_name,
)
from mqtt_twisted.constants import PropertyId, ReasonCode
from mqtt_twisted.errors import (
    InvalidTopicFilter,
    InvalidTopicName,
    MalformedPacket,
    PacketTooLarge,
    ProtocolError,
    UnsupportedProtocolVersion,
    ValidationError,
)
from tests.codecimpl import codec_impl  # noqa: F401  (pure and compiled)

P = PropertyId


def h(text: str) -> bytes:
    """Hex with spaces and ``#`` comments allowed, one field per line."""
    return bytes.fromhex("".join(line.split("#")[0] for line in text.splitlines()))


# --------------------------------------------------------------------------- MQTT 3.1.1

V4_VECTORS = [
    ("CONNECT minimal", Connect(client_id="", keep_alive=60), h("""
        10 0c              # CONNECT, remaining length 12
        00 04 4d 51 54 54  # protocol name "MQTT" [MQTT-3.1.2-1]
        04                 # protocol level 4
        02                 # flags: clean session
        00 3c              # keep alive 60
        00 00              # client id "" [MQTT-3.1.3-6]
    """)),
    ("CONNECT will+credentials", Connect(
        client_id="abc", keep_alive=60, will=Will("w", b"bye", 1, True),
        username="u", password=b"p",
    ), h("""
        10 1d              # CONNECT, remaining length 29
        00 04 4d 51 54 54  # "MQTT"
        04                 # level 4
        ee                 # user 80 | password 40 | will retain 20 | will QoS 1 08 | will 04 | clean 02
        00 3c              # keep alive 60
        00 03 61 62 63     # client id "abc"
        00 01 77           # will topic "w"
        00 03 62 79 65     # will message "bye"
        00 01 75           # user name "u"
        00 01 70           # password "p"
    """)),
    ("CONNACK", ConnAck(session_present=True, reason_code=0), h("""
        20 02  # CONNACK, remaining length 2
        01     # session present
        00     # connection accepted
    """)),
    ("CONNACK refused", ConnAck(reason_code=5), h("20 02 00 05  # not authorized")),
    ("PUBLISH QoS 0", Publish("a/b", b"hi"), h("""
        30 07           # PUBLISH QoS 0, remaining length 7
        00 03 61 2f 62  # topic "a/b"
        68 69           # payload "hi" (no packet id at QoS 0)
    """)),
    ("PUBLISH QoS 1 dup retain", Publish("a/b", b"hi", 1, True, True, 10), h("""
        3b              # PUBLISH | DUP 08 | QoS 1 02 | RETAIN 01
        09              # remaining length 9
        00 03 61 2f 62  # topic "a/b"
        00 0a           # packet id 10
        68 69           # payload
    """)),
    ("PUBLISH QoS 2", Publish("t", b"", 2, packet_id=0xFFFF), h("""
        34 05     # PUBLISH QoS 2, remaining length 5
        00 01 74  # topic "t"
        ff ff     # packet id 65535, empty payload
    """)),
    ("PUBLISH 2-byte length", Publish("t", bytes(200)), h("""
        30 cb 01  # PUBLISH, remaining length 203 = 0x4b + 1 * 128
        00 01 74  # topic "t"
    """) + bytes(200)),
    ("PUBACK", PubAck(10), h("40 02 00 0a  # PUBACK, packet id 10")),
    ("PUBREC", PubRec(10), h("50 02 00 0a  # PUBREC, packet id 10")),
    ("PUBREL", PubRel(10), h("62 02 00 0a  # PUBREL (flags 0010) [MQTT-3.6.1-1], packet id 10")),
    ("PUBCOMP", PubComp(10), h("70 02 00 0a  # PUBCOMP, packet id 10")),
    ("SUBSCRIBE", Subscribe(1, [Subscription("a/+", 1), Subscription("#", 2)]), h("""
        82 0c           # SUBSCRIBE (flags 0010) [MQTT-3.8.1-1], remaining length 12
        00 01           # packet id 1
        00 03 61 2f 2b  # filter "a/+"
        01              # requested QoS 1
        00 01 23        # filter "#"
        02              # requested QoS 2
    """)),
    ("SUBACK", SubAck(1, [1, 0x80]), h("""
        90 04  # SUBACK, remaining length 4
        00 01  # packet id 1
        01 80  # granted QoS 1, failure
    """)),
    ("UNSUBSCRIBE", Unsubscribe(2, ["a/+", "#"]), h("""
        a2 0a           # UNSUBSCRIBE (flags 0010) [MQTT-3.10.1-1], remaining length 10
        00 02           # packet id 2
        00 03 61 2f 2b  # "a/+"
        00 01 23        # "#"
    """)),
    ("UNSUBACK", UnsubAck(2), h("b0 02 00 02  # UNSUBACK, packet id 2, no payload")),
    ("PINGREQ", PingReq(), h("c0 00")),
    ("PINGRESP", PingResp(), h("d0 00")),
    ("DISCONNECT", Disconnect(), h("e0 00")),
]

V3_VECTORS = [
    ("CONNECT 3.1", Connect(client_id="c", protocol_level=3, keep_alive=10), h("""
        10 0f                    # CONNECT, remaining length 15
        00 06 4d 51 49 73 64 70  # protocol name "MQIsdp"
        03                       # level 3
        02                       # clean session
        00 0a                    # keep alive 10
        00 01 63                 # client id "c"
    """)),
    ("SUBACK 3.1", SubAck(7, [0, 2]), h("90 04 00 07 00 02")),
    ("UNSUBACK 3.1", UnsubAck(7), h("b0 02 00 07")),
]

# --------------------------------------------------------------------------- MQTT 5.0

V5_VECTORS = [
    ("CONNECT", Connect(
        client_id="abc", protocol_level=5, keep_alive=60,
        properties={P.SESSION_EXPIRY_INTERVAL: 3600, P.RECEIVE_MAXIMUM: 20},
        will=Will("w", b"bye", properties={P.WILL_DELAY_INTERVAL: 5}),
        username="u", password=b"p",
    ), h("""
        10 2c              # CONNECT, remaining length 44
        00 04 4d 51 54 54  # "MQTT"
        05                 # level 5
        c6                 # user 80 | password 40 | will 04 | clean start 02
        00 3c              # keep alive 60
        08                 # property length 8
        11 00 00 0e 10     #   session expiry interval 3600
        21 00 14           #   receive maximum 20
        00 03 61 62 63     # client id "abc"
        05                 # will property length 5
        18 00 00 00 05     #   will delay interval 5
        00 01 77           # will topic "w"
        00 03 62 79 65     # will payload "bye"
        00 01 75           # user name "u"
        00 01 70           # password "p"
    """)),
    ("CONNECT password only", Connect(
        client_id="", protocol_level=5, clean_start=False, keep_alive=0, password=b"",
    ), h("""
        10 0f              # CONNECT, remaining length 15
        00 04 4d 51 54 54  # "MQTT"
        05                 # level 5
        40                 # password without user name: allowed in 5.0 (3.1.2.9)
        00 00              # keep alive 0
        00                 # no properties
        00 00              # client id ""
        00 00              # empty password
    """)),
    ("CONNACK", ConnAck(properties={
        P.ASSIGNED_CLIENT_IDENTIFIER: "x", P.TOPIC_ALIAS_MAXIMUM: 10, P.MAXIMUM_QOS: 1,
    }), h("""
        20 0c        # CONNACK, remaining length 12
        00           # no session present
        00           # success
        09           # property length 9
        12 00 01 78  #   assigned client identifier "x"
        22 00 0a     #   topic alias maximum 10
        24 01        #   maximum QoS 1
    """)),
    ("CONNACK refused", ConnAck(reason_code=ReasonCode.NOT_AUTHORIZED), h("""
        20 03  # CONNACK, remaining length 3
        00 87  # no session, not authorized
        00     # property length 0 [MQTT-2.2.2-1]
    """)),
    ("PUBLISH QoS 0", Publish("a/b", b"hi"), h("""
        30 08           # PUBLISH QoS 0, remaining length 8
        00 03 61 2f 62  # topic "a/b"
        00              # property length 0
        68 69           # payload "hi"
    """)),
    ("PUBLISH QoS 1 properties", Publish("a/b", b"hi", 1, packet_id=10, properties={
        P.PAYLOAD_FORMAT_INDICATOR: 1, P.MESSAGE_EXPIRY_INTERVAL: 60, P.RESPONSE_TOPIC: "r",
        P.CORRELATION_DATA: b"\x01\x02", P.SUBSCRIPTION_IDENTIFIER: [5],
        P.USER_PROPERTY: [("k", "v")], P.TOPIC_ALIAS: 7,
    }), h("""
        32 26                 # PUBLISH QoS 1, remaining length 38
        00 03 61 2f 62        # topic "a/b"
        00 0a                 # packet id 10
        1c                    # property length 28
        01 01                 #   payload format indicator: UTF-8
        02 00 00 00 3c        #   message expiry interval 60
        08 00 01 72           #   response topic "r"
        09 00 02 01 02        #   correlation data 01 02
        0b 05                 #   subscription identifier 5
        26 00 01 6b 00 01 76  #   user property ("k", "v")
        23 00 07              #   topic alias 7
        68 69                 # payload "hi"
    """)),
    ("PUBLISH topic alias only", Publish("", b"x", properties={P.TOPIC_ALIAS: 7}), h("""
        30 07     # PUBLISH, remaining length 7
        00 00     # empty topic: the alias stands for it (3.3.2.3.4)
        03        # property length 3
        23 00 07  #   topic alias 7
        78        # payload "x"
    """)),
    ("PUBLISH two subscription ids", Publish(
        "t", b"", properties={P.SUBSCRIPTION_IDENTIFIER: [1, 268_435_455]}), h("""
        30 0b           # PUBLISH, remaining length 11
        00 01 74        # topic "t"
        07              # property length 7
        0b 01           #   subscription identifier 1
        0b ff ff ff 7f  #   subscription identifier 268,435,455 (largest VBI)
    """)),
    ("PUBACK success", PubAck(10), h("""
        40 02  # PUBACK, remaining length 2
        00 0a  # packet id 10; reason code 0 and no properties are omitted (3.4.2.1)
    """)),
    ("PUBACK reason code", PubAck(10, ReasonCode.NO_MATCHING_SUBSCRIBERS), h("""
        40 03  # PUBACK, remaining length 3
        00 0a  # packet id 10
        10     # no matching subscribers; no property length when it would be 0
    """)),
    ("PUBACK reason string", PubAck(10, 0x80, {P.REASON_STRING: "e"}), h("""
        40 08        # PUBACK, remaining length 8
        00 0a        # packet id 10
        80           # unspecified error
        04           # property length 4
        1f 00 01 65  #   reason string "e"
    """)),
    ("PUBREC", PubRec(10, ReasonCode.QUOTA_EXCEEDED), h("50 03 00 0a 97  # quota exceeded")),
    ("PUBREL", PubRel(10, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND), h("""
        62 03  # PUBREL (flags 0010), remaining length 3
        00 0a  # packet id 10
        92     # packet identifier not found
    """)),
    ("PUBCOMP", PubComp(10, 0, {P.USER_PROPERTY: [("a", ""), ("a", "b")]}), h("""
        70 11                 # PUBCOMP, remaining length 17
        00 0a                 # packet id 10
        00                    # success
        0d                    # property length 13
        26 00 01 61 00 00     #   user property ("a", "")
        26 00 01 61 00 01 62  #   user property ("a", "b"): repeats keep their order
    """)),
    ("SUBSCRIBE options", Subscribe(1, [
        Subscription("a/+", 1, no_local=True, retain_as_published=True, retain_handling=2),
        Subscription("$share/g/#", 0, retain_handling=1),
    ], {P.SUBSCRIPTION_IDENTIFIER: 5, P.USER_PROPERTY: [("k", "v")]}), h("""
        82 1f                          # SUBSCRIBE (flags 0010), remaining length 31
        00 01                          # packet id 1
        09                             # property length 9
        0b 05                          #   subscription identifier 5 (a single int here)
        26 00 01 6b 00 01 76           #   user property ("k", "v")
        00 03 61 2f 2b                 # filter "a/+"
        2d                             # retain handling 2 (20) | RAP 08 | no local 04 | QoS 1
        00 0a 24 73 68 61 72 65 2f 67 2f 23  # filter "$share/g/#"
        10                             # retain handling 1, QoS 0
    """)),
    ("SUBACK", SubAck(1, [1, 0xA1], {P.REASON_STRING: "ok"}), h("""
        90 0a           # SUBACK, remaining length 10
        00 01           # packet id 1
        05              # property length 5
        1f 00 02 6f 6b  #   reason string "ok"
        01 a1           # granted QoS 1, subscription identifiers not supported
    """)),
    ("UNSUBSCRIBE", Unsubscribe(2, ["a/+"], {P.USER_PROPERTY: [("k", "v")]}), h("""
        a2 0f                 # UNSUBSCRIBE (flags 0010), remaining length 15
        00 02                 # packet id 2
        07                    # property length 7
        26 00 01 6b 00 01 76  #   user property ("k", "v")
        00 03 61 2f 2b        # filter "a/+"
    """)),
    ("UNSUBACK", UnsubAck(2, [0x00, 0x11]), h("""
        b0 05  # UNSUBACK, remaining length 5
        00 02  # packet id 2
        00     # property length 0
        00 11  # success, no subscription existed
    """)),
    ("PINGREQ", PingReq(), h("c0 00")),
    ("PINGRESP", PingResp(), h("d0 00")),
    ("DISCONNECT normal", Disconnect(), h("e0 00  # reason 0 and no properties are omitted")),
    ("DISCONNECT with will", Disconnect(ReasonCode.DISCONNECT_WITH_WILL_MESSAGE), h("e0 01 04")),
    ("DISCONNECT properties", Disconnect(
        ReasonCode.SERVER_SHUTTING_DOWN, {P.SERVER_REFERENCE: "s"}), h("""
        e0 06        # DISCONNECT, remaining length 6
        8b           # server shutting down
        04           # property length 4
        1c 00 01 73  #   server reference "s"
    """)),
    ("AUTH success", Auth(), h("f0 00")),
    ("AUTH continue", Auth(ReasonCode.CONTINUE_AUTHENTICATION, {
        P.AUTHENTICATION_METHOD: "SCRAM", P.AUTHENTICATION_DATA: b"\x01\x02"}), h("""
        f0 0f                       # AUTH, remaining length 15
        18                          # continue authentication
        0d                          # property length 13
        15 00 05 53 43 52 41 4d     #   authentication method "SCRAM"
        16 00 02 01 02              #   authentication data 01 02
    """)),
]

POSITIVE = (
    [(4, *v) for v in V4_VECTORS] + [(3, *v) for v in V3_VECTORS] + [(5, *v) for v in V5_VECTORS]
)


@pytest.mark.parametrize(("version", "name", "packet", "wire"), POSITIVE,
                         ids=[f"v{v}-{n}" for v, n, _, _ in POSITIVE])
def test_encode_gives_the_vector_bytes(version, name, packet, wire):
    """encode() writes exactly the hand-assembled bytes."""
    assert encode(packet, version).hex(" ") == wire.hex(" ")


@pytest.mark.parametrize(("version", "name", "packet", "wire"), POSITIVE,
                         ids=[f"v{v}-{n}" for v, n, _, _ in POSITIVE])
def test_decode_gives_the_vector_packet(version, name, packet, wire):
    """decode() of the hand-assembled bytes gives exactly the packet."""
    assert decode(wire, version) == packet


def test_every_packet_type_has_vectors_in_both_versions():
    """The vector tables above hold every packet type for 3.1.1 and every one for 5.0."""
    v4 = {type(p) for _, p, _ in V4_VECTORS}
    v5 = {type(p) for _, p, _ in V5_VECTORS}
    every = {Connect, ConnAck, Publish, PubAck, PubRec, PubRel, PubComp, Subscribe, SubAck,
             Unsubscribe, UnsubAck, PingReq, PingResp, Disconnect}
    assert v4 == every
    assert v5 == every | {Auth}


DECODE_ONLY = [
    (5, "PUBACK reason code with empty properties", h("""
        40 04  # PUBACK, remaining length 4
        00 0a  # packet id 10
        00     # success, spelled out
        00     # property length 0
    """), PubAck(10)),
    (5, "DISCONNECT reason code and empty properties", h("e0 02 00 00"), Disconnect()),
    (5, "PUBLISH properties in another order", h("""
        30 0a     # PUBLISH, remaining length 10
        00 01 74  # topic "t"
        05        # property length 5
        23 00 02  #   topic alias 2
        0b 03     #   subscription identifier 3
        01        # payload
    """), Publish("t", b"\x01", properties={
        P.SUBSCRIPTION_IDENTIFIER: [3], P.TOPIC_ALIAS: 2})),
    (None, "CONNECT on the server side", h("""
        10 0d 00 04 4d 51 54 54 04  # CONNECT, "MQTT" level 4
        00 00 00                    # clean session off, keep alive 0
        00 01 63                    # client id "c"
    """), Connect(client_id="c", clean_start=False, keep_alive=0)),
    (4, "UTF-8 BOM is kept, not skipped [MQTT-1.5.4-3]", h("""
        30 06           # PUBLISH, remaining length 6
        00 04 ef bb bf 61  # topic U+FEFF "a"
    """), Publish("\ufeffa", b"")),
]


@pytest.mark.parametrize(("version", "name", "wire", "packet"), DECODE_ONLY,
                         ids=[n for _, n, _, _ in DECODE_ONLY])
def test_decode_accepts_other_valid_spellings(version, name, wire, packet):
    """Valid spellings the encoder does not produce (long forms, other orders) decode too."""
    assert decode(wire, version) == packet


def test_remaining_length_vectors():
    """The spec's variable byte integer table, both directions, at each size bound (1.5.5)."""
    table = {
        0: "00", 127: "7f", 128: "80 01", 16_383: "ff 7f", 16_384: "80 80 01",
        2_097_151: "ff ff 7f", 2_097_152: "80 80 80 01", 268_435_455: "ff ff ff 7f",
    }
    for value, spelled in table.items():
        wire = bytes.fromhex(spelled)
        assert encode_vbi(value) == wire
        assert decode_vbi(wire, 0, len(wire)) == (value, len(wire))
    for bad in (-1, 268_435_456):
        with pytest.raises(ValidationError):
            encode_vbi(bad)


# --------------------------------------------------------------------------- rejections

def connect_v4(flags: str, payload: str) -> bytes:
    body = h("00 04 4d 51 54 54 04") + h(flags) + h("00 3c") + h(payload)
    return bytes((0x10, len(body))) + body


def connect_v5(properties: str, payload: str = "00 00", flags: str = "02") -> bytes:
    props = h(properties)
    body = h(f"00 04 4d 51 54 54 05 {flags} 00 3c") + bytes((len(props),)) + props + h(payload)
    return bytes((0x10, len(body))) + body


def disconnect_v5(properties: str) -> bytes:
    props = h(properties)
    body = b"\x00" + bytes((len(props),)) + props
    return bytes((0xE0, len(body))) + body


MALFORMED = MalformedPacket, ReasonCode.MALFORMED_PACKET
PROTOCOL = ProtocolError, ReasonCode.PROTOCOL_ERROR
TOPIC_NAME = InvalidTopicName, ReasonCode.TOPIC_NAME_INVALID

NEGATIVE = [
    # Fixed header [MQTT-2.1.3-1] [MQTT-2.2.2-2].
    (4, "reserved packet type 0", h("00 00"), MALFORMED),
    (4, "PUBREL flags 0", h("60 02 00 01"), MALFORMED),
    (5, "PUBREL flags 3", h("63 02 00 01"), MALFORMED),
    (4, "SUBSCRIBE flags 0", h("80 06 00 01 00 01 61 00"), MALFORMED),
    (4, "UNSUBSCRIBE flags 0", h("a0 05 00 01 00 01 61"), MALFORMED),
    (4, "CONNACK flags 1", h("21 02 00 00"), MALFORMED),
    (4, "PUBACK flags 2", h("42 02 00 01"), MALFORMED),
    (4, "PINGREQ flags 8", h("c8 00"), MALFORMED),
    (5, "DISCONNECT flags 1", h("e1 00"), MALFORMED),
    (4, "PUBLISH QoS 3", h("36 05 00 01 61 00 01"), MALFORMED),  # [MQTT-3.3.1-4]
    (5, "PUBLISH QoS 3 v5", h("37 06 00 01 61 00 01 00"), MALFORMED),
    (4, "DUP on QoS 0", h("38 03 00 01 61"), MALFORMED),  # [MQTT-3.3.1-2]
    # Packet identifiers are non-zero [MQTT-2.3.1-1].
    (4, "PUBLISH packet id 0", h("32 05 00 01 61 00 00"), MALFORMED),
    (4, "PUBACK packet id 0", h("40 02 00 00"), MALFORMED),
    (5, "PUBREL packet id 0", h("62 02 00 00"), MALFORMED),
    (4, "SUBSCRIBE packet id 0", h("82 06 00 00 00 01 61 00"), MALFORMED),
    (4, "UNSUBACK packet id 0", h("b0 02 00 00"), MALFORMED),
    # Remaining length: at most four bytes, shortest form [MQTT-1.5.5-1].
    (4, "5-byte remaining length", h("30 ff ff ff ff 7f"), MALFORMED),
    (4, "non-minimal remaining length", h("c0 80 00"), MALFORMED),
    (5, "non-minimal property length", h("e0 03 00 80 00"), MALFORMED),
    (5, "non-minimal subscription identifier", h("""
        30 07 00 01 74  # PUBLISH "t", remaining length 7
        03 0b 81 00     # subscription identifier 1 spelled in two bytes
    """), MALFORMED),
    (4, "remaining length shorter than PUBACK", h("40 01 00"), MALFORMED),
    (4, "remaining length shorter than CONNECT", h("10 0b 00 04 4d 51 54 54 04 02 00 3c 00"),
     MALFORMED),
    (4, "remaining length longer than PINGREQ", h("c0 01 00"), MALFORMED),
    (4, "remaining length longer than UNSUBACK", h("b0 03 00 01 00"), MALFORMED),
    (4, "remaining length longer than CONNECT", connect_v4("02", "00 00 00"), MALFORMED),
    (5, "property length past the packet", h("e0 03 00 05 11"), MALFORMED),
    (4, "string length past the packet", h("30 03 00 05 61"), MALFORMED),
    # UTF-8 strings [MQTT-1.5.4-1] [MQTT-1.5.4-2].
    (4, "client id with U+0000", connect_v4("02", "00 02 61 00"), MALFORMED),
    (4, "PUBLISH topic with U+0000", h("30 04 00 02 61 00"), MALFORMED),
    (4, "invalid UTF-8 in client id", connect_v4("02", "00 01 ff"), MALFORMED),
    (4, "invalid UTF-8 in topic", h("30 04 00 02 c3 28"), MALFORMED),
    (4, "overlong UTF-8 ('/' as c0 af)", h("30 04 00 02 c0 af"), MALFORMED),
    (4, "encoded surrogate in client id", connect_v4("02", "00 03 ed a0 80"), MALFORMED),
    (4, "encoded surrogate in topic", h("30 05 00 03 ed a0 80"), MALFORMED),
    (5, "U+0000 in a user property", disconnect_v5("26 00 01 00 00 00"), MALFORMED),
    # Topic names [MQTT-3.3.2-2] [MQTT-4.7.3-1].
    (4, "'+' in PUBLISH topic", h("30 05 00 03 61 2f 2b"), TOPIC_NAME),
    (5, "'#' in PUBLISH topic", h("30 04 00 01 23 00"), TOPIC_NAME),
    (4, "empty PUBLISH topic", h("30 03 00 00 78"), TOPIC_NAME),
    # MQTT 5 §3.3.2.1: a protocol error (0x82), not an invalid topic name.
    (5, "empty topic without a topic alias", h("30 04 00 00 00 78"), PROTOCOL),
    (4, "wildcard in will topic", connect_v4("06", "00 00 00 01 23 00 00"), TOPIC_NAME),
    # CONNECT flags.
    (4, "CONNECT reserved flag", connect_v4("03", "00 00"), MALFORMED),  # [MQTT-3.1.2-3]
    (5, "CONNECT reserved flag v5", connect_v5("", flags="03"), MALFORMED),
    (4, "will QoS without will flag", connect_v4("0a", "00 00"), MALFORMED),  # [MQTT-3.1.2-13]
    (4, "will retain without will flag", connect_v4("22", "00 00"), MALFORMED),  # [MQTT-3.1.2-15]
    (4, "will QoS 3", connect_v4("1e", "00 00 00 01 77 00 00"), MALFORMED),  # [MQTT-3.1.2-14]
    (4, "password without user name", connect_v4("42", "00 00 00 01 70"),
     MALFORMED),  # [MQTT-3.1.2-22]
    (None, "unknown protocol name", h("10 0c 00 04 4d 51 54 58 04 02 00 3c 00 00"), PROTOCOL),
    # Properties (2.2.2).
    (5, "unknown property id", disconnect_v5("05 00"), MALFORMED),
    (5, "property not allowed in the packet", disconnect_v5("23 00 01"), MALFORMED),
    (5, "will-only property in CONNECT", connect_v5("18 00 00 00 01"), MALFORMED),
    (5, "CONNECT-only property in a will", h("""
        10 16 00 04 4d 51 54 54 05 06 00 3c 00  # will flag set, no CONNECT properties
        00 00                                   # client id ""
        03 21 00 01                             # will properties: receive maximum
        00 01 77 00 00                          # will topic "w", empty payload
    """), MALFORMED),
    (5, "duplicated property", disconnect_v5("11 00 00 00 01 11 00 00 00 02"), PROTOCOL),
    (5, "subscription identifier twice in SUBSCRIBE", h("""
        82 0b           # SUBSCRIBE, remaining length 11
        00 01           # packet id 1
        04 0b 01 0b 02  # properties: subscription identifier 1, then 2
        00 01 61 00     # "a" QoS 0
    """), PROTOCOL),
    (5, "request problem information 2", connect_v5("17 02"), PROTOCOL),
    (5, "receive maximum 0", connect_v5("21 00 00"), PROTOCOL),
    (5, "maximum packet size 0", connect_v5("27 00 00 00 00"), PROTOCOL),
    (5, "topic alias 0", h("30 07 00 01 74 03 23 00 00"), PROTOCOL),
    (5, "subscription identifier 0", h("82 09 00 01 02 0b 00 00 01 61 00"), PROTOCOL),
    (5, "property value runs past its block", disconnect_v5("11 00 00"), MALFORMED),
    # Reason codes (2.4).
    (5, "PUBACK reason code not for PUBACK", h("40 03 00 01 8f"), MALFORMED),
    (5, "DISCONNECT reason code 0x01", h("e0 01 01"), MALFORMED),
    (4, "CONNACK return code 6", h("20 02 00 06"), MALFORMED),
    (4, "CONNACK reserved flags", h("20 02 02 00"), MALFORMED),  # [MQTT-3.2.2-1]
    (4, "SUBACK return code 3", h("90 03 00 01 03"), MALFORMED),
    (5, "UNSUBACK without reason codes", h("b0 03 00 01 00"), PROTOCOL),
    # SUBSCRIBE / UNSUBSCRIBE payloads.
    (4, "SUBSCRIBE with no filters", h("82 02 00 01"), PROTOCOL),  # [MQTT-3.8.3-3]
    (5, "SUBSCRIBE with no filters v5", h("82 03 00 01 00"), PROTOCOL),
    (4, "UNSUBSCRIBE with no filters", h("a2 02 00 01"), PROTOCOL),  # [MQTT-3.10.3-2]
    (4, "SUBSCRIBE QoS byte reserved bits", h("82 06 00 01 00 01 61 04"),
     MALFORMED),  # [MQTT-3-8.3-4]
    (4, "SUBSCRIBE QoS 3", h("82 06 00 01 00 01 61 03"), MALFORMED),  # [MQTT-3-8.3-4]
    (5, "SUBSCRIBE option reserved bits", h("82 07 00 01 00 00 01 61 40"),
     MALFORMED),  # [MQTT-3.8.3-5]
    (5, "SUBSCRIBE maximum QoS 3", h("82 07 00 01 00 00 01 61 03"), PROTOCOL),  # 3.8.3.1
    (5, "retain handling 3", h("82 07 00 01 00 00 01 61 30"), PROTOCOL),  # 3.8.3.1
    (4, "SUBSCRIBE filter without options", h("82 05 00 01 00 01 61"), MALFORMED),
    # Packets a version does not have.
    (4, "AUTH under 3.1.1", h("f0 00"), PROTOCOL),
    (3, "AUTH under 3.1", h("f0 00"), PROTOCOL),
]


@pytest.mark.parametrize(("version", "name", "wire", "expected"), NEGATIVE,
                         ids=[n for _, n, _, _ in NEGATIVE])
def test_decode_rejects_with_the_exact_error(version, name, wire, expected):
    """Each invalid vector raises exactly this error class carrying this reason code."""
    error_class, code = expected
    with pytest.raises(error_class) as info:
        decode(wire, version)
    assert type(info.value) is error_class
    assert info.value.reason_code == code


@pytest.mark.parametrize(("name", "level", "wire"), [
    ("MQTT level 6", 6, h("10 0c 00 04 4d 51 54 54 06 02 00 3c 00 00")),
    ("MQTT level 3", 3, h("10 0c 00 04 4d 51 54 54 03 02 00 3c 00 00")),
    ("MQIsdp level 4", 4, h("10 0e 00 06 4d 51 49 73 64 70 04 02 00 3c 00 00")),
])
def test_unknown_protocol_level_is_unsupported_version(name, level, wire):
    """A name/level pair no version has is UnsupportedProtocolVersion carrying the level."""
    # [MQTT-3.1.2-2]: CONNACK 0x01 (3.1.1) or 0x84 (5.0), then close.
    with pytest.raises(UnsupportedProtocolVersion) as info:
        StreamDecoder().feed(wire)
    assert info.value.level == level
    assert info.value.reason_code == ReasonCode.UNSUPPORTED_PROTOCOL_VERSION
    assert info.value.v3_return_code == 0x01


def test_server_side_first_packet_must_be_connect():
    """A server-side stream refuses anything but CONNECT first [MQTT-3.1.0-1]."""
    with pytest.raises(ProtocolError) as info:
        StreamDecoder().feed(h("c0 00"))
    assert type(info.value) is ProtocolError
    assert info.value.reason_code == ReasonCode.PROTOCOL_ERROR


def test_server_side_non_connect_is_refused_before_its_body_arrives():
    """The first-packet check runs on the fixed header, before the body is buffered."""
    decoder = StreamDecoder()
    with pytest.raises(ProtocolError):
        decoder.feed(h("30 ff ff 7f"))  # the header of a 2 MiB PUBLISH, nothing more


def test_packet_too_large_is_raised_from_the_fixed_header():
    """A packet over max_packet_size is refused from its header alone, nothing buffered."""
    decoder = StreamDecoder(4, max_packet_size=100)
    with pytest.raises(PacketTooLarge) as info:
        decoder.feed(h("30 e8 07"))  # PUBLISH, remaining length 1000, no body yet
    assert info.value.reason_code == ReasonCode.PACKET_TOO_LARGE
    assert decoder.buffered == 0


def test_packet_at_the_size_limit_is_accepted():
    """A packet of exactly max_packet_size bytes (header included) is accepted."""
    wire = encode(Publish("t", bytes(95)), 4)  # 2 + 2 + 1 + 95
    assert len(wire) == 100
    assert StreamDecoder(4, max_packet_size=100).feed(wire) == [Publish("t", bytes(95))]
    with pytest.raises(PacketTooLarge):
        StreamDecoder(4, max_packet_size=99).feed(wire[:2])


def test_packet_too_large_counts_the_whole_fixed_header():
    """The limit compares header plus remaining length, with a multi-byte length."""
    decoder = StreamDecoder(5, max_packet_size=130)
    decoder.feed(h("30 7f"))  # 129 bytes in all: accepted, waiting for the body
    assert decoder.buffered == 2
    with pytest.raises(PacketTooLarge):
        StreamDecoder(5, max_packet_size=130).feed(h("30 80 01"))  # 3 + 128 = 131


def test_error_carries_the_packets_decoded_before_it():
    """Packets completed earlier in the same chunk ride on the error as error.packets."""
    decoder = StreamDecoder(4)
    decoder.feed(h("30 06 00 01"))  # the start of a PUBLISH, completed by the next chunk
    with pytest.raises(MalformedPacket) as info:
        decoder.feed(h("""
            74 68 69 78  # rest of PUBLISH "t" payload "hix"
            c0 00        # PINGREQ
            40 02 00 00  # PUBACK with packet id 0: malformed [MQTT-2.3.1-1]
            c0 00        # never reached
        """))
    assert info.value.packets == [Publish("t", b"hix"), PingReq()]
    with pytest.raises(ProtocolError) as first:
        StreamDecoder().feed(h("c0 00"))
    assert first.value.packets == []


def test_decode_rejects_trailing_bytes_and_partial_packets():
    """decode() wants exactly one whole packet: no more, no less."""
    with pytest.raises(MalformedPacket):
        decode(h("c0 00 c0 00"), 4)
    with pytest.raises(MalformedPacket):
        decode(h("30 05 00 01"), 4)


# --------------------------------------------------------------------------- encoding errors

@pytest.mark.parametrize(("name", "packet", "version"), [
    ("packet id 0", PubAck(0), 4),
    ("packet id 65536", PubAck(65_536), 4),
    ("QoS 1 without packet id", Publish("t", b"", 1), 4),
    ("QoS 3", Publish("t", b"", 3, packet_id=1), 4),
    ("will QoS 3", Connect(will=Will("w", qos=3)), 4),
    ("SUBSCRIBE without filters", Subscribe(1), 4),
    ("UNSUBSCRIBE without filters", Unsubscribe(1), 5),
    ("retain handling 3", Subscribe(1, [Subscription("a", retain_handling=3)]), 5),
    ("client id with U+0000", Connect(client_id="a\x00"), 4),
    ("topic with U+0000", Publish("a\x00"), 4),  # [MQTT-1.5.4-2]
    ("topic with a lone surrogate", Publish("a/\udc80"), 5),  # [MQTT-1.5.4-1]
    ("client id with a lone surrogate", Connect(client_id="\ud800"), 4),
    ("string over 65,535 bytes", Connect(client_id="x" * 65_536), 4),
    ("AUTH under 3.1.1", Auth(), 4),
    ("property not allowed", Disconnect(0, {P.TOPIC_ALIAS: 1}), 5),
    ("unknown property", Disconnect(0, {0x05: 1}), 5),
    ("property value out of range", Disconnect(0, {P.SESSION_EXPIRY_INTERVAL: 2**32}), 5),
    ("unknown protocol level", Connect(protocol_level=7), 4),
])
def test_encode_refuses_values_that_would_put_invalid_bytes_on_the_wire(name, packet, version):
    """encode() raises ValidationError (a ValueError) instead of writing a bad packet."""
    with pytest.raises(ValidationError):
        encode(packet, version)


def test_encode_string_vector():
    """A UTF-8 string is a big-endian length then the bytes (1.5.4), e.g. U+2603."""
    assert encode_string("a\u2603") == h("00 04 61 e2 98 83")


def test_v5_only_fields_are_not_written_for_3_1_1():
    """Properties and reason codes a 3.1.1 packet cannot carry are left out, not refused."""
    assert encode(PubAck(10, 0x10, {P.REASON_STRING: "x"}), 4) == h("40 02 00 0a")
    assert encode(Disconnect(0x8B), 4) == h("e0 00")
    assert encode(UnsubAck(2, [0]), 4) == h("b0 02 00 02")
    assert encode(Subscribe(1, [Subscription("a", 1, True, True, 2)]), 4) == h(
        "82 06 00 01 00 01 61 01")


# --------------------------------------------------------------------------- topics

@pytest.mark.parametrize("topic", ["a", "a/b", "/", "a//b", "$SYS/x", " ", "\u00e9/\u2603"])
def test_valid_topic_names(topic):
    """Any non-empty string without wildcards or U+0000 is a topic name."""
    validate_topic_name(topic)


@pytest.mark.parametrize("topic", [
    "",  # [MQTT-4.7.3-1]
    "a/+", "+", "a/#", "#", "a+b",  # [MQTT-4.7.0-1] no wildcards in names
    "a\x00b",  # [MQTT-4.7.3-2]
    "x" * 65_536,
])
def test_invalid_topic_names(topic):
    """Empty names, wildcards, U+0000 and over-long names are InvalidTopicName (0x90)."""
    with pytest.raises(InvalidTopicName) as info:
        validate_topic_name(topic)
    assert info.value.reason_code == ReasonCode.TOPIC_NAME_INVALID


@pytest.mark.parametrize("topic_filter", [
    "a", "#", "+", "a/#", "a/+/b", "+/+", "/+", "+/", "a//#", "$SYS/#", "sport/tennis/+",
])
def test_valid_topic_filters(topic_filter):
    """Wildcards filling whole levels, '#' last, are valid filters (4.7.1)."""
    assert validate_topic_filter(topic_filter) is None


@pytest.mark.parametrize("topic_filter", [
    "",  # [MQTT-4.7.3-1]
    "a#", "a/#/b", "#/a", "a/b#", "##",  # [MQTT-4.7.1-2]
    "a+", "+a/b", "a/+b", "a/b+/c", "++",  # [MQTT-4.7.1-3]
    "a\x00",  # [MQTT-4.7.3-2]
    "$share/g", "$share//a", "$share/g/", "$share/+/a", "$share/g#/a",  # [MQTT-4.8.2-1..2]
    "$share/g/a#",
    "x" * 65_536,
])
def test_invalid_topic_filters(topic_filter):
    """Misplaced wildcards and malformed shared filters are InvalidTopicFilter (0x8F)."""
    with pytest.raises(InvalidTopicFilter) as info:
        validate_topic_filter(topic_filter)
    assert info.value.reason_code == ReasonCode.TOPIC_FILTER_INVALID


def test_shared_filters_parse_into_group_and_filter():
    """'$share/{group}/{filter}' splits at the first '/' after the group (4.8.2)."""
    assert parse_shared_filter("$share/g/a/+") == SharedFilter("g", "a/+")
    assert validate_topic_filter("$share/g/a/+") == SharedFilter("g", "a/+")
    assert parse_shared_filter("$share/g/#") == SharedFilter("g", "#")
    assert parse_shared_filter("$share/grp/$SYS/x") == SharedFilter("grp", "$SYS/x")
    assert parse_shared_filter("a/b") is None
    assert parse_shared_filter("$sharex/g/a") is None
    assert parse_shared_filter("$SHARE/g/a") is None  # case-sensitive


@pytest.mark.parametrize(("topic_filter", "topic", "matches"), [
    ("a/b", "a/b", True),
    ("a/b", "a/c", False),
    ("a/b", "a/b/c", False),
    ("a/+", "a/b", True),
    ("a/+", "a/", True),  # '+' matches an empty level
    ("a/+", "a", False),
    ("a/+", "a/b/c", False),
    ("+/+", "/a", True),
    ("+", "/a", False),
    ("a/#", "a", True),  # '#' includes the parent level [MQTT-4.7.1-2]
    ("a/#", "a/b/c", True),
    ("a/#", "ab", False),
    ("#", "a/b", True),
    ("#", "/", True),
    ("#", "$SYS", False),  # [MQTT-4.7.2-1]
    ("#", "$SYS/broker/load", False),
    ("+/x", "$SYS/x", False),  # [MQTT-4.7.2-1]
    ("+/#", "$SYS/x", False),
    ("$SYS/#", "$SYS/broker/load", True),
    ("$SYS/+", "$SYS/x", True),
    ("a/+/c", "a/b/c", True),
    ("a/+/c", "a/b/d", False),
    ("A", "a", False),  # case-sensitive (4.7.3)
    ("a /b", "a/b", False),
])
def test_topic_matches(topic_filter, topic, matches):
    """topic_matches follows the wildcard rules of 4.7, including '$' topics."""
    assert topics.topic_matches(topic_filter, topic) is matches  # the one bound now
