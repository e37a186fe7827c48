"""Block-wise transfers (RFC 7959), without I/O: large request bodies come in Block1
pieces and are put together here, large answers and notifications go out in Block2
pieces cut from a representation kept here until the client has fetched the rest.

Both stores are bounded: in bytes for the whole listener, in time (``lifetime``
seconds on the injected clock), and a body is refused (4.13) past ``max_body``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

from mqtt_twisted.coap import message as m
from mqtt_twisted.coap import options as opt
from mqtt_twisted.coap.mapping import CoapError
from mqtt_twisted.coap.options import Block

#: The largest block (SZX 6, 1024 bytes): what fits a datagram on any path.
MAX_SZX = 6
#: Seconds a half-received body or a half-fetched representation is kept.
LIFETIME = 60.0

Key = tuple[Any, ...]


def request_key(peer: Any, request: m.CoapMessage) -> Key:
    """Which transfer a request belongs to: its sender and its URI (RFC 7959 §2.4)."""
    return (peer, tuple(request.values(opt.URI_PATH)), tuple(request.values(opt.URI_QUERY)))


def szx_for(size: int) -> int:
    """The SZX of a block size (a power of two, 16..1024)."""
    if size not in (16, 32, 64, 128, 256, 512, 1024):
        raise ValueError(f"a block size must be a power of two from 16 to 1024, not {size}")
    return size.bit_length() - 5


def block_of(message: m.CoapMessage, number: int) -> Block | None:
    value = message.option(number)
    return None if value is None else Block.decode(value)


def cut(payload: bytes, num: int, szx: int) -> tuple[bytes, Block]:
    """Block ``num`` of ``payload`` at size ``szx`` and its Block2 value; CoapError 4.02
    for a block past the end (RFC 7959 §2.2)."""
    size = 1 << (szx + 4)
    start = num * size
    if num and start >= len(payload):
        raise CoapError(m.BAD_OPTION, f"block {num} is past the end of the "
                        f"{len(payload)}-byte representation")
    return payload[start:start + size], Block(num, start + size < len(payload), szx)


class _Bounded:
    """Entries by key, oldest first, dropped when older than ``lifetime`` or when
    ``limit`` bytes are held."""

    def __init__(self, clock: Any, limit: int, lifetime: float = LIFETIME) -> None:
        self.clock = clock
        self.limit = limit
        self.lifetime = lifetime
        self.entries: OrderedDict[Key, tuple[float, Any, int]] = OrderedDict()
        self.size = 0

    def __len__(self) -> int:
        return len(self.entries)

    def _purge(self) -> None:
        horizon = self.clock.seconds() - self.lifetime
        entries = self.entries
        while entries:
            key, (when, _, size) = next(iter(entries.items()))
            if when > horizon and self.size <= self.limit:
                break
            del entries[key]
            self.size -= size

    def _get(self, key: Key) -> Any:
        self._purge()
        found = self.entries.get(key)
        return None if found is None else found[1]

    def _put(self, key: Key, value: Any, size: int) -> None:
        self._pop(key)
        self.entries[key] = (self.clock.seconds(), value, size)
        self.size += size
        self._purge()

    def _pop(self, key: Key) -> Any:
        found = self.entries.pop(key, None)
        if found is None:
            return None
        self.size -= found[2]
        return found[1]


class Representations(_Bounded):
    """Answers too large for one block, kept so that the client can fetch the others;
    each has an ETag so that a client can tell when the resource changed meanwhile."""

    def store(self, key: Key, payload: bytes) -> bytes:
        etag = os.urandom(4)
        self._put(key, (etag, payload), len(payload))
        return etag

    def get(self, key: Key) -> tuple[bytes, bytes] | None:
        return self._get(key)


class Reassembly(_Bounded):
    """Request bodies coming in Block1 pieces (RFC 7959 §2.5), each at most ``max_body``
    bytes and all of them together at most ``limit``."""

    def __init__(self, clock: Any, limit: int, max_body: int,
                 lifetime: float = LIFETIME) -> None:
        super().__init__(clock, limit, lifetime)
        self.max_body = max_body

    def add(self, key: Key, block: Block, payload: bytes, size1: int | None) -> bytes | None:
        """Take one block; the whole body once the last one is in, else None (answer
        2.31 Continue).  CoapError 4.13 past the size limit, 4.08 for a block out of
        order, 4.00 for a non-final block of the wrong size."""
        too_large = CoapError(m.REQUEST_ENTITY_TOO_LARGE,
                              f"the body is larger than {self.max_body} bytes",
                              [(opt.SIZE1, opt.encode_uint(self.max_body))])
        if size1 is not None and size1 > self.max_body:
            self._pop(key)
            raise too_large
        if block.more and (len(payload) != block.size if not block.bert
                           else not payload or len(payload) % block.size):
            self._pop(key)
            raise CoapError(m.BAD_REQUEST, f"block {block.num} has {len(payload)} bytes, "
                            f"not {block.size}")
        if block.num == 0:
            body = b""
        else:
            body = self._get(key)
            if body is None or len(body) != block.offset:
                self._pop(key)
                raise CoapError(m.REQUEST_ENTITY_INCOMPLETE,
                                f"block {block.num} does not follow what was received")
        body += payload
        if len(body) > self.max_body:
            self._pop(key)
            raise too_large
        if not block.more:
            self._pop(key)
            return body
        if len(body) + self.size - len(self._get(key) or b"") > self.limit:
            raise CoapError(m.SERVICE_UNAVAILABLE, "too many large bodies are being received")
        self._put(key, body, len(body))
        return None
