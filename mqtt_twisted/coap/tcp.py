"""CoAP over TCP and TLS framing (RFC 8323 §3), without I/O.

A message on a stream has no type and no message id: a first byte of Len (4 bits)
and TKL (4 bits), an extended length for Len 13/14/15 (1, 2 or 4 bytes, plus 13, 269
or 65805), then the code, the token, options and payload as over UDP (Len counts
options and payload).  Reliability is the stream's: there are no ACKs and no RSTs.
Signals (code class 7) manage the connection: CSM, Ping, Pong, Release, Abort.
:class:`StreamDecoder` is incremental and bounded by the Max-Message-Size it
announced; anything else is a :class:`~mqtt_twisted.coap.message.CoapFormatError`.
"""

from __future__ import annotations

from mqtt_twisted.coap import message as m
from mqtt_twisted.coap.message import CoapFormatError, CoapMessage

CSM, PING, PONG, RELEASE, ABORT = (m.code(7, d) for d in (1, 2, 3, 4, 5))
#: Signal options (RFC 8323 §5): their numbers are per signal code.
MAX_MESSAGE_SIZE, BLOCK_WISE_TRANSFER = 2, 4  # in CSM
CUSTODY = 2  # in Ping and Pong
ALTERNATIVE_ADDRESS, HOLD_OFF = 2, 4  # in Release
BAD_CSM_OPTION = 2  # in Abort
#: The Max-Message-Size a peer is held to until its CSM says otherwise (§5.3.1).
DEFAULT_MAX_MESSAGE_SIZE = 1152


def is_signal(code: int) -> bool:
    return code >> 5 == 7


def encode(message: CoapMessage) -> bytes:
    """The bytes of ``message`` on a stream (its type and message id are not sent)."""
    token = message.token
    if len(token) > m.MAX_TOKEN:
        raise ValueError(f"a token has at most 8 bytes, not {len(token)}")
    body = m.encode_options(message.options, message.payload)
    n = len(body)
    if n < 13:
        head = bytes((n << 4 | len(token),))
    elif n < 269:
        head = bytes((13 << 4 | len(token), n - 13))
    elif n < 65805:
        head = bytes((14 << 4 | len(token),)) + (n - 269).to_bytes(2, "big")
    else:
        head = bytes((15 << 4 | len(token),)) + (n - 65805).to_bytes(4, "big")
    return head + bytes((message.code,)) + token + body


class StreamDecoder:
    """Bytes of a CoAP-over-TCP stream in, messages out; refuses a message longer than
    ``max_message_size`` as soon as its header says so (nothing of it is buffered)."""

    def __init__(self, max_message_size: int) -> None:
        self.max_message_size = max_message_size
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[CoapMessage]:
        self.buffer += data
        out: list[CoapMessage] = []
        while True:
            message = self._one()
            if message is None:
                return out
            out.append(message)

    def _one(self) -> CoapMessage | None:
        buf = self.buffer
        if not buf:
            return None
        first = buf[0]
        nibble, tkl = first >> 4, first & 15
        if tkl > m.MAX_TOKEN:
            raise CoapFormatError(f"token length {tkl} is reserved")
        extra = (0, 1, 2, 4)[max(nibble - 12, 0)]
        if len(buf) < 1 + extra:
            return None
        if nibble < 13:
            length = nibble
        else:
            length = int.from_bytes(buf[1:1 + extra], "big") + (13, 269, 65805)[nibble - 13]
        size = 1 + extra + 1 + tkl + length
        if size > self.max_message_size:
            raise CoapFormatError(f"a {size}-byte message is larger than the "
                                  f"Max-Message-Size of {self.max_message_size}")
        if len(buf) < size:
            return None
        start = 1 + extra
        code, token = buf[start], bytes(buf[start + 1:start + 1 + tkl])
        if code >> 5 in (1, 6):
            raise CoapFormatError(f"code {m.code_text(code)} is of a reserved class",
                                  token=token)
        options, payload = m.decode_options(memoryview(buf)[:size], start + 1 + tkl,
                                            token=token)
        del buf[:size]
        return CoapMessage(m.CON, code, 0, token, options, payload)


def csm(max_message_size: int, block_wise: bool = True) -> CoapMessage:
    """The Capabilities and Settings Message each side sends first (§5.3)."""
    message = CoapMessage(m.CON, CSM)
    message.add(MAX_MESSAGE_SIZE, max_message_size)
    if block_wise:
        message.options.append((BLOCK_WISE_TRANSFER, b""))
    return message


def abort(reason: str) -> CoapMessage:
    """The Abort signal (§5.6) closing a connection, with a diagnostic payload."""
    return CoapMessage(m.CON, ABORT, payload=reason.encode("utf-8"))
