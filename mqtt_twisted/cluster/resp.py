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


def _bulk(arg: Any) -> bytes:
    if type(arg) is bytes:
        data = arg
    elif isinstance(arg, (bytes, bytearray, memoryview)):
        data = bytes(arg)
    elif isinstance(arg, str):
        data = arg.encode("utf-8")
    elif isinstance(arg, int) and not isinstance(arg, bool):
        data = b"%d" % arg
    elif isinstance(arg, float):
        data = repr(arg).encode()
    else:
        raise TypeError(f"a Redis command argument is bytes, str, int or float, not {arg!r}")
    return b"$%d\r\n%s\r\n" % (len(data), data)


def encode_command(*args: Any) -> bytes:
    """One command as Redis reads it: an array of bulk strings."""
    if not args:
        raise ValueError("a Redis command needs at least its name")
    return b"*%d\r\n" % len(args) + b"".join([_bulk(a) for a in args])


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


class _Incomplete(Exception):
    """More bytes are needed before the reply at the front can be parsed."""


_INCOMPLETE = _Incomplete()


class Parser:
    """Bytes in (``feed``), complete replies out, in the order they arrived."""

    __slots__ = ("_buffer", "_pos", "_need")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._pos = 0
        #: Buffer length below which the front reply is known to be incomplete.
        self._need = 0

    def feed(self, data: bytes) -> list[Reply]:
        """Add ``data``; return every reply it completes (possibly none).  Raises
        :class:`RespProtocolError` for bytes that are not RESP."""
        buffer = self._buffer
        buffer += data
        if len(buffer) < self._need:
            return []
        replies: list[Reply] = []
        end = len(buffer)
        start = 0
        while start < end:
            self._pos = start
            self._need = 0
            try:
                reply = self._parse(0)
            except _Incomplete:
                break
            replies.append(reply)
            start = self._pos
        del buffer[:start]
        if self._need:
            self._need -= start
        return replies

    def _line(self) -> bytes:
        buffer = self._buffer
        pos = self._pos
        end = buffer.find(b"\r\n", pos, pos + MAX_LINE)
        if end < 0:
            if len(buffer) - pos >= MAX_LINE:
                raise RespProtocolError("a RESP header line is too long")
            raise _INCOMPLETE
        self._pos = end + 2
        return bytes(buffer[pos:end])

    def _length(self, line: bytes, limit: int, what: str) -> int:
        try:
            if not line or not (line.isdigit() or (line[:1] == b"-" and line[1:].isdigit())):
                raise ValueError
            n = int(line)
        except ValueError:
            raise RespProtocolError(f"bad RESP {what} length {line[:40]!r}") from None
        if n < -1 or n > limit:
            raise RespProtocolError(f"RESP {what} length {n} out of range")
        return n

    def _parse(self, depth: int) -> Reply:
        buffer = self._buffer
        if self._pos >= len(buffer):
            raise _INCOMPLETE
        kind = buffer[self._pos]
        self._pos += 1
        line = self._line()
        if kind == 0x24:  # $ bulk string
            n = self._length(line, MAX_BULK, "bulk")
            if n == -1:
                return None
            start = self._pos
            stop = start + n
            if len(buffer) < stop + 2:
                self._need = stop + 2
                raise _INCOMPLETE
            if buffer[stop:stop + 2] != b"\r\n":
                raise RespProtocolError("a RESP bulk string does not end with CRLF")
            self._pos = stop + 2
            return bytes(buffer[start:stop])
        if kind == 0x2B:  # + simple string
            return Status(line)
        if kind == 0x3A:  # : integer
            return _integer(line)
        if kind == 0x2D:  # - error
            return ReplyError(line.decode("utf-8", "replace"))
        if kind == 0x2A:  # * array
            n = self._length(line, MAX_ARRAY, "array")
            if n == -1:
                return None
            if depth >= MAX_DEPTH:
                raise RespProtocolError("RESP arrays nested too deep")
            return [self._parse(depth + 1) for _ in range(n)]
        raise RespProtocolError(f"unknown RESP reply type {bytes([kind])!r}")


def _integer(line: bytes) -> int:
    body = line[1:] if line[:1] in (b"-", b"+") else line
    if not body.isdigit() or len(body) > 20:
        raise RespProtocolError(f"bad RESP integer {line[:40]!r}")
    value = int(line)
    if not -(1 << 63) <= value < (1 << 63):
        raise RespProtocolError(f"RESP integer {value} out of range")
    return value
