"""The Redis store's record format: msgpack arrays, the format version first.

A message is ``[FORMAT, topic, payload, qos, retain, properties, received_at, sender]``
with properties a map of property id -> int | str | bytes | [[str, str], ...] | [int, ...];
an outbound record is ``[FORMAT, seq, qos, retain, subscription_ids, packet_id, state,
group, message]`` (the message as a nested msgpack blob) and subscription options are
``[FORMAT, qos, no_local, retain_as_published, retain_handling, subscription_id]``.
A session's own fields are a Redis hash of short ASCII values (see :func:`session_fields`).
Readers refuse records of another format version with StorageError.
"""

from __future__ import annotations

from typing import Any

import msgpack

from mqtt_twisted.constants import PropertyId
from mqtt_twisted.errors import StorageError
from mqtt_twisted.message import Message
from mqtt_twisted.records import Outbound, SubscriptionOptions, packet_id_for
from mqtt_twisted.store.memory import StoredSession

#: Version of the stored format, first in every record; readers refuse others.
FORMAT = 1

_PROPERTY_IDS = {int(p): p for p in PropertyId}
_pack = msgpack.Packer(use_bin_type=True).pack
#: The packer of every record (``_redisbatch`` writes records with it inline).
PACK = _pack
_unpackb = msgpack.unpackb
_new = object.__new__


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def encode_message(message: Message) -> bytes:
    """The stored form of a message (its per-hop packet id and wire cache are not kept).
    On the path of every message that crosses cluster nodes: one Python call."""
    return _pack([FORMAT, message.topic, message.payload, message.qos, message.retain,
                  message.properties, message.received_at, message.sender])


def with_records(items: list[list[Any]]) -> list[list[Any]]:
    """``[[message, a, b, ...], ...]`` with each message in its stored form as a list,
    not yet packed: a cluster node packs a batch of them in one msgpack call
    (``cluster/batch.py``: a stream entry's items have a fourth element, the message's
    sequence number), and its peer unpacks them in one."""
    return [[[FORMAT, m.topic, m.payload, m.qos, m.retain, m.properties, m.received_at,
              m.sender], *rest] for m, *rest in items]


def message_from_record(record: list[Any]) -> Message:
    """A message from its stored form unpacked (:func:`with_records`): for every
    message a cluster node receives from a peer, so its slots are set here, as
    ``Message.copy`` does, without a call to ``Message.__init__``."""
    if record[0] != FORMAT:
        raise StorageError(f"stored message has format {record[0]!r}, expected {FORMAT}")
    message = _new(Message)
    (_, message.topic, message.payload, message.qos, message.retain, props,
     message.received_at, message.sender) = record
    message.packet_id = None
    message.properties = _properties(props) if props else {}
    message.wire = None
    return message


def _properties(stored: dict[int, Any]) -> dict[int, Any]:
    props: dict[int, Any] = {}
    for key, value in stored.items():
        if type(value) is list and value and type(value[0]) is list:
            value = [tuple(pair) for pair in value]  # user properties: (name, value) pairs
        props[_PROPERTY_IDS.get(key, key)] = value
    return props


def _message_from(record: list[Any]) -> Message:
    if record[0] != FORMAT:
        raise StorageError(f"stored message has format {record[0]!r}, expected {FORMAT}")
    _, topic, payload, qos, retain, props, received_at, sender = record
    return Message(topic, payload, qos, retain, None, _properties(props) if props else None,
                   received_at, sender)


def decode_message(data: bytes) -> Message:
    """A message from its stored form (inline: every message a cluster node receives
    from a peer is decoded here)."""
    record = _unpackb(data, raw=False, strict_map_key=False)
    if record[0] != FORMAT:
        raise StorageError(f"stored message has format {record[0]!r}, expected {FORMAT}")
    _, topic, payload, qos, retain, props, received_at, sender = record
    return Message(topic, payload, qos, retain, None, _properties(props) if props else None,
                   received_at, sender)


