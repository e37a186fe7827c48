"""The RESP parser's compiled twin (cluster/_resp.pyx) against the pure one.

The pure ``Parser.feed`` is the specification: fed the same bytes in the same pieces,
the twin must give the same replies (``Status`` kept apart from bulk strings), keep
the same buffer and array stack between pieces, and raise the same error for bytes
that are not RESP.  Streams: random replies (nested arrays, nulls, errors, signed and
large integers, long and empty strings, the integer 1 runs of the pure shortcut), cut
anywhere, and mangled.
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
from typing import Any

import pytest

from mqtt_twisted.cluster import resp
from mqtt_twisted.cluster.resp import Parser, ReplyError, Status, encode_reply
from mqtt_twisted.codec import _accel

twin = resp._twin
needs_build = pytest.mark.skipif(twin is None, reason="cluster/_resp.pyx is not built here")


def random_reply(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.randbytes(rng.choice([0, 1, 5, 40, 300, 2000]))
    if kind == 1:
        return Status(rng.choice([b"OK", b"QUEUED", b"PONG", b""]))
    if kind == 2:
        return rng.choice([0, 1, 7, 123456, -1, -99, 10**17, 10**18 + 5, 2**62, -(2**63)])
    if kind == 3:
        return None
    if kind == 4:
        return ReplyError(rng.choice(["ERR wrong", "NOGROUP no such key", "é"]))
    if kind == 5:
        return b"1700000000000-%d" % rng.randrange(100)
    return [random_reply(rng, depth + 1) for _ in range(rng.choice([0, 1, 2, 4, 7]))]


def stream(rng: random.Random) -> bytes:
    if rng.random() < 0.1:
        return b":1\r\n" * rng.randrange(1, 20)
    return b"".join(encode_reply(random_reply(rng)) for _ in range(rng.randrange(1, 8)))


def run(feed: Any, pieces: list[bytes]) -> tuple[list[Any], Any, bytes, Any]:
    """Replies (with their types), the error raised (class and message) if any, and
    the parser's state afterwards."""
    parser = Parser()
    replies: list[Any] = []
    error = None
    try:
        for piece in pieces:
            replies += feed(parser, piece)
    except Exception as e:
        error = (type(e), str(e))
        return [], error, b"", None
    typed = [(type(r), r) for r in replies]
    return typed, error, bytes(parser._buffer), repr(parser._stack)


def cut(rng: random.Random, data: bytes) -> list[bytes]:
    points = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.randrange(0, 6))))
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@needs_build
@pytest.mark.parametrize("seed", range(300))
def test_same_replies_in_any_pieces(seed: int) -> None:
    rng = random.Random(seed)
    data = b"".join(stream(rng) for _ in range(rng.randrange(1, 4)))
    pieces = cut(rng, data)
    assert run(twin.feed, pieces) == run(resp._pure_feed, pieces)  # type: ignore[union-attr]


@needs_build
@pytest.mark.parametrize("seed", range(300))
def test_same_errors_on_mangled_bytes(seed: int) -> None:
    rng = random.Random(1000 + seed)
    data = bytearray(stream(rng))
    for _ in range(rng.randrange(1, 4)):
        at = rng.randrange(len(data))
        data[at] = rng.choice(b"\r\n$*+-:0123456789x\x00\xff")
    if rng.random() < 0.2:
        data += b"$" + b"9" * rng.randrange(1, 12) + b"\r\n"
    if rng.random() < 0.1:
        data += b"*1\r\n" * 20  # deeper than MAX_DEPTH
    pieces = cut(rng, bytes(data))
    assert run(twin.feed, pieces) == run(resp._pure_feed, pieces)  # type: ignore[union-attr]


@needs_build
def test_a_long_header_line() -> None:
    """No CRLF within MAX_LINE: the same error; fewer bytes: both wait for more."""
    for data in (b"+" + b"x" * (resp.MAX_LINE + 10), b"+" + b"x" * 100, b"$5\r\nab"):
        assert run(twin.feed, [data]) == run(resp._pure_feed, [data])  # type: ignore[union-attr]


def test_the_switch(restore_codec: None) -> None:
    """Compiled where built (by default), pure when the codec's switch says so."""
    _accel.use(True)
    assert (Parser.feed is twin.feed) if twin is not None else (Parser.feed is resp._pure_feed)
    _accel.use(False)
    assert Parser.feed is resp._pure_feed
    assert Parser().feed(b"+OK\r\n$2\r\nab\r\n") == [Status(b"OK"), b"ab"]


@pytest.fixture
def restore_codec() -> Any:
    was = _accel.compiled_in_use()
    yield
    _accel.use(was)


def _choice(env_extra: dict[str, str], block: bool = False) -> subprocess.CompletedProcess:
    program = ("import sys\n"
               + ("sys.modules['mqtt_twisted.cluster._resp'] = None\n" if block else "")
               + "from mqtt_twisted.cluster import resp\n"
               "print('pure' if resp.Parser.feed is resp._pure_feed else 'compiled')")
    env = {k: v for k, v in os.environ.items()
           if k not in ("MQTT_TWISTED_PURE", "MQTT_TWISTED_REQUIRE_EXT")}
    return subprocess.run([sys.executable, "-c", program], env={**env, **env_extra},
                          capture_output=True, text=True)


def test_choice_at_import() -> None:
    """Compiled where built, pure with MQTT_TWISTED_PURE=1 or where it is missing; a
    missing build with MQTT_TWISTED_REQUIRE_EXT=1 is an ImportError."""
    default = _choice({})
    assert default.returncode == 0, default.stderr
    assert default.stdout.split() == ["compiled" if twin is not None else "pure"]
    assert _choice({"MQTT_TWISTED_PURE": "1"}).stdout.split() == ["pure"]
    assert _choice({}, block=True).stdout.split() == ["pure"]
    required = _choice({"MQTT_TWISTED_REQUIRE_EXT": "1"}, block=True)
    assert required.returncode != 0 and "is not importable" in required.stderr
