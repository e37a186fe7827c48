"""Outbound PUBLISH bytes, encoded once per variant and shared across subscribers.

A message fanned out to many subscribers is encoded at most once per
(protocol version, QoS, retain) variant; v5 QoS 1/2 copies differ only in their
packet id, which is patched into the shared template.  A v3/v4 QoS 1/2 copy is
encoded whole (``encode_publish_plain``): as cheap as the patch, compiled.  Messages whose v5
properties differ per subscriber (subscription identifiers, an aged expiry
interval) are encoded individually.
"""

from __future__ import annotations

from mqtt_twisted.codec import encode, encode_publish, encode_publish_plain
from mqtt_twisted.codec.packets import ConnAck, Publish
from mqtt_twisted.message import NO_WIRE, Message, forward_properties


def _template(message: Message, version: int, qos: int, retain: bool) -> tuple[bytes, int]:
    """Encode with a placeholder packet id; return (bytes, offset of the packet id)."""
    packet = Publish(message.topic, message.payload, qos, retain, False, 1 if qos else None,
                     {})
    data = encode_publish(packet, version)
    offset = len(data) - len(message.payload) - 2 - (1 if version == 5 else 0)
    return data, offset


def publish_bytes(
    message: Message,
    version: int,
    qos: int,
    retain: bool,
    packet_id: int | None,
    subscription_ids: tuple[int, ...] | None,
    now: float,
) -> bytes:
    """The PUBLISH packet for one subscriber."""
    if version == 5 and (message.properties or subscription_ids):
        props = forward_properties(message, subscription_ids, now)
        return encode_publish(
            Publish(message.topic, message.payload, qos, retain, False, packet_id, props), version
        )
    if qos and version != 5:
        # One subscriber is the usual case: its copy encoded whole (compiled: one
        # allocation), not a template made and then patched with the packet id.
        return encode_publish_plain(message.topic, message.payload, qos, retain, packet_id)
    wire = message.wire
    if wire is None:
        wire = message.wire = {}
    key = (5 if version == 5 else 4, qos, retain)  # 3.1 and 3.1.1 PUBLISHes are alike
    cached = wire.get(key)
    if cached is None:
        cached = _template(message, version, qos, retain)
        if wire is not NO_WIRE:  # a stored retained message keeps no encoding
            wire[key] = cached
    data, offset = cached
    if not qos:
        return data
    return data[:offset] + packet_id.to_bytes(2, "big") + data[offset + 2 :]  # type: ignore[union-attr]


def with_dup(data: bytes) -> bytes:
    """The same PUBLISH with DUP=1, for a resend [MQTT-3.3.1-1]."""
    return bytes((data[0] | 0x08,)) + data[1:]


#: (protocol level, session present) -> the CONNACK accepting a CONNECT without
#: properties (every v3 one; v5 when the broker has nothing to say), made once.
CONNACKS = {(level, present): encode(ConnAck(present, 0, {}), level)
            for level in (3, 4, 5) for present in (False, True)}
