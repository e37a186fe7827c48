"""The incremental framer: bytes in arbitrary pieces in, packets out."""

from __future__ import annotations

from mqtt_twisted.codec._decode import decode_body
from mqtt_twisted.codec.packets import Connect, Packet
from mqtt_twisted.codec.properties import NO_LIMITS, DecodeLimits
from mqtt_twisted.constants import MAX_REMAINING_LENGTH
from mqtt_twisted.errors import MalformedPacket, MQTTError, PacketTooLarge, ProtocolError

#: The largest packet MQTT can frame: 1 type byte, 4 length bytes, the body.
MAX_PACKET_SIZE = MAX_REMAINING_LENGTH + 5

__all__ = ["MAX_PACKET_SIZE", "NO_LIMITS", "DecodeLimits", "StreamDecoder"]



class StreamDecoder:
    """Split a byte stream into packets.

    With ``version=None`` (the server side) the first packet must be CONNECT,
    whose protocol level then fixes the version for the rest of the stream.
    The size limit is checked on the fixed header, before any body is
    buffered; until CONNECT has arrived a server-side stream holds the smaller
    ``connect_packet_size`` (an unauthenticated peer cannot make the broker buffer a
    megabyte), and after a refused packet the buffered bytes are released.  Bytes are parsed in place in the chunk they arrived in; a
    packet split across chunks is joined once, when its last byte arrives, so
    the cost stays linear in the bytes fed however they are cut.

    Errors are :class:`~mqtt_twisted.errors.ProtocolError` subclasses.  The
    packets the same chunk completed before the bad one are on the error as
    ``error.packets``, so that what a peer's valid packets do does not depend
    on how TCP cut the stream.  After an error the stream is unusable: the
    caller handles those packets, then closes the connection.
    """

    __slots__ = ("version", "limits", "_pending", "_pending_size", "_need", "more")

    def __init__(self, version: int | None = None, max_packet_size: int | None = MAX_PACKET_SIZE,
                 connect_packet_size: int | None = None,
                 limits: DecodeLimits = NO_LIMITS) -> None:
        self.version = version
        #: The packet sizes are the limits object's (shared by a broker's connections:
        #: the broker's is already sized, ``BrokerSettings.decode_limits``); a
        #: ``max_packet_size`` of None takes the limits' sizes as they are.
        if max_packet_size is not None and (
                max_packet_size != limits.max_packet_size
                or (connect_packet_size or max_packet_size) != limits.connect_packet_size):
            limits = limits.sized(max_packet_size, connect_packet_size)  # (else: as given)
        self.limits = limits
        #: Bytes of an incomplete packet: an empty tuple (shared, no allocation per
        #: idle connection) until a read ends inside a packet.
        self._pending: list[bytes] | tuple[()] = ()
        self._pending_size = 0
        self._need = 0  # bytes the pending partial packet needs in all; 0 if unknown
        #: True when the last :meth:`feed` stopped at its ``budget`` with whole
        #: packets still buffered: ``feed(b"")`` returns the next ones.
        self.more = False

    @property
    def max_packet_size(self) -> int:
        """The largest packet this stream takes."""
        return self.limits.max_packet_size

    @property
    def connect_packet_size(self) -> int:
        """The largest while the stream still waits for its CONNECT (server side)."""
        return self.limits.connect_packet_size

    @property
    def buffered(self) -> int:
        """How many bytes wait for the rest of their packet."""
        return self._pending_size

    def take(self, data: bytes) -> bytes | None:
        """The buffered bytes and ``data`` as one, the buffer emptied, for a caller that
        frames them itself (``core/qos0.py``'s batch); None, ``data`` buffered, while a
        partial packet still lacks bytes (a large packet is joined once, as by feed)."""
        self.more = False
        pending = self._pending
        if not pending:
            return data
        size = self._pending_size + len(data)
        if size < self._need or size < 2:
            pending.append(data)  # type: ignore[union-attr]
            self._pending_size = size
            return None
        self._pending = ()
        self._pending_size = self._need = 0
        if len(pending) == 1 and not data:
            return pending[0]
        return b"".join([*pending, data])

    def keep(self, rest: bytes, more: bool = True) -> None:
        """Buffer ``rest`` (:attr:`more`: whole packets first), what :meth:`take`'s
        caller left for the next share."""
        self._pending = [rest]
        self._pending_size = len(rest)
        self._need = 0
        self.more = more

    def feed(self, data: bytes, budget: int = 0) -> list[Packet]:
        """Take the next piece of the stream; return the packets it completes.

        With a ``budget``, at most that many: the rest of the bytes stay buffered
        (:attr:`more` says so) so that one read's work is bounded (decoding is half
        the cost of a flood of tiny packets).
        """
        self.more = False
        if self._pending:
            self._pending.append(data)  # type: ignore[union-attr]
            self._pending_size += len(data)
            if self._pending_size < self._need or self._pending_size < 2:
                return []
            data = b"".join(self._pending)
            self._pending = ()
            self._pending_size = 0
        packets: list[Packet] = []
        pos = 0
        n = len(data)
        version = self.version
        limits = self.limits
        limit = limits.max_packet_size if version is not None else limits.connect_packet_size
        need = 0
        left = budget or -1
        try:
            while n - pos >= 2:
                if not left:
                    self.more = True
                    break
                left -= 1
                first = data[pos]
                if version is None and first >> 4 != 1:
                    # Checked before the body is buffered [MQTT-3.1.0-1].
                    raise ProtocolError("the first packet must be CONNECT")
                length = data[pos + 1]
                header = 2
                if length & 0x80:
                    length &= 0x7F
                    shift = 7
                    while True:
                        if pos + header >= n:
                            # The length itself is incomplete; what it says so far is
                            # a lower bound, already too much for a small limit.
                            if length + (1 << shift) + header > limit:
                                raise PacketTooLarge(
                                    f"packet exceeds the limit of {limit} bytes")
                            length = -1
                            break
                        byte = data[pos + header]
                        header += 1
                        length |= (byte & 0x7F) << shift
                        if not byte & 0x80:
                            if not byte:
                                raise MalformedPacket("remaining length is not in its shortest form")
                            break
                        if header == 5:
                            raise MalformedPacket("remaining length longer than four bytes")
                        shift += 7
                    if length < 0:
                        break
                total = header + length
                if total > limit:
                    raise PacketTooLarge(f"packet of {total} bytes exceeds the limit of {limit}")
                end = pos + total
                if end > n:
                    need = total
                    break
                packet = decode_body(first, data, pos + header, end, version, limits)
                if first == 0x30:  # QoS 0, not retained: forwardable as it came
                    packet.raw = data[pos:end] if pos or end != n else data  # type: ignore[union-attr]
                elif version is None and type(packet) is Connect:
                    self.version = version = packet.protocol_level
                    limit = limits.max_packet_size
                packets.append(packet)
                pos = end
        except MQTTError as e:
            # The packets before the bad one stand: the caller handles them, then closes.
            e.packets = packets  # type: ignore[attr-defined]
            self._pending = ()  # the stream ends here: let its bytes go now
            self._pending_size = self._need = 0
            raise
        self._need = need
        if pos < n:
            rest = data[pos:] if pos else data
            self._pending = [rest]
            self._pending_size = len(rest)
        return packets
