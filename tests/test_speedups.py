"""The compiled codec (mqtt_twisted/codec/_speedups.pyx) against the pure functions.

The pure functions are the specification: on the same input, valid or hostile, the
compiled ones must return equal packets (``raw`` included) and equal bytes, or raise the
same error class with the same message, reason code and ``error.packets``, and leave
the decoder in the same state.  Also: how the implementation is chosen at import
(``MQTT_TWISTED_PURE``, ``MQTT_TWISTED_REQUIRE_EXT``, a missing extension), and that a
build without a working C compiler still installs (the pure package).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqtt_twisted.codec import Publish, StreamDecoder, _accel, _decode, encode
from mqtt_twisted.codec.packets import Properties
from mqtt_twisted.constants import PropertyId as P
from tests.test_codec_fuzz import CORPUS, mutate, random_chunks

ROOT = Path(__file__).resolve().parent.parent
ext = _accel.speedups
needs_ext = pytest.mark.skipif(ext is None, reason="the compiled codec is not built here")
PURE = {**_accel.PURE, "decode_subscribe": _decode.decode_subscribe}


def outcome(call):
    """What a call gives: ("ok", value) or ("error", class, message, reason code, packets)."""
    try:
        return ("ok", call())
    except Exception as e:
        return ("error", type(e), str(e), getattr(e, "reason_code", None),
                getattr(e, "packets", None))


def raws(result):
    """The ``raw`` bytes of each packet in a feed outcome (``==`` leaves them out)."""
    packets = result[1] if result[0] == "ok" else result[4] or []
    return [getattr(p, "raw", None) for p in packets]


def state(decoder: StreamDecoder) -> tuple:
    return (decoder.version, decoder.buffered, decoder.more, decoder._need)


def assert_same_stream(chunks: list[bytes], version: int | None, limit: int,
                       budget: int = 0) -> None:
    """Both feeds, chunk by chunk, give the same packets or error and the same state."""
    pure, compiled = StreamDecoder(version, limit), StreamDecoder(version, limit)
    for chunk in [*chunks, b"", b""]:
        want = outcome(lambda c=chunk: PURE["feed"](pure, c, budget))
        got = outcome(lambda c=chunk: ext.feed(compiled, c, budget))
        assert got == want, chunk
        assert raws(got) == raws(want)
        assert state(compiled) == state(pure)
        if want[0] == "error":
            return


@needs_ext
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(CORPUS), seed=st.integers(0, 2**32), count=st.integers(0, 5),
       limit=st.sampled_from([16, 100, 512, 1 << 28]), budget=st.sampled_from([0, 1, 3]))
def test_feed_matches_pure_on_valid_and_mutated_streams(case, seed, count, limit, budget):
    """Valid and mutated streams (of every packet type, cut anywhere, under small and
    large size limits, with and without a budget) decode alike in both framers."""
    version, wire = case
    rng = random.Random(seed)
    data = mutate(rng, wire, count) if count else wire
    assert_same_stream(random_chunks(rng, data), version, limit, budget)


@needs_ext
@settings(max_examples=300, deadline=None)
@given(version=st.sampled_from([None, 3, 4, 5]), data=st.binary(max_size=300),
       cut=st.integers(0, 300))
def test_feed_matches_pure_on_random_bytes(version, data, cut):
    """Random bytes raise the same error (or give the same packets) in both framers."""
    prefix = bytes([0x30 | (data[0] & 0x0F)]) + data[1:] if data and version else data
    assert_same_stream([prefix[:cut], prefix[cut:]], version, 512)


@needs_ext
@settings(max_examples=300, deadline=None)
@given(version=st.sampled_from([3, 4, 5]), flags=st.integers(0, 15),
       topic=st.binary(max_size=12) | st.sampled_from(
           [b"a/b", b"", b"a/+", b"#", b"a\x00b", b"\xed\xa0\x80", b"\xc0\xaf", "é/☃".encode()]),
       pid=st.integers(0, 3), tail=st.binary(max_size=20), props=st.sampled_from(
           [b"", b"\x00", b"\x02\x23\x00", b"\x03\x23\x00\x01", b"\x05", b"\x02\x01\x01"]))
def test_publish_bodies_decode_alike(version, flags, topic, pid, tail, props):
    """PUBLISH bodies built field by field (bad flags, bad UTF-8, wildcards, U+0000,
    packet id 0, empty topics with and without an alias, broken properties) give the
    same packet or the same error."""
    body = len(topic).to_bytes(2, "big") + topic
    if (flags >> 1) & 3:
        body += pid.to_bytes(2, "big")
    if version == 5:
        body += props
    body += tail
    wire = bytes([0x30 | flags]) + encode_length(len(body)) + body
    assert_same_stream([wire], version, 1 << 28)
    want = outcome(lambda: PURE["decode_publish"](flags, wire, 2, len(wire), version))
    got = outcome(lambda: ext.decode_publish(flags, wire, 2, len(wire), version))
    assert got == want


@needs_ext
@settings(max_examples=400, deadline=None)
@given(version=st.sampled_from([3, 4, 5]), pid=st.integers(0, 2),
       filters=st.lists(st.tuples(
           st.binary(max_size=10) | st.sampled_from(
               [b"a/b", b"", b"a/+", b"#", b"a\x00b", b"\xed\xa0\x80", b"\xc0\xaf",
                "é/☃".encode(), b"$share/g/a"]),
           st.integers(0, 255)), max_size=6),
       props=st.sampled_from([b"\x00", b"\x02\x0b\x05", b"\x05", b"\x02\x01\x01"]),
       tail=st.sampled_from([b"", b"\x00", b"\x00\x05ab", b"\x00\x01a"]))
def test_subscribe_bodies_decode_alike(version, pid, filters, props, tail):
    """SUBSCRIBE bodies built field by field (bad UTF-8, U+0000, reserved option bits,
    QoS 3, retain handling 3, a filter without options, packet id 0, no filter at all,
    broken properties) give the same packet or error in the compiled decoder (alone and
    in the framer) as in the pure one."""
    body = pid.to_bytes(2, "big") + (props if version == 5 else b"")
    for topic_filter, options in filters:
        body += len(topic_filter).to_bytes(2, "big") + topic_filter + bytes([options])
    body += tail
    wire = bytes([0x82]) + encode_length(len(body)) + body
    want = outcome(lambda: PURE["decode_subscribe"](2, wire, 2, len(wire), version))
    got = outcome(lambda: ext.decode_subscribe(2, wire, 2, len(wire), version))
    assert got == want
    assert_same_stream([wire], version, 1 << 28)


def encode_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = n >> 7, n & 0x7F
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


PROPERTIES: list[Properties] = [
    {}, {P.MESSAGE_EXPIRY_INTERVAL: 60, P.CONTENT_TYPE: "json"},
    {P.USER_PROPERTY: [("k", "v")], P.SUBSCRIPTION_IDENTIFIER: [1, 300]},
    {P.TOPIC_ALIAS: 0}, {P.RECEIVE_MAXIMUM: 1},  # a bad value; not allowed in PUBLISH
]


@needs_ext
@settings(max_examples=400, deadline=None)
@given(topic=st.text(max_size=8) | st.sampled_from(["a\ud800", "x\x00", "é" * 30000, ""]),
       payload=st.binary(max_size=300) | st.just(bytearray(b"ba")),
       qos=st.sampled_from([0, 1, 2, 3, -1, None, True]),
       packet_id=st.sampled_from([None, 0, 1, 0xFFFF, 0x10000, -1, 1.5]),
       retain=st.booleans(), dup=st.booleans(), version=st.sampled_from([3, 4, 5]),
       properties=st.sampled_from(PROPERTIES))
def test_encode_publish_matches_pure(topic, payload, qos, packet_id, retain, dup, version,
                                     properties):
    """Every Publish, with fields in and out of their ranges, encodes to the same bytes
    or raises the same error in both encoders."""
    packet = Publish(topic, payload, qos, retain, dup, packet_id, dict(properties))
    assert (outcome(lambda: ext.encode_publish(packet, version))
            == outcome(lambda: PURE["encode_publish"](packet, version)))


@needs_ext
@settings(max_examples=400, deadline=None)
@given(topic=st.text(max_size=8) | st.sampled_from(["a\ud800", "x\x00", "é" * 30000, ""]),
       payload=st.binary(max_size=200) | st.just(bytearray(b"ba")),
       qos=st.sampled_from([1, 2, 0, 3, None, True]),
       packet_id=st.sampled_from([1, 0xFFFF, None, 0, 0x10000, -1, 1.5]),
       retain=st.booleans())
def test_encode_publish_plain_matches_pure_and_encode_publish(topic, payload, qos,
                                                             packet_id, retain):
    """A subscriber's QoS 1/2 copy (core/wire.py): the same bytes or error from both, and
    for QoS 1/2 those ``encode_publish`` gives the same fields in a v4 ``Publish``."""
    compiled = outcome(lambda: ext.encode_publish_plain(topic, payload, qos, retain, packet_id))
    assert compiled == outcome(
        lambda: PURE["encode_publish_plain"](topic, payload, qos, retain, packet_id))
    if qos in (1, 2) and type(qos) is int:
        packet = Publish(topic, payload, qos, retain, False, packet_id, {})
        assert compiled == outcome(lambda: PURE["encode_publish"](packet, 4))


@needs_ext
def test_plain_acks_decode_alike_and_without_their_init():
    """The four acks of a packet id alone are built in the compiled feed (no frame of
    ``decode_body``, ``decode_ack`` or the dataclass's __init__); longer or unusual ones
    (packet id 0, a reason code, bad flags) go to the pure decoder, as the feed tests
    check on random streams too."""
    assert ext.ACK_FIELDS_KNOWN
    for first in (0x40, 0x50, 0x62, 0x70, 0x60, 0x42):
        for body in (b"\x00\x01", b"\xff\xff", b"\x00\x00", b"\x00\x07\x10", b"\x00"):
            for version in (3, 4, 5):
                data = bytes((first, len(body))) + body
                assert_same_stream([data, data[:3], data[3:]], version, 1 << 20)


@needs_ext
def test_encode_publish_at_every_length_boundary():
    """Remaining lengths on both sides of each VBI size (127/128, 16383/16384, ...)."""
    for size in (0, 1, 120, 121, 122, 16375, 16376, 16377, 2097140, 2097145):
        for version in (4, 5):
            packet = Publish("abc", bytes(size), 1, packet_id=9)
            assert ext.encode_publish(packet, version) == PURE["encode_publish"](packet, version)


@needs_ext
@settings(max_examples=300, deadline=None)
@given(items=st.lists(st.tuples(
           st.text(max_size=6) | st.sampled_from(["a\ud800", "x\x00", "é" * 30000, "é" * 40]),
           st.binary(max_size=200) | st.sampled_from([bytes(16384), bytearray(b"ba")])),
           max_size=6),
       version=st.sampled_from([3, 4, 5]), retain=st.booleans(), shape=st.sampled_from(
           ["lists", "tuples", "short"]))
def test_encode_publishes_matches_pure(items, version, retain, shape):
    """Topics and payloads, valid or not, as lists or not: the same bytes or the same
    error from both (anything but lists of str and bytes goes to the pure function)."""
    topics, payloads = [t for t, _ in items], [p for _, p in items]
    if shape == "tuples":
        topics, payloads = tuple(topics), tuple(payloads)
    elif shape == "short":
        payloads.append(b"")
    assert (outcome(lambda: ext.encode_publishes(topics, payloads, version, retain))
            == outcome(lambda: PURE["encode_publishes"](topics, payloads, version, retain)))


@needs_ext
@settings(max_examples=500, deadline=None)
@given(topic_filter=st.text("ab/+#$é", max_size=8), topic=st.text("ab/$é+#", max_size=8))
def test_topic_matches_matches_pure(topic_filter, topic):
    """Filters and topics over a small alphabet (empty levels, '$', misplaced wildcards)
    match alike."""
    assert ext.topic_matches(topic_filter, topic) is PURE["topic_matches"](topic_filter, topic)


@needs_ext
def test_feed_hands_other_bytes_likes_to_the_pure_feed():
    """A bytearray or memoryview chunk decodes as the pure framer decodes it."""
    wire = encode(Publish("a/b", b"x"), 4) * 2
    for kind in (bytearray, memoryview):
        assert ext.feed(StreamDecoder(4), kind(wire)) == PURE["feed"](StreamDecoder(4), kind(wire))


def test_default_choice_is_compiled_when_built_and_pure_on_request():
    """Without MQTT_TWISTED_PURE the compiled functions are bound when built;
    MQTT_TWISTED_PURE=1 binds the pure ones everywhere."""
    program = ("import mqtt_twisted.codec as c; from mqtt_twisted.codec import _accel, topics, "
               "stream; print(_accel.compiled_in_use(), c.encode_publish is "
               "_accel.PURE['encode_publish'], topics.topic_matches is "
               "_accel.PURE['topic_matches'], stream.StreamDecoder.feed is _accel.PURE['feed'])")
    env = {k: v for k, v in os.environ.items() if k != "MQTT_TWISTED_PURE"}
    default = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True,
                             text=True, check=True).stdout.split()
    built = ext is not None
    assert default == [str(built), str(not built), str(not built), str(not built)]
    pure = subprocess.run([sys.executable, "-c", program], env={**env, "MQTT_TWISTED_PURE": "1"},
                          capture_output=True, text=True, check=True).stdout.split()
    assert pure == ["False", "True", "True", "True"]


def test_missing_extension_falls_back_unless_required():
    """Where the extension is missing the pure codec runs; with MQTT_TWISTED_REQUIRE_EXT=1
    importing the codec fails with a one-line reason instead."""
    program = ("import sys; sys.modules['mqtt_twisted.codec._speedups'] = None\n"
               "from mqtt_twisted.codec import _accel, decode, encode, Publish\n"
               "w = encode(Publish('t', b'x'), 4); assert decode(w, 4).payload == b'x'\n"
               "print(_accel.speedups, _accel.compiled_in_use())")
    env = {k: v for k, v in os.environ.items()
           if k not in ("MQTT_TWISTED_PURE", "MQTT_TWISTED_REQUIRE_EXT")}
    fallback = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True,
                              text=True)
    assert fallback.returncode == 0, fallback.stderr
    assert fallback.stdout.split() == ["None", "False"]
    required = subprocess.run([sys.executable, "-c", program],
                              env={**env, "MQTT_TWISTED_REQUIRE_EXT": "1"},
                              capture_output=True, text=True)
    assert required.returncode != 0
    assert "MQTT_TWISTED_REQUIRE_EXT is set but the compiled codec" in required.stderr


def test_extension_is_built_where_required():
    """CI (MQTT_TWISTED_REQUIRE_EXT=1, a C compiler present) must run the compiled codec:
    a build that silently fell back fails here."""
    if not _accel._flag("MQTT_TWISTED_REQUIRE_EXT"):
        pytest.skip("MQTT_TWISTED_REQUIRE_EXT is not set")
    assert ext is not None
    assert _accel.compiled_in_use() or _accel._flag("MQTT_TWISTED_PURE")


def test_wheel_builds_without_a_working_compiler():
    """``pip wheel .`` with a C compiler that fails (CC=false) still builds, a pure wheel:
    what ``pip install .`` does on a machine without gcc."""
    work = Path(tempfile.mkdtemp(prefix="mqtt-twisted-nocc-"))
    try:
        src = work / "src"
        shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "dist", "*.egg-info", "_speedups*.so", "_qos0*.so",
            "_subscribe*.so", "_trial_temp*",
            ".hypothesis", "__pycache__", "bench", "docs", "tests", "examples"))
        env = {k: v for k, v in os.environ.items()
               if k not in ("MQTT_TWISTED_REQUIRE_EXT", "MQTT_TWISTED_NO_EXT")}
        env.update(CC="false", LDSHARED="false")
        built = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "--no-index", "-q", "-w", str(work), str(src)], capture_output=True, text=True,
            env=env, timeout=300)
        assert built.returncode == 0, built.stdout + built.stderr
        (wheel,) = work.glob("mqtt_twisted-*.whl")
        names = zipfile.ZipFile(wheel).namelist()
        assert "mqtt_twisted/codec/_accel.py" in names
        assert not [n for n in names if n.endswith((".so", ".pyd"))]  # no module compiled
        assert not [n for n in names if n.endswith((".c", ".pyx", ".pxi"))]  # sources stay out
    finally:
        shutil.rmtree(work, ignore_errors=True)


@needs_ext
def test_publish_is_built_without_its_init():
    """The compiled decoder knows Publish's fields, so it builds one without the Python
    frame of its __init__ (half of a small PUBLISH's decoding); a field added to Publish
    makes it call the class instead (correct, slower), and this test says so."""
    assert ext.PUBLISH_FIELDS_KNOWN


@needs_ext
@pytest.mark.slow
def test_seeded_run_of_30k_streams_decodes_alike():
    """-m slow: 30,000 seeded mutated streams of the fuzz corpus, cut at random, under
    random limits and budgets, decode alike in both framers (a few seconds)."""
    rng = random.Random(19)
    for _ in range(30_000):
        version, wire = rng.choice(CORPUS)
        data = mutate(rng, wire, rng.randint(0, 6))
        assert_same_stream(random_chunks(rng, data), version, rng.choice([16, 100, 512, 1 << 28]),
                           rng.choice([0, 0, 1, 2]))


@needs_ext
@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from([b"MQTT", b"MQIsdp", b"MQTX", b"MQT"]),
       level=st.sampled_from([3, 4, 5, 6]), cflags=st.integers(0, 255),
       keep_alive=st.integers(0, 65535), props=st.sampled_from([b"", b"\x00", b"\x05\x11\x00\x00\x00\x0a"]),
       fields=st.lists(st.binary(max_size=8) | st.sampled_from(
           [b"abc", b"", b"a\x00b", "é".encode(), b"\xc0\xaf"]), max_size=4),
       tail=st.sampled_from([b"", b"x"]), cut=st.integers(0, 60))
def test_connect_bodies_decode_alike(name, level, cflags, keep_alive, props, fields, tail, cut):
    """The compiled feed's CONNECT (the usual one: "MQTT" 4 or 5, no will, ASCII ids)
    gives the pure decoder's packet, and leaves every other one to it: a server-side
    stream's first packet, well-formed or not, whole or cut."""
    body = len(name).to_bytes(2, "big") + name + bytes([level, cflags]) + keep_alive.to_bytes(
        2, "big") + (props if level == 5 else b"")
    body += b"".join(len(f).to_bytes(2, "big") + f for f in fields) + tail
    wire = b"\x10" + (bytes([len(body)]) if len(body) < 128 else
                      bytes([len(body) & 0x7F | 0x80, len(body) >> 7])) + body
    assert_same_stream([wire[:cut], wire[cut:]], None, 512)


@needs_ext
def test_connect_is_built_without_its_init():
    """As Publish: a field added to Connect makes the compiled CONNECT call the pure
    decoder instead (correct, slower), and this test says so."""
    assert ext.CONNECT_FIELDS_KNOWN


@needs_ext
@settings(max_examples=200, deadline=None)
@given(version=st.sampled_from([3, 4, 5]), body=st.sampled_from(
    [b"", b"\x00", b"\x04", b"\x8e", b"\x01", b"\x04\x00", b"\x04\x03\x11\x00\x00"])
    | st.binary(max_size=8))
def test_disconnect_bodies_decode_alike(version, body):
    """The compiled DISCONNECT decoder (an empty body built in C) and the pure one give
    the same packet or the same error for every body, in every version."""
    data = b"\xe0" + bytes([len(body)]) + body
    want = outcome(lambda: PURE["decode_disconnect"](0, data, 2, len(data), version))
    got = outcome(lambda: ext.decode_disconnect(0, data, 2, len(data), version))
    assert got == want
    assert _decode.DECODERS[14] is (ext.decode_disconnect if _accel.compiled_in_use()
                                    else PURE["decode_disconnect"])


def test_a_stale_compiled_codec_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A compiled module built from an older source (a tree updated without build_ext)
    lacks a function the switch binds: the pure codec is used, with a warning, rather
    than an AttributeError at import."""
    import types

    stale = types.SimpleNamespace(**{name: object() for name in list(_accel.PURE)[:-1]})
    monkeypatch.setattr(_accel, "load_compiled", lambda module, what: stale)
    monkeypatch.delenv("MQTT_TWISTED_REQUIRE_EXT", raising=False)
    with pytest.warns(RuntimeWarning, match="older than its source"):
        assert _accel._load() is None
    monkeypatch.setenv("MQTT_TWISTED_REQUIRE_EXT", "1")
    with pytest.raises(ImportError, match="stale"):
        _accel._load()
