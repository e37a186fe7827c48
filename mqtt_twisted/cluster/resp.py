"""RESP2, the Redis protocol, sans-IO: commands to bytes, bytes to replies.

The cluster's link to Redis needs what txredisapi 1.6 does not have: Streams
(``XADD``, ``XREADGROUP``, ``XACK``, ``XAUTOCLAIM``), pub/sub replies mixed with
command replies on one parser, and pipelining without reaching into its
internals.  The protocol is small enough to own: this module turns a command
into bytes and a byte stream into replies, and imports nothing from Twisted, so
it is tested (round trips, fuzzing) without a reactor.

Replies are plain values: a simple string is :class:`Status` (a ``bytes``), a
bulk string ``bytes``, an integer ``int``, a null ``None``, an array a ``list``,
and an error reply a :class:`ReplyError` *value* (returned, not raised: it answers
one command and the stream goes on).  Bytes that are not RESP raise
:class:`RespProtocolError`, after which the stream cannot be trusted.
"""

from __future__ import annotations

from typing import Any

from mqtt_twisted.codec import also_switch, load_compiled, stale_compiled
from mqtt_twisted.errors import StorageError

#: The largest bulk string Redis sends (its proto-max-bulk-len default).
MAX_BULK = 512 * 1024 * 1024
#: The largest array accepted, and the deepest nesting: a reply beyond either is not
#: something Redis sends the cluster, and would only let bad bytes eat memory or stack.
MAX_ARRAY = 1 << 24
MAX_DEPTH = 16
#: Longest header line (type byte, a length or a status, CRLF) accepted.
MAX_LINE = 64 * 1024


class Status(bytes):
    """A simple string reply (``+OK``), kept apart from a bulk string of the same bytes."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Status({bytes(self)!r})"


class ReplyError(StorageError):
    """An error reply (``-ERR ...``): returned by the parser, raised by the client."""

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.args == self.args

    def __hash__(self) -> int:
        return hash(self.args)


class RespProtocolError(StorageError):
    """The bytes from the server are not RESP: the connection must be dropped."""


Reply = bytes | int | None | list | ReplyError


def _data(arg: Any) -> bytes:
    """An argument's bytes: bytes-like as they are, text in UTF-8, a number as its digits."""
    if type(arg) is bytes:
        return arg
    if isinstance(arg, (bytes, bytearray, memoryview)):
        return bytes(arg)
    if isinstance(arg, str):
        return arg.encode("utf-8")
    if isinstance(arg, int) and not isinstance(arg, bool):
        return b"%d" % arg
    if isinstance(arg, float):
        return repr(arg).encode()
    raise TypeError(f"a Redis command argument is bytes, str, int or float, not {arg!r}")


def _bulk(arg: Any) -> bytes:
    data = _data(arg)
    return b"$%d\r\n%s\r\n" % (len(data), data)


def encode_command(*args: Any) -> bytes:
    """One command as Redis reads it: an array of bulk strings.  (Bytes arguments, the
    usual ones, inline: no Python call per argument, and a large one, a batch of
    messages, copied once, by the join.)"""
    if not args:
        raise ValueError("a Redis command needs at least its name")
    parts = [b"*%d\r\n" % len(args)]
    append = parts.append
    for arg in args:
        if type(arg) is bytes:
            append(b"$%d\r\n" % len(arg))
            append(arg)
            append(b"\r\n")
        else:
            append(_bulk(arg))
    return b"".join(parts)


def encode_commands(commands: list[tuple[Any, ...]]) -> bytes:
    """Several commands (each a tuple of its arguments) in one bytes: a pipeline's write."""
    return b"".join([encode_command(*args) for args in commands])


def encode_reply(value: Reply) -> bytes:
    """A reply as Redis would send it (for tests and fakes of a server)."""
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, Status):
        return b"+%s\r\n" % bytes(value)
    if isinstance(value, ReplyError):
        return b"-%s\r\n" % str(value.args[0]).encode("utf-8")
    if isinstance(value, bool):
        raise TypeError("RESP2 has no booleans")
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if isinstance(value, list):
        return b"*%d\r\n" % len(value) + b"".join([encode_reply(v) for v in value])
    raise TypeError(f"not a RESP2 reply: {value!r}")


