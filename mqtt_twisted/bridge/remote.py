"""The bridge's client core: Mosquitto's bridge bit on CONNECT, and the fall-back.

Mosquitto reads a CONNECT whose protocol level has the 0x80 bit set (``try_private``)
as coming from a bridge: it answers as to MQTT 3.1.1, and sends the bridge none of the
messages the bridge itself published (no-local for MQTT 3.1.1), retain flags as
published.  Mosquitto 2.0.11 accepts it ("New bridge connected"); a broker that does
not (ours answers CONNACK 0x01, unacceptable protocol version) is connected to again
without the bit, as Mosquitto's own bridges do.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from mqtt_twisted.client.core import ClientCore, ConnectRefused
from mqtt_twisted.codec import Connect, Packet, encode

__all__ = ["BridgeCore", "BRIDGE_BIT"]

BRIDGE_BIT = 0x80
_PROTOCOL_NAME = b"\x00\x04MQTT"
log = Logger()


def with_bridge_bit(data: bytes) -> bytes:
    """An encoded MQTT 3.1.1 CONNECT with the bridge bit set in its protocol level."""
    start = 1
    while data[start] & 0x80:  # the remaining length's continuation bytes
        start += 1
    start += 1
    if data[start:start + 6] != _PROTOCOL_NAME:
        raise ValueError("not an MQTT 3.1.1 CONNECT")
    out = bytearray(data)
    out[start + 6] |= BRIDGE_BIT
    return bytes(out)


class BridgeCore(ClientCore):
    """A client core whose CONNECT says "bridge" to a 3.1.1 Mosquitto."""

    def __init__(self, *args: Any, try_private: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.try_private = try_private and self.version == 4

    def _send(self, packet: Packet) -> None:
        if self.try_private and type(packet) is Connect:
            self._out.append(with_bridge_bit(encode(packet, self.version)))
            return
        super()._send(packet)

    def receive(self, data: bytes) -> list[Any]:
        events = super().receive(data)
        for event in events:
            if (type(event) is ConnectRefused and event.connack.reason_code == 1
                    and self.try_private):
                log.warn("Bridge client {client_id}: the remote refuses Mosquitto's bridge "
                         "protocol bit; connecting without it (loops are then prevented "
                         "on this side only)", client_id=self.client_id)
                self.try_private = False
        return events
