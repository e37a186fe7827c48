"""PUBLISH from a client and the acknowledgements of both directions (sans-IO).

The handlers of PUBLISH, PUBACK, PUBREC, PUBREL and PUBCOMP, as functions of the
connection (the packet table in ``connection.py`` calls them), and the ordered
acknowledgements: an ack waits for the store writes of its packet and goes out in
the order of the packets it answers [MQTT-4.6.0].
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.python.failure import Failure

from mqtt_twisted.codec import PubAck, PubComp, Publish, PubRec, PubRel
from mqtt_twisted.codec.packets import Packet
from mqtt_twisted.codec.topics import is_reserved_topic
from mqtt_twisted.constants import PropertyId, ReasonCode
from mqtt_twisted.core import clientlog
from mqtt_twisted.core.journal import SharedWrite
from mqtt_twisted.core.limits import topic_refusal
from mqtt_twisted.core.router import LOCAL, LocalRouter
from mqtt_twisted.core.states import CLOSED
from mqtt_twisted.core.stats import TOPIC_SAMPLE
from mqtt_twisted.errors import (
    AuthorizationError,
    InvalidTopicName,
    MQTTError,
    ProtocolError,
    StoreUnavailable,
)
from mqtt_twisted.logs import DEBUG
from mqtt_twisted.message import Message
from mqtt_twisted.records import AWAITING_ACK

if TYPE_CHECKING:
    from mqtt_twisted.core.connection import MQTTConnection

_TOPIC_ALIAS = PropertyId.TOPIC_ALIAS
_PFI = PropertyId.PAYLOAD_FORMAT_INDICATOR
_RESPONSE_TOPIC = PropertyId.RESPONSE_TOPIC
_SUB_ID = PropertyId.SUBSCRIPTION_IDENTIFIER
#: PUBLISH topics whose authorizer answers one connection keeps (emptied when full).
GRANTS_CACHED = 1024


def on_publish(conn: MQTTConnection, packet: Publish) -> None:
    session = conn.session
    qos = packet.qos
    topic = packet.topic
    props = packet.properties
    raw = packet.raw
    broker = conn.broker
    if len(topic) > broker.short_topic:  # (one compare for the usual short topic)
        # The topic as sent: one an alias stands for was checked when the alias was set.
        why = topic_refusal(broker.settings, topic)
        if why is not None:
            broker.stats.limit_hit("topic")
            raise InvalidTopicName(f"PUBLISH topic: {why}")
    if props:
        raw = None  # properties may change on the way (alias, expiry): re-encode
        alias = props.get(_TOPIC_ALIAS)
        if alias is not None:
            topic = resolve_alias(conn, alias, topic)
            del props[_TOPIC_ALIAS]
        if _SUB_ID in props:
            raise ProtocolError("PUBLISH from a client with a subscription "
                                "identifier")  # [MQTT-3.3.4-6]
        response_topic = props.get(_RESPONSE_TOPIC)
        if response_topic is not None and ("+" in response_topic or "#" in response_topic):
            raise ProtocolError("response topic with a wildcard")  # [MQTT-3.3.2-14]
    if DEBUG.on:  # an attribute, not a call: this runs for every PUBLISH
        clientlog.received_publish(conn, packet, topic)
    if topic[:1] == "$" and is_reserved_topic(topic):
        refuse_publish(conn, packet, "reserved for the broker")  # MQTT 5 §4.7.2
        return
    if qos > broker.settings.maximum_qos:
        raise ProtocolError("QoS not supported", ReasonCode.QOS_NOT_SUPPORTED)
    if packet.retain:
        if not broker.settings.retain_available:
            raise ProtocolError("retain not supported", ReasonCode.RETAIN_NOT_SUPPORTED)
        if not broker.retained_quota.allows(topic, packet.payload, conn.client_id):
            broker.stats.limit_hit("retained")
            refuse_publish(conn, packet, "retained messages are over their quota",
                           ReasonCode.QUOTA_EXCEEDED)
            return
    if props and broker.settings.validate_utf8_payload and props.get(_PFI) == 1:
        try:
            packet.payload.decode("utf-8")
        except UnicodeDecodeError:
            if not qos:
                raise ProtocolError("payload is not UTF-8",
                                    ReasonCode.PAYLOAD_FORMAT_INVALID) from None
            code = ReasonCode.PAYLOAD_FORMAT_INVALID
            conn.send(PubAck(packet.packet_id, code) if qos == 1  # type: ignore[arg-type]
                      else PubRec(packet.packet_id, code))  # type: ignore[arg-type]
            return
    message = Message(topic, packet.payload, qos, packet.retain, packet.packet_id, props,
                      broker.clock.seconds() if props else 0.0, conn.client_id)
    if raw is not None:
        # Subscribers of the same wire format get these very bytes [perf: no re-encode].
        message.wire = {(5 if conn.version == 5 else 4, 0, False): (raw, 0)}
    if broker.authorizer is None:
        allowed: Any = True
    else:
        grants = conn.publish_grants
        allowed = grants.get(topic) if grants is not None else None
        if allowed is None:
            allowed = broker.may_publish(session, topic)
            if grants is not None and allowed.__class__ is bool:
                if len(grants) >= GRANTS_CACHED:
                    grants.clear()
                grants[topic] = allowed
    if allowed is True and not qos:
        # The QoS 0 fast path; Broker.route inline (no call per message).
        broker.publisher = conn
        stats = broker.stats
        stats.messages_received += 1
        if not stats.messages_received & (TOPIC_SAMPLE - 1):  # 1 in 16: top topics
            stats.topics.note(topic)
        if message.retain:
            broker.retain(message)
        broker.router.dispatch(message, LOCAL)
        broker.publisher = None
        return
    if qos == 2:
        pid = packet.packet_id
        if pid in session.inboundQoS2:  # type: ignore[union-attr]
            conn.send(PubRec(pid))  # a resend: route it once only [MQTT-4.3.3-9]
            return
    if qos and conn.version == 5 and (
            len(session.inboundQoS2) + conn._unacked_qos1  # type: ignore[union-attr]
            >= broker.settings.receive_maximum):
        # Unacknowledged QoS 1 (PUBACK waiting for the store) and QoS 2 (until
        # PUBCOMP) PUBLISHes beyond what CONNACK advertised [MQTT-3.3.4-9]; v3
        # clients are never told a limit, so none is held against them.
        raise ProtocolError("receive maximum exceeded",
                            ReasonCode.RECEIVE_MAXIMUM_EXCEEDED)
    journal = broker.journal
    if qos == 1 and allowed is True and not packet.retain:
        # (One test of the three for both paths below: a cluster node takes the second.)
        if (not conn._acks and not journal.durable and broker.router.__class__ is LocalRouter
                and broker.router.deliver == broker.deliver):
            # A QoS 1 PUBLISH no store write can hold up (no per-message writes, no retained
            # message, no cluster stream or barrier, no earlier ack waiting): ``publish`` and
            # ``route_acked`` inline, the PUBACK written now (bench/calls_per_message.py).
            broker.publisher = conn
            stats = broker.stats
            try:
                stats.messages_received += 1
                if not stats.messages_received & (TOPIC_SAMPLE - 1):
                    stats.topics.note(topic)
                routed = broker.router.dispatch(message, LOCAL)
            finally:
                broker.publisher = None
            stats.received_qos1 += 1
            pid = packet.packet_id
            if not routed and conn.version == 5:
                conn.send(PubAck(pid, ReasonCode.NO_MATCHING_SUBSCRIBERS))
            elif conn.state != CLOSED and (not conn.max_send_size or conn.max_send_size >= 4):
                conn.transport.write(bytes((_PUBACK, 2, pid >> 8, pid & 0xFF)))  # send_ack's
            return
        if journal._collecting is None:
            # A QoS 1 PUBLISH whose PUBACK may wait for writes (a store with per-message
            # writes, a cluster's stream entry): ``publish``, ``writes_of``, ``route_acked``
            # and ``ack_after``'s joining an ack to the one before it, inline: on every
            # message of a cluster node, local or crossing (docs/cluster.md, "Benchmarks").
            writes: list[Any] = []
            journal._collecting = writes
            broker.publisher = conn
            stats = broker.stats
            try:
                stats.messages_received += 1
                if not stats.messages_received & (TOPIC_SAMPLE - 1):
                    stats.topics.note(topic)
                routed = broker.router.dispatch(message, LOCAL)
            finally:
                broker.publisher = None
                journal._collecting = None
            stats.received_qos1 += 1
            pid = packet.packet_id
            code = ReasonCode.NO_MATCHING_SUBSCRIBERS if not routed and conn.version == 5 else 0
            acks = conn._acks
            if writes or acks:
                conn._unacked_qos1 += 1  # counts towards the receive maximum until PUBACK
                if acks and not code:
                    last = acks[-1]
                    if not writes or (len(writes) == 1 and last[4] is writes[0] and last[0]):
                        last[1].append(pid)  # (ack_after's join: the same write, or none)
                        last[3].append(qos1_acked)
                        return
                ack_after(conn, PubAck(pid, code) if code else pid, writes, qos1_acked)
            elif code:
                conn.send(PubAck(pid, code))
            else:
                conn.send_ack(_PUBACK, pid)
            return
    if hasattr(allowed, "addCallbacks"):
        wait_for(conn, allowed, lambda ok: publish(conn, message, bool(ok)))
    else:
        publish(conn, message, bool(allowed))


def refuse_publish(conn: MQTTConnection, packet: Publish, why: str,
                   code: int = ReasonCode.NOT_AUTHORIZED) -> None:
    """Do not route a PUBLISH the client may not make: v5 QoS 1/2 get ``code`` (0x87,
    or 0x97 for a quota) in their acknowledgement and QoS 0 a DISCONNECT 0x87 (a quota
    only drops it); v3 has no refusal, so its PUBLISH is acknowledged as usual and
    dropped, with one log line per client."""
    if conn.version == 5 and not packet.qos and code == ReasonCode.NOT_AUTHORIZED:
        raise AuthorizationError(f"PUBLISH to {packet.topic!r}: {why}")
    if not conn._refused_logged:
        conn._refused_logged = True
        conn.log.info("Dropped a PUBLISH of {client} from {peer} to {topic!r}: {why}",
                      client=conn.client_id, peer=conn.peer, topic=packet.topic, why=why)
    if packet.qos == 1:
        reply(conn, PubAck(packet.packet_id, code), [])  # type: ignore[arg-type]
    elif packet.qos == 2:
        # A refused QoS 2 flow ends at PUBREC in v5; v3's PUBREL gets its PUBCOMP.
        reply(conn, PubRec(packet.packet_id, code), [])  # type: ignore[arg-type]


def publish(conn: MQTTConnection, message: Message, allowed: bool) -> None:
    """Route an authorized PUBLISH and acknowledge it once what it needs is stored."""
    broker = conn.broker
    qos = message.qos
    if not qos:
        if allowed:
            broker.publisher = conn
            broker.route(message)
            broker.publisher = None
        return
    pid: int = message.packet_id  # type: ignore[assignment]
    code, writes = broker.writes_of(route_acked, conn, message, allowed)
    # [MQTT-4.3.2/3] stored before it is acknowledged
    if qos == 2:
        if code:
            reply(conn, PubRec(pid, code), writes)
        else:
            reply_ack(conn, _PUBREC, PubRec, pid, writes)
    elif writes or conn._acks:
        conn._unacked_qos1 += 1  # counts towards the receive maximum until PUBACK
        # A success PUBACK waits as its packet id alone: flush_acks writes a run of
        # them at once (send_acks), with no packet object or encoder each.
        ack_after(conn, PubAck(pid, code) if code else pid, writes, qos1_acked)
    elif code:
        conn.send(PubAck(pid, code))
    else:
        conn.send_ack(_PUBACK, pid)


def qos1_acked() -> None:
    """A marker for ``ack_after``'s ``then``: the PUBACK sent, one QoS 1 PUBLISH less
    counts towards the receive maximum (done inline by ``flush_acks``: no call)."""


def route_acked(conn: MQTTConnection, message: Message, allowed: bool) -> int:
    if not allowed:
        return ReasonCode.NOT_AUTHORIZED
    code = 0
    broker = conn.broker
    broker.publisher = conn
    try:  # Broker.route inline: this runs for every QoS 1/2 PUBLISH
        stats = broker.stats
        stats.messages_received += 1
        if not stats.messages_received & (TOPIC_SAMPLE - 1):
            stats.topics.note(message.topic)
        if message.retain:
            broker.retain(message)
        routed = broker.router.dispatch(message, LOCAL)
    finally:
        broker.publisher = None
    if not routed and conn.version == 5:
        code = ReasonCode.NO_MATCHING_SUBSCRIBERS
    if message.qos == 2:
        stats.received_qos2 += 1
        conn.broker.add_inbound_qos2(conn.session, message.packet_id)  # type: ignore[arg-type]
    else:
        stats.received_qos1 += 1
    return code


def wait_for(conn: MQTTConnection, answer: Any, then: Callable[[Any], None]) -> None:
    """Hold this client's later packets until an asynchronous answer (an authorizer's)
    arrives, so that they are still handled in order."""
    conn.block()

    def done(value: Any) -> None:
        if conn.state == CLOSED:
            return
        try:
            then(value)
        except MQTTError as e:
            conn.violation(e)
            return
        conn.unblock()

    def failed(failure: Failure) -> None:
        conn.log.failure("Authorizer failed for {client}; refusing", failure,
                         client=conn.client_id)
        done(False)

    answer.addCallbacks(done, failed)


def reply(conn: MQTTConnection, packet: Packet, writes: list[Any],
           then: Callable[[], None] | None = None) -> None:
    """Send ``packet`` (then call ``then``) now, or once ``writes`` are stored."""
    if writes or conn._acks:
        ack_after(conn, packet, writes, then)
    else:
        conn.send(packet)
        if then is not None:
            then()


# The first byte of each success ack, as ``MQTTConnection.send_ack`` writes it.
_PUBACK, _PUBREC, _PUBREL, _PUBCOMP = 0x40, 0x50, 0x62, 0x70
#: A success ack: its first byte, remaining length 2, the packet id.
_ACK = struct.Struct(">BBH")
#: From how many acks ``send_acks`` builds them from an array (fewer: one pack each).
_ACKS_IN_ARRAY = 8
_LITTLE_ENDIAN = sys.byteorder == "little"


def reply_ack(conn: MQTTConnection, first_byte: int, cls: type, packet_id: int,
              writes: list[Any]) -> None:
    """``reply`` with a success ack, built as an object only when it has to wait."""
    if writes or conn._acks:
        ack_after(conn, cls(packet_id), writes)
    else:
        conn.send_ack(first_byte, packet_id)


def ack_after(conn: MQTTConnection, ack: Packet | int, writes: list[Any],
               then: Callable[[], None] | None = None) -> None:
    """Send ``ack`` (then call ``then``) once ``writes`` are stored, keeping acks in
    the order of the packets they answer.  An int ``ack`` is the packet id of a success
    PUBACK (``then`` is then :func:`qos1_acked`).

    An entry of ``conn._acks`` is ``[writes pending, acks, failed, thens, shared]``.
    An ack joins the entry before it when it would wait for nothing more: it has no
    write of its own (it waits only for its turn), or only the one
    :class:`~mqtt_twisted.core.journal.SharedWrite` that entry waits for (a cluster
    batch: a turn's messages to one node).  So a publisher's PUBACKs of a batch cost
    one callback, not one each, also with messages that stay on this node between
    them (a publisher spreading its messages over topics of several nodes)."""
    acks = conn._acks
    if acks is None:
        acks = conn._acks = deque()
    elif acks:
        last = acks[-1]
        if not writes or (len(writes) == 1 and last[4] is writes[0] and last[0]):
            last[1].append(ack)
            last[3].append(then)
            return
    entry = [len(writes), [ack], False, [then],
             writes[0] if len(writes) == 1 and type(writes[0]) is SharedWrite else None]
    acks.append(entry)
    for write in writes:
        write.addBoth(write_done, conn, entry)
    if not writes:
        flush_acks(conn)


def write_done(result: Any, conn: MQTTConnection, entry: list[Any]) -> None:
    if isinstance(result, Failure):
        conn.broker.store_failed(result)
        entry[2] = entry[2] or result
    entry[0] -= 1
    if not entry[0]:
        flush_acks(conn)


def flush_acks(conn: MQTTConnection) -> None:
    acks = conn._acks
    while acks and not acks[0][0]:
        _, packets, failed, thens, _ = acks.popleft()
        if failed:
            # Not stored: no acknowledgement; the client resends after reconnecting.
            if not failed.check(StoreUnavailable):  # the store logs its outage once
                first = packets[0]
                conn.log.warn("Store failed before {packet} to {client}; closing",
                              packet="PubAck" if type(first) is int else type(first).__name__,
                              client=conn.client_id)
            else:  # (and this client's disconnect only at debug: one outage, one line)
                clientlog.closing(conn, ReasonCode.SERVER_BUSY, why=clientlog.STORE_OUTAGE)
            acks.clear()
            conn.close(ReasonCode.SERVER_BUSY)
            return
        n = len(packets)
        if thens.count(qos1_acked) == n and list(map(type, packets)).count(int) == n:
            # Success PUBACKs only (a cluster publisher's entry, ~25 of them): counted
            # and written at once, no bytecode per ack (docs/cluster.md, "Benchmarks").
            conn._unacked_qos1 -= n
            send_acks(conn, _PUBACK, packets)
            continue
        pubacks: list[int] = []
        for ack, then in zip(packets, thens):
            if then is qos1_acked:
                conn._unacked_qos1 -= 1
                if type(ack) is int:
                    pubacks.append(ack)
                    continue
            if pubacks:  # the success PUBACKs before it, first
                send_acks(conn, _PUBACK, pubacks)
                pubacks = []
            conn.send(ack)
            if then is not None and then is not qos1_acked:
                then()
        if pubacks:
            send_acks(conn, _PUBACK, pubacks)


def send_acks(conn: MQTTConnection, first_byte: int, packet_ids: list[int]) -> None:
    """Success acks of one kind in one write: the PUBACKs that waited for one store
    write (``flush_acks``), each its four bytes, as ``MQTTConnection.send_ack``."""
    if conn.state != CLOSED and (not conn.max_send_size or conn.max_send_size >= 4):
        # (struct's packer: a third of the time of b"%c\x02%c%c" formatting, which
        # every PUBACK of a cluster node's publisher went through: docs/cluster.md.)
        n = len(packet_ids)
        if n < _ACKS_IN_ARRAY:
            pack = _ACK.pack
            conn.transport.write(b"".join([pack(first_byte, 2, pid) for pid in packet_ids]))
            return
        # Many: the ids as one big-endian array, its high and low bytes laid into n
        # headers by two slice assignments (C loops, no bytecode per ack).
        ids = array("H", packet_ids)
        if _LITTLE_ENDIAN:
            ids.byteswap()
        raw = ids.tobytes()
        out = bytearray(bytes((first_byte, 2, 0, 0)) * n)
        out[2::4] = raw[0::2]
        out[3::4] = raw[1::2]
        conn.transport.write(bytes(out))


def resolve_alias(conn: MQTTConnection, alias: int, topic: str) -> str:
    """Map a v5 topic alias to its topic [MQTT-3.3.2-10..12]."""
    if alias > conn.broker.settings.topic_alias_maximum:
        raise ProtocolError("topic alias out of range", ReasonCode.TOPIC_ALIAS_INVALID)
    aliases = conn._aliases_in
    if topic:
        if aliases is None:
            aliases = conn._aliases_in = {}
        aliases[alias] = topic
        return topic
    known = aliases.get(alias) if aliases is not None else None
    if known is None:
        raise ProtocolError("unknown topic alias", ReasonCode.PROTOCOL_ERROR)
    return known


def on_puback(conn: MQTTConnection, packet: PubAck) -> None:
    session = conn.session
    out = session.inflight.get(packet.packet_id)  # type: ignore[union-attr]
    if out is not None and out.qos == 1:
        conn.broker.outbound_done(session, packet.packet_id)  # type: ignore[arg-type]


def on_pubrec(conn: MQTTConnection, packet: PubRec) -> None:
    session = conn.session
    pid = packet.packet_id
    out = session.inflight.get(pid)  # type: ignore[union-attr]
    if out is None or out.qos != 2:
        if packet.reason_code >= 0x80:
            return  # a refusal ends the flow: there is nothing to release
        if conn.version == 5:
            conn.send(PubRel(pid, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND))
        else:
            conn.send(PubRel(pid))
        return
    if packet.reason_code >= 0x80:  # v5: the receiver refused it; the flow ends here
        conn.broker.outbound_done(session, pid)  # type: ignore[arg-type]
        return
    writes: list[Any] = []
    if out.state == AWAITING_ACK:
        # [MQTT-4.3.3] after PUBREL the PUBLISH is never sent again: store that first.
        _, writes = conn.broker.writes_of(conn.broker.outbound_released, session, out)
    reply_ack(conn, _PUBREL, PubRel, pid, writes)


def on_pubrel(conn: MQTTConnection, packet: PubRel) -> None:
    session = conn.session
    pid = packet.packet_id
    if pid in session.inboundQoS2:  # type: ignore[union-attr]
        # Stored first: a packet id still marked after a crash would swallow the
        # client's next QoS 2 PUBLISH reusing it as a duplicate.
        _, writes = conn.broker.writes_of(conn.broker.remove_inbound_qos2, session, pid)
        reply_ack(conn, _PUBCOMP, PubComp, pid, writes)
    elif conn.version == 5:
        conn.send(PubComp(pid, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND))
    else:
        conn.send(PubComp(pid))


def on_pubcomp(conn: MQTTConnection, packet: PubComp) -> None:
    session = conn.session
    out = session.inflight.get(packet.packet_id)  # type: ignore[union-attr]
    if out is not None and out.qos == 2:
        conn.broker.outbound_done(session, packet.packet_id)  # type: ignore[arg-type]