class Parser:
    """Bytes in (``feed``), complete replies out, in the order they arrived.

    Resumable: a reply split over several reads is parsed once, token by token, with
    the arrays under construction kept on a stack between calls (a stream read of
    hundreds of entries arrives in several 64 KiB reads).
    """

    __slots__ = ("_buffer", "_stack")

    def __init__(self) -> None:
        self._buffer = bytearray()
        #: Arrays being filled: [items, how many still to come].
        self._stack: list[list[Any]] = []

    def feed(self, data: bytes) -> list[Reply]:
        """Add ``data``; return every reply it completes (possibly none).  Raises
        :class:`RespProtocolError` for bytes that are not RESP."""
        if (data.count(b":1\r\n") << 2 == len(data) and not self._buffer
                and not self._stack):
            # Nothing but integer replies 1 (a store batch's script, most writes): no
            # token to scan.  (Four bytes each, every byte one of them.)
            return [1] * (len(data) >> 2)
        buf = self._buffer
        buf += data
        stack = self._stack
        replies: list[Reply] = []
        find = buf.find
        n = len(buf)
        pos = 0
        value: Any
        while pos < n:
            eol = find(b"\r\n", pos + 1, pos + MAX_LINE)
            if eol < 0:
                if n - pos >= MAX_LINE:
                    raise RespProtocolError("a RESP header line is too long")
                break
            kind = buf[pos]
            line = bytes(buf[pos + 1:eol])
            if kind == 0x24:  # $ bulk string
                # (The usual length inline, a Python call less per token: an entry of
                # a stream read is seven of them.)
                if line.isdigit() and len(line) < 9:  # below MAX_BULK
                    length = int(line)
                else:
                    length = _length(line, MAX_BULK, "bulk")
                if length < 0:
                    value = None
                    pos = eol + 2
                else:
                    stop = eol + 2 + length
                    if stop + 2 > n:
                        break  # the rest of it has not arrived: resume at this token
                    if buf[stop:stop + 2] != b"\r\n":
                        raise RespProtocolError("a RESP bulk string does not end with CRLF")
                    value = bytes(buf[eol + 2:stop])
                    pos = stop + 2
            elif kind == 0x2A:  # * array
                if line.isdigit() and len(line) < 8:  # below MAX_ARRAY
                    length = int(line)
                else:
                    length = _length(line, MAX_ARRAY, "array")
                pos = eol + 2
                if length > 0:
                    if len(stack) >= MAX_DEPTH:
                        raise RespProtocolError("RESP arrays nested too deep")
                    stack.append([[], length])
                    continue
                value = None if length < 0 else []
            elif kind == 0x2B:  # + simple string
                value = Status(line)
                pos = eol + 2
            elif kind == 0x3A:  # : integer
                value = _integer(line)
                pos = eol + 2
            elif kind == 0x2D:  # - error
                value = ReplyError(line.decode("utf-8", "replace"))
                pos = eol + 2
            else:
                raise RespProtocolError(f"unknown RESP reply type {bytes([kind])!r}")
            while stack:  # the value completes its array, which may complete its own...
                top = stack[-1]
                top[0].append(value)
                top[1] -= 1
                if top[1]:
                    break
                value = top[0]
                stack.pop()
            else:
                replies.append(value)
        del buf[:pos]
        return replies


def _length(line: bytes, limit: int, what: str) -> int:
    if line.isdigit():
        n = int(line)
    elif line == b"-1":
        return -1
    else:
        raise RespProtocolError(f"bad RESP {what} length {line[:40]!r}")
    if n > limit:
        raise RespProtocolError(f"RESP {what} length {n} out of range")
    return n


def _integer(line: bytes) -> int:
    body = line[1:] if line[:1] in (b"-", b"+") else line
    if not body.isdigit() or len(body) > 20:
        raise RespProtocolError(f"bad RESP integer {line[:40]!r}")
    value = int(line)
    if not -(1 << 63) <= value < (1 << 63):
        raise RespProtocolError(f"RESP integer {value} out of range")
    return value


#: The pure ``Parser.feed``, ``encode_command`` and ``encode_commands`` (the
#: specification), and their compiled twins where built (``cluster/_resp.pyx``,
#: setup.py): bound in their place with the codec's switch (``MQTT_TWISTED_PURE=1``,
#: ``codec._accel.use``; ``MQTT_TWISTED_REQUIRE_EXT=1`` makes a missing build an
#: ImportError).  The parser's twin hands any unusual token to the pure one; the
#: encoders' twins make a non-``bytes`` argument bytes with the pure ``_data``.  Callers
#: use ``resp.encode_command``, not a copy of the name, so that the switch reaches them.
_pure_feed = Parser.feed
_pure_encode_command = encode_command
_pure_encode_commands = encode_commands
_twin = load_compiled("mqtt_twisted.cluster._resp", "the compiled RESP parser")
if _twin is not None and not hasattr(_twin, "encode_commands"):
    _twin = stale_compiled("mqtt_twisted.cluster._resp", "encode_commands")
if _twin is not None:
    _twin.use_pure(_pure_feed, Status, MAX_LINE, MAX_DEPTH, _data)


def use(compiled: bool) -> bool:
    """Bind the compiled parser and encoders (when built) or the pure ones; True for
    compiled."""
    global encode_command, encode_commands
    chosen = bool(compiled and _twin is not None)
    if chosen:
        Parser.feed = _twin.feed  # type: ignore[method-assign,union-attr]
        encode_command = _twin.encode_command  # type: ignore[union-attr]
        encode_commands = _twin.encode_commands  # type: ignore[union-attr]
    else:
        Parser.feed = _pure_feed  # type: ignore[method-assign]
        encode_command = _pure_encode_command
        encode_commands = _pure_encode_commands
    return chosen


also_switch(use)
