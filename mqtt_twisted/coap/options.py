"""CoAP option numbers, their properties and value formats (RFC 7252 §5.4, §12.2;
RFC 7641 Observe; RFC 7959 Block1/Block2, Size1/Size2).

An option number's low bits say what a receiver that does not know it must do:
odd numbers are *critical* (a request carrying an unknown critical option is
answered 4.02 Bad Option), bit 1 marks an option *unsafe* to forward.  A value
whose length is outside its option's range counts as unrecognised (§5.4.3).
"""

from __future__ import annotations

from dataclasses import dataclass

IF_MATCH = 1
URI_HOST = 3
ETAG = 4
IF_NONE_MATCH = 5
OBSERVE = 6
URI_PORT = 7
LOCATION_PATH = 8
URI_PATH = 11
CONTENT_FORMAT = 12
MAX_AGE = 14
URI_QUERY = 15
ACCEPT = 17
LOCATION_QUERY = 20
BLOCK2 = 23
BLOCK1 = 27
SIZE2 = 28
PROXY_URI = 35
PROXY_SCHEME = 39
SIZE1 = 60
NO_RESPONSE = 258

UINT, STRING, OPAQUE, EMPTY = "uint", "string", "opaque", "empty"

#: number -> (name, format, shortest value, longest value)
KNOWN: dict[int, tuple[str, str, int, int]] = {
    IF_MATCH: ("If-Match", OPAQUE, 0, 8),
    URI_HOST: ("Uri-Host", STRING, 1, 255),
    ETAG: ("ETag", OPAQUE, 1, 8),
    IF_NONE_MATCH: ("If-None-Match", EMPTY, 0, 0),
    OBSERVE: ("Observe", UINT, 0, 3),
    URI_PORT: ("Uri-Port", UINT, 0, 2),
    LOCATION_PATH: ("Location-Path", STRING, 0, 255),
    URI_PATH: ("Uri-Path", STRING, 0, 255),
    CONTENT_FORMAT: ("Content-Format", UINT, 0, 2),
    MAX_AGE: ("Max-Age", UINT, 0, 4),
    URI_QUERY: ("Uri-Query", STRING, 0, 255),
    ACCEPT: ("Accept", UINT, 0, 2),
    LOCATION_QUERY: ("Location-Query", STRING, 0, 255),
    BLOCK2: ("Block2", UINT, 0, 3),
    BLOCK1: ("Block1", UINT, 0, 3),
    SIZE2: ("Size2", UINT, 0, 4),
    PROXY_URI: ("Proxy-Uri", STRING, 1, 1034),
    PROXY_SCHEME: ("Proxy-Scheme", STRING, 1, 255),
    SIZE1: ("Size1", UINT, 0, 4),
    NO_RESPONSE: ("No-Response", UINT, 0, 1),
}

#: Content-Format numbers (RFC 7252 §12.3 and the IANA registry) and the media types
#: an MQTT 5 Content Type property carries.
CONTENT_FORMATS: dict[int, str] = {
    0: "text/plain;charset=utf-8",
    40: "application/link-format",
    41: "application/xml",
    42: "application/octet-stream",
    47: "application/exi",
    50: "application/json",
    60: "application/cbor",
}
FORMAT_OF_TYPE = {name: number for number, name in CONTENT_FORMATS.items()}


def is_critical(number: int) -> bool:
    return bool(number & 1)


def is_unsafe(number: int) -> bool:
    return bool(number & 2)


def is_no_cache_key(number: int) -> bool:
    return number & 0x1E == 0x1C


def name_of(number: int) -> str:
    known = KNOWN.get(number)
    return known[0] if known else f"option {number}"


def encode_uint(value: int) -> bytes:
    """The shortest big-endian form of ``value`` (0 is the empty string, §3.2)."""
    if value < 0:
        raise ValueError(f"a uint option cannot be negative: {value}")
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def decode_uint(data: bytes) -> int:
    return int.from_bytes(data, "big")


def well_formed(number: int, value: bytes, bert: bool = False) -> bool:
    """Whether ``value`` fits a known option's length range (unknown options: True).
    ``bert``: over TCP, where SZX 7 in a Block option means BERT (RFC 8323 §6)."""
    known = KNOWN.get(number)
    if known is None:
        return True
    _, kind, low, high = known
    if not low <= len(value) <= high:
        return False
    if kind == STRING:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return False
    if number in (BLOCK1, BLOCK2) and value and value[-1] & 7 == 7 and not bert:
        return False  # SZX 7 is reserved (RFC 7959 §2.2), but BERT over TCP
    return True


def bad_critical(options: list[tuple[int, bytes]], understood: frozenset[int],
                 bert: bool = False) -> list[int]:
    """The critical options a receiver understanding ``understood`` must refuse: unknown
    to it, or with a value out of range (RFC 7252 §5.4.1, §5.4.3)."""
    return [n for n, v in options
            if is_critical(n) and (n not in understood or not well_formed(n, v, bert))]


@dataclass(frozen=True, slots=True)
class Block:
    """A Block1/Block2 value: block number, more flag, size exponent (size 2**(szx+4))."""

    num: int
    more: bool
    szx: int

    @property
    def size(self) -> int:
        """Bytes per block; for BERT (SZX 7, RFC 8323 §6) the unit its number counts,
        1024, a piece carrying any multiple of it."""
        return 1 << (min(self.szx, 6) + 4)

    @property
    def bert(self) -> bool:
        return self.szx == 7

    @property
    def offset(self) -> int:
        return self.num * self.size

    def encode(self) -> bytes:
        return encode_uint(self.num << 4 | int(self.more) << 3 | self.szx)

    @classmethod
    def decode(cls, data: bytes) -> Block:
        value = decode_uint(data)
        return cls(value >> 4, bool(value & 8), value & 7)
