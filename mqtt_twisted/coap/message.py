"""RFC 7252 CoAP messages: bytes in, :class:`CoapMessage` out, and back.

Sans-IO, like the MQTT codec: :func:`decode` takes one UDP datagram and returns a
message or raises :class:`CoapFormatError` (never IndexError, UnicodeError or a bare
ValueError), carrying what it could read of the header so that the adapter can
reject a confirmable message with an RST (§4.2).  Options are kept as ``(number,
value)`` pairs in wire order, unknown ones included: what to refuse is the
receiver's business (:func:`mqtt_twisted.coap.options.bad_critical`).  The option
walk is shared with the RFC 8323 framing in :mod:`mqtt_twisted.coap.tcp`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mqtt_twisted.coap import options as opt

VERSION = 1
CON, NON, ACK, RST = range(4)
TYPE_NAMES = ("CON", "NON", "ACK", "RST")
PAYLOAD_MARKER = 0xFF
MAX_TOKEN = 8
#: The largest option number the extended forms can carry and we accept.
MAX_OPTION_NUMBER = 0xFFFF


def code(cls: int, detail: int) -> int:
    """``code(2, 5)`` is 2.05 Content (the code byte: class << 5 | detail)."""
    return cls << 5 | detail


EMPTY = 0
GET, POST, PUT, DELETE, FETCH, PATCH, IPATCH = 1, 2, 3, 4, 5, 6, 7
CREATED, DELETED, VALID, CHANGED, CONTENT, CONTINUE = (code(2, d) for d in (1, 2, 3, 4, 5, 31))
BAD_REQUEST, UNAUTHORIZED, BAD_OPTION, FORBIDDEN, NOT_FOUND, METHOD_NOT_ALLOWED = (
    code(4, d) for d in (0, 1, 2, 3, 4, 5))
NOT_ACCEPTABLE = code(4, 6)
REQUEST_ENTITY_INCOMPLETE = code(4, 8)
PRECONDITION_FAILED = code(4, 12)
REQUEST_ENTITY_TOO_LARGE = code(4, 13)
UNSUPPORTED_CONTENT_FORMAT = code(4, 15)
TOO_MANY_REQUESTS = code(4, 29)
INTERNAL_SERVER_ERROR, NOT_IMPLEMENTED, BAD_GATEWAY, SERVICE_UNAVAILABLE = (
    code(5, d) for d in (0, 1, 2, 3))


def code_text(value: int) -> str:
    """``2.05`` for 69."""
    return f"{value >> 5}.{value & 31:02d}"


def is_request(value: int) -> bool:
    return value >> 5 == 0 and value != EMPTY


def is_response(value: int) -> bool:
    return 2 <= value >> 5 <= 5


class CoapFormatError(ValueError):
    """Bytes that are not a CoAP message; ``type``, ``mid`` and ``token`` are what the
    header gave before the error (None where it was not reached)."""

    def __init__(self, reason: str, type: int | None = None, mid: int | None = None,
                 token: bytes | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.type = type
        self.mid = mid
        self.token = token


@dataclass(slots=True)
class CoapMessage:
    """One CoAP message.  ``options`` are ``(number, value)`` pairs; the encoder sorts
    them by number (stably: repeated options keep their order)."""

    type: int
    code: int
    mid: int = 0
    token: bytes = b""
    options: list[tuple[int, bytes]] = field(default_factory=list)
    payload: bytes = b""

    # --- options -------------------------------------------------------------------

    def option(self, number: int) -> bytes | None:
        """The first value of option ``number``, or None."""
        for n, v in self.options:
            if n == number:
                return v
        return None

    def values(self, number: int) -> list[bytes]:
        return [v for n, v in self.options if n == number]

    def strings(self, number: int) -> list[str]:
        """Every value of a string option (Uri-Path, Uri-Query), decoded (bad UTF-8 is
        replaced: a request with such a value is refused before this is asked)."""
        return [v.decode("utf-8", "replace") for n, v in self.options if n == number]

    def uint(self, number: int) -> int | None:
        value = self.option(number)
        return None if value is None else opt.decode_uint(value)

    def add(self, number: int, value: bytes | str | int) -> CoapMessage:
        if isinstance(value, int):
            value = opt.encode_uint(value)
        elif isinstance(value, str):
            value = value.encode("utf-8")
        self.options.append((number, value))
        return self

    def __repr__(self) -> str:
        names = ", ".join(f"{opt.name_of(n)}={v!r}" for n, v in self.options)
        return (f"<CoAP {TYPE_NAMES[self.type]} {code_text(self.code)} mid={self.mid} "
                f"token={self.token.hex()} [{names}] {len(self.payload)}B>")


# --- options on the wire ------------------------------------------------------------------


def _nibble(value: int) -> tuple[int, bytes]:
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes((value - 13,))
    return 14, (value - 269).to_bytes(2, "big")


def encode_options(options: list[tuple[int, bytes]], payload: bytes) -> bytes:
    """Options (delta/length encoded, sorted by number) and the payload after 0xFF."""
    out = bytearray()
    last = 0
    for number, value in sorted(options, key=lambda o: o[0]):
        if not 0 <= number <= MAX_OPTION_NUMBER:
            raise ValueError(f"option number {number} is out of range")
        if len(value) > 65535 + 269:
            raise ValueError(f"option {number} is too long ({len(value)} bytes)")
        d, dx = _nibble(number - last)
        n, nx = _nibble(len(value))
        out.append(d << 4 | n)
        out += dx
        out += nx
        out += value
        last = number
    if payload:
        out.append(PAYLOAD_MARKER)
        out += payload
    return bytes(out)


def decode_options(data: bytes | memoryview, pos: int,
                   **where: object) -> tuple[list[tuple[int, bytes]], bytes]:
    """The options and payload from ``pos`` to the end of ``data``; ``where`` (type,
    mid, token) goes into the CoapFormatError raised for a bad one."""

    def error(reason: str) -> CoapFormatError:
        return CoapFormatError(reason, **where)  # type: ignore[arg-type]

    end = len(data)
    options: list[tuple[int, bytes]] = []
    number = 0
    while pos < end:
        byte = data[pos]
        pos += 1
        if byte == PAYLOAD_MARKER:
            if pos == end:
                raise error("a payload marker with no payload")
            return options, bytes(data[pos:])
        fields = []
        for nibble in (byte >> 4, byte & 15):
            if nibble == 15:
                raise error("option delta or length nibble 15 is reserved")
            if nibble == 13:
                if pos + 1 > end:
                    raise error("truncated extended option field")
                nibble = data[pos] + 13
                pos += 1
            elif nibble == 14:
                if pos + 2 > end:
                    raise error("truncated extended option field")
                nibble = (data[pos] << 8 | data[pos + 1]) + 269
                pos += 2
            fields.append(nibble)
        delta, length = fields
        number += delta
        if number > MAX_OPTION_NUMBER:
            raise error(f"option number {number} is out of range")
        if pos + length > end:
            raise error(f"option {number} runs past the end of the message")
        options.append((number, bytes(data[pos:pos + length])))
        pos += length
    return options, b""


# --- messages ---------------------------------------------------------------------------------


def encode(message: CoapMessage) -> bytes:
    """The datagram for ``message``."""
    token = message.token
    if len(token) > MAX_TOKEN:
        raise ValueError(f"a token has at most 8 bytes, not {len(token)}")
    if not 0 <= message.mid <= 0xFFFF or not 0 <= message.type <= 3 \
            or not 0 <= message.code <= 255:
        raise ValueError(f"bad header field in {message!r}")
    head = bytes((VERSION << 6 | message.type << 4 | len(token), message.code,
                  message.mid >> 8, message.mid & 0xFF))
    return head + token + encode_options(message.options, message.payload)


def decode(data: bytes) -> CoapMessage:
    """The message in one datagram; CoapFormatError for anything that is not one."""
    if len(data) < 4:
        raise CoapFormatError(f"{len(data)} bytes are shorter than a CoAP header")
    first, code_byte = data[0], data[1]
    mtype, tkl, mid = first >> 4 & 3, first & 15, data[2] << 8 | data[3]
    if first >> 6 != VERSION:
        raise CoapFormatError(f"unknown CoAP version {first >> 6}")  # silently ignored (§3)
    if tkl > MAX_TOKEN:
        raise CoapFormatError(f"token length {tkl} is reserved", mtype, mid)
    if len(data) < 4 + tkl:
        raise CoapFormatError("the token runs past the end of the message", mtype, mid)
    token = bytes(data[4:4 + tkl])
    if code_byte == EMPTY and len(data) != 4:
        raise CoapFormatError("an empty message (0.00) with bytes after its header",
                              mtype, mid, token)
    if code_byte >> 5 in (1, 6, 7):
        raise CoapFormatError(f"code {code_text(code_byte)} is of a reserved class",
                              mtype, mid, token)
    options, payload = decode_options(data, 4 + tkl, type=mtype, mid=mid, token=token)
    return CoapMessage(mtype, code_byte, mid, token, options, payload)


def reset_for(mid: int) -> bytes:
    """The RST rejecting message ``mid`` (an empty message, §4.2)."""
    return encode(CoapMessage(RST, EMPTY, mid))


def empty_ack(mid: int) -> bytes:
    """An empty ACK for ``mid``: the request arrived, the response comes separately."""
    return encode(CoapMessage(ACK, EMPTY, mid))
