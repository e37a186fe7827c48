"""``encode_publishes``: a slice of retained QoS 0 PUBLISHes encoded as one buffer
(issue 19), in both implementations (tests/codecimpl.py): byte-exact vectors, the same
bytes as each PUBLISH encoded alone, and the same errors."""

from __future__ import annotations

import random

import pytest

from mqtt_twisted.codec import _encode, encode_publish
from mqtt_twisted.codec.packets import Publish
from mqtt_twisted.errors import ValidationError
from tests.codecimpl import codec_impl  # noqa: F401  (pure and compiled)


def encode_publishes(*args):
    return _encode.encode_publishes(*args)  # the implementation bound now


def test_vectors() -> None:
    """Two PUBLISHes, retain=1, v3.1.1 then v5 (whose property length is 0)."""
    topics, payloads = ["a/b", "é"], [b"xy", b""]
    v4 = bytes.fromhex("31 07 0003 612f62 7879" "31 04 0002 c3a9")
    v5 = bytes.fromhex("31 08 0003 612f62 00 7879" "31 05 0002 c3a9 00")
    assert encode_publishes(topics, payloads, 4) == v4
    assert encode_publishes(topics, payloads, 5) == v5
    assert encode_publishes(topics, payloads, 4, False)[0] == 0x30
    assert encode_publishes([], [], 4) == b""


@pytest.mark.parametrize("version", [3, 4, 5])
@pytest.mark.parametrize("retain", [True, False])
def test_same_bytes_as_each_publish_alone(version: int, retain: bool) -> None:
    """Random topics and payloads, lengths across each remaining-length size, give the
    bytes of encode_publish for each, joined."""
    rng = random.Random(version * 2 + retain)
    topics = ["".join(rng.choice("ab/é$ ") for _ in range(rng.randint(1, 40)))
              for _ in range(60)]
    sizes = [0, 1, 120, 121, 122, 127, 128, 16375, 16376, 16383, 16384, 70000]
    payloads = [bytes(rng.getrandbits(8) for _ in range(rng.choice(sizes[:6])))
                for _ in range(48)] + [bytes(n) for n in sizes]
    want = b"".join(encode_publish(Publish(t, p, 0, retain), version)
                    for t, p in zip(topics, payloads))
    assert encode_publishes(topics, payloads, version, retain) == want


@pytest.mark.parametrize("topic, error", [
    ("a\ud800", "topic holds a lone surrogate"),
    ("x\x00", "topic longer than 65,535 bytes or holding U+0000"),
    ("é" * 40000, "topic longer than 65,535 bytes or holding U+0000"),
])
def test_invalid_topic_raises_what_encode_publish_raises(topic: str, error: str) -> None:
    with pytest.raises(ValidationError) as raised:
        encode_publishes(["ok", topic], [b"", b""], 4)
    assert str(raised.value) == error


def test_lengths_must_agree() -> None:
    with pytest.raises(ValueError):
        encode_publishes(["a", "b"], [b""], 4)
