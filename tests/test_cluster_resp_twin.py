"""The RESP parser's and encoders' compiled twins (cluster/_resp.pyx) against the pure
ones.

The pure ``Parser.feed`` is the specification: fed the same bytes in the same pieces,
the twin must give the same replies (``Status`` kept apart from bulk strings), keep
the same buffer and array stack between pieces, and raise the same error for bytes
that are not RESP.  Streams: random replies (nested arrays, nulls, errors, signed and
large integers, long and empty strings, the integer 1 runs of the pure shortcut), cut
anywhere, and mangled.  The encoders: the same bytes for the same arguments (bytes of
every length around a digit boundary, text, integers, floats, bytes-like), the same error
for an argument Redis cannot take or a command with no name.
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


def random_argument(rng: random.Random) -> Any:
    kind = rng.randrange(10)
    if kind < 5:  # bytes, the usual argument: lengths either side of 10, 100, 1000, 10000
        return rng.randbytes(rng.choice([0, 1, 9, 10, 11, 99, 100, 101, 999, 1000, 10000]))
    if kind == 5:
        return rng.choice(["", "inbox", "é-ß-中", "x" * 300])
    if kind == 6:
        return rng.choice([0, 7, -1, 10, 99, 100, 2**63, -(2**70), 10**30])
    if kind == 7:
        return rng.choice([0.5, -1e300, 3.0, float("inf")])
    if kind == 8:
        return bytearray(rng.randbytes(rng.randrange(20)))
    return memoryview(rng.randbytes(rng.randrange(20)))


def outcome(encode: Any, *args: Any) -> Any:
    try:
        return encode(*args)
    except Exception as e:
        return type(e), str(e)


@needs_build
def test_commands_encode_as_the_pure_encoder_does() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        args = [rng.choice([b"XADD", b"EVALSHA", "SET"])]
        args += [random_argument(rng) for _ in range(rng.choice([0, 1, 2, 9, 10, 11, 120]))]
        want = resp._pure_encode_command(*args)
        assert twin.encode_command(*args) == want  # type: ignore[union-attr]
        # (the pure encoder's output is a RESP array of bulk strings: parsed back, it
        # gives every argument's bytes)
        assert Parser().feed(want) == [[resp._data(a) for a in args]]
    for _ in range(300):
        commands = [tuple([b"XACK"] + [random_argument(rng) for _ in range(rng.randrange(6))])
                    for _ in range(rng.choice([0, 1, 2, 25]))]
        assert (twin.encode_commands(commands)  # type: ignore[union-attr]
                == resp._pure_encode_commands(commands)
                == b"".join(resp._pure_encode_command(*c) for c in commands))


@needs_build
@pytest.mark.parametrize("args", [(), (b"SET", True), (b"SET", None), (b"SET", object()),
                                  (b"SET", [b"a"]), (True,)])
def test_arguments_redis_cannot_take(args: tuple[Any, ...]) -> None:
    """No name, a bool, None or another object: the pure encoder's error, from both."""
    want = outcome(resp._pure_encode_command, *args)
    assert isinstance(want, tuple) and want[0] in (ValueError, TypeError)
    assert outcome(twin.encode_command, *args) == want  # type: ignore[union-attr]
    commands = [(b"PING",), args]
    assert (outcome(twin.encode_commands, commands)  # type: ignore[union-attr]
            == outcome(resp._pure_encode_commands, commands))


def test_the_switch(restore_codec: None) -> None:
    """Compiled where built (by default), pure when the codec's switch says so; the
    encoders are switched with the parser, where the Redis clients call them."""
    _accel.use(True)
    assert (Parser.feed is twin.feed) if twin is not None else (Parser.feed is resp._pure_feed)
    if twin is not None:
        assert resp.encode_command is twin.encode_command
        assert resp.encode_commands is twin.encode_commands
    _accel.use(False)
    assert Parser.feed is resp._pure_feed
    assert resp.encode_command is resp._pure_encode_command
    assert resp.encode_commands is resp._pure_encode_commands
    assert Parser().feed(b"+OK\r\n$2\r\nab\r\n") == [Status(b"OK"), b"ab"]


def test_the_clients_call_the_switched_encoders() -> None:
    """The cluster's client, the Sentinel probe and the store's batches reach the
    encoders through ``resp``, so the switch reaches them (no copy of the name)."""
    from mqtt_twisted.cluster import client
    from mqtt_twisted.store import _redisbatch, sentinel

    for module in (client, sentinel, _redisbatch):
        assert not hasattr(module, "encode_command"), module.__name__
        assert not hasattr(module, "encode_commands"), module.__name__
        assert module.resp is resp


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


def test_a_stale_build_is_not_used() -> None:
    """A ``_resp`` built from an older source (a parser, no encoders) is not bound: the
    pure code runs, with a warning; with MQTT_TWISTED_REQUIRE_EXT=1 it is an ImportError."""
    program = ("import sys, types, warnings\n"
               "sys.modules['mqtt_twisted.cluster._resp'] = types.SimpleNamespace(\n"
               "    feed=None, use_pure=lambda *a: None)\n"
               "warnings.simplefilter('always')\n"
               "from mqtt_twisted.cluster import resp\n"
               "print('pure' if resp.encode_command is resp._pure_encode_command\n"
               "      and resp.Parser.feed is resp._pure_feed else 'compiled')")
    env = {k: v for k, v in os.environ.items()
           if k not in ("MQTT_TWISTED_PURE", "MQTT_TWISTED_REQUIRE_EXT")}
    done = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["pure"]
    assert "older than its source (no encode_commands)" in done.stderr
    required = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                              env={**env, "MQTT_TWISTED_REQUIRE_EXT": "1"})
    assert required.returncode != 0 and "is stale: no encode_commands" in required.stderr