def encode_outbound(out: Outbound, message_blob: bytes | None = None) -> bytes:
    sub_ids = list(out.subscription_ids) if out.subscription_ids else None
    return _pack([FORMAT, out.seq, out.qos, out.retain, sub_ids, out.packet_id, out.state,
                  out.group, message_blob if message_blob is not None
                  else encode_message(out.message)])


def decode_outbound(data: bytes) -> Outbound:
    record = _unpack(data)
    if record[0] != FORMAT:
        raise StorageError(f"stored outbound has format {record[0]!r}, expected {FORMAT}")
    _, seq, qos, retain, sub_ids, packet_id, state, group, message = record
    return Outbound(decode_message(message), qos, retain, tuple(sub_ids) if sub_ids else None,
                    packet_id, state, group, seq)


def encode_options(options: SubscriptionOptions) -> bytes:
    return _pack([FORMAT, *options.as_tuple()])


def decode_options(data: bytes) -> SubscriptionOptions:
    record = _unpack(data)
    if record[0] != FORMAT:
        raise StorageError(f"stored subscription has format {record[0]!r}, expected {FORMAT}")
    _, qos, no_local, rap, handling, sub_id = record
    return SubscriptionOptions(qos, no_local, rap, handling, sub_id)


def _number(value: float | None) -> bytes:
    if value is None:
        return b""
    return repr(value).encode() if isinstance(value, float) else str(int(value)).encode()


def _parse_number(data: bytes | None) -> float | None:
    if not data:
        return None
    text = data.decode()
    return int(text) if text.lstrip("-").isdigit() else float(text)


def session_fields(state: Any) -> list[bytes]:
    fields = [b"v", str(FORMAT).encode(), b"expiry", _number(state.expiryInterval),
              b"willDelay", _number(state.willDelay),
              b"disconnectedAt", _number(state.disconnectedAt)]
    if state.will is not None:
        fields += [b"will", encode_message(state.will)]
    owner = getattr(state, "owner", None)
    if owner is not None:
        fields += [b"owner", owner.encode("utf-8")]
    return fields


def decode_session(client_id: str, data: bytes) -> StoredSession:
    """The reply of the load script: [session hash, subs hash, out hash, qos2 set]."""
    fields, subs, outbound, qos2 = msgpack.unpackb(data, raw=True)
    info = dict(zip(fields[::2], fields[1::2]))
    if info.get(b"v") != str(FORMAT).encode():
        raise StorageError(f"session {client_id!r} has format {info.get(b'v')!r}")
    state = StoredSession(client_id)
    state.expiryInterval = _parse_number(info.get(b"expiry"))
    state.willDelay = _parse_number(info.get(b"willDelay")) or 0
    state.disconnectedAt = _parse_number(info.get(b"disconnectedAt"))
    will = info.get(b"will")
    state.will = decode_message(will) if will else None
    owner = info.get(b"owner")  # absent in records written before sessions had owners
    state.owner = owner.decode("utf-8") if owner is not None else None
    state.subscriptions = {f.decode(): decode_options(o) for f, o in zip(subs[::2], subs[1::2])}
    state.outbound = sorted((decode_outbound(o) for o in outbound[1::2]), key=lambda o: o.seq)
    sent = info.get(b"sent")
    if sent:
        # The highest seq sent (_redisbatch.py): every record up to it without a packet
        # id went in flight with the one its seq gives, and seqs go on above it.
        mark = int(sent)
        for out in state.outbound:
            if out.seq > mark:
                break
            if out.packet_id is None:
                out.packet_id = packet_id_for(out.seq)
        state.nextSeq = mark + 1
    state.inboundQoS2 = {int(pid) for pid in qos2}
    # A cluster's marks: stream -> the last of its entries delivered into the session.
    state.marks = {k[2:]: v for k, v in info.items() if k[:2] == b"m:"}
    return state
