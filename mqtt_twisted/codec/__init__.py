"""The sans-IO MQTT 3.1, 3.1.1 and 5.0 codec.

Bytes in, packets out, and back; no I/O and nothing from Twisted.  See
``docs/codec.md`` for the API and its guarantees.
"""

from mqtt_twisted.codec import _accel
from mqtt_twisted.codec._decode import decode_body
from mqtt_twisted.codec._encode import (
    encode,
    encode_publish,
    encode_publish_plain,
    encode_publishes,
)
from mqtt_twisted.codec._wire import (
    decode_binary,
    decode_string,
    decode_vbi,
    encode_binary,
    encode_string,
    encode_vbi,
)
from mqtt_twisted.codec.packets import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)
from mqtt_twisted.codec.properties import (
    PROPERTY_SPECS,
    Properties,
    decode_properties,
    encode_properties,
)
from mqtt_twisted.codec.stream import MAX_PACKET_SIZE, NO_LIMITS, DecodeLimits, StreamDecoder
from mqtt_twisted.codec.topics import (
    SharedFilter,
    parse_shared_filter,
    topic_matches,
    validate_topic_filter,
    validate_topic_name,
)

# Bind the compiled twins of the hot functions where they were built, unless
# MQTT_TWISTED_PURE=1 (this module's encode_publish and topic_matches too): _accel.py.
_accel.use_default()
#: Another layer's compiled twins switched with these (core/_compiled.py).
also_switch = _accel.also_switch
load_compiled = _accel.load_compiled
stale_compiled = _accel.stale_compiled


def decode(data: bytes, version: int | None = None) -> Packet:
    """Decode exactly one whole packet from ``data`` (a convenience for tests and tools)."""
    decoder = StreamDecoder(version)
    packets = decoder.feed(data)
    if len(packets) != 1 or decoder.buffered:
        from mqtt_twisted.errors import MalformedPacket

        raise MalformedPacket(f"expected one whole packet, got {len(packets)} and "
                              f"{decoder.buffered} bytes left over")
    return packets[0]


__all__ = [
    "Auth", "ConnAck", "Connect", "DecodeLimits", "Disconnect", "MAX_PACKET_SIZE", "NO_LIMITS", "Packet", "PingReq",
    "PingResp", "PROPERTY_SPECS", "Properties", "PubAck", "PubComp", "PubRec", "PubRel",
    "Publish", "SharedFilter", "StreamDecoder", "SubAck", "Subscribe", "Subscription",
    "UnsubAck", "Unsubscribe", "Will", "decode", "decode_binary", "decode_body",
    "decode_properties", "decode_string", "decode_vbi", "encode", "encode_binary",
    "encode_properties", "encode_publish", "encode_publish_plain", "encode_publishes", "encode_string", "encode_vbi", "parse_shared_filter",
    "topic_matches", "validate_topic_filter", "validate_topic_name",
]
