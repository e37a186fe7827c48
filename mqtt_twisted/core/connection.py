"""The per-connection MQTT protocol machine (sans-IO).

Bytes come in through :meth:`MQTTConnection.dataReceived` from whatever adapter
carries the stream (TCP, TLS, WebSocket); packets go out through the
transport's ``write``.  Session and routing decisions are the broker's; this
class enforces the packet-level rules and the acknowledgement state machines.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from zope.interface import implementer

from mqtt_twisted.codec import encode
from mqtt_twisted.codec.packets import (
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    Publish,
)
from mqtt_twisted.codec.stream import StreamDecoder
from mqtt_twisted.constants import PacketType, PropertyId, ReasonCode
from mqtt_twisted.core import clientlog, control, fastpath, inbound, rates, shares
from mqtt_twisted.core._rare import rare_fields
from mqtt_twisted.core.admission import connect_deadline_passed
from mqtt_twisted.core.keepalive import check_keepalive
from mqtt_twisted.core.session import Session
from mqtt_twisted.core.states import AWAIT_CONNECT, CLOSE_GRACE, CLOSED, CONNECTED, CONNECTING
from mqtt_twisted.core.wire import CONNACKS, publish_bytes, with_dup
from mqtt_twisted.errors import (
    MQTTError,
    PacketTooLarge,
    ProtocolError,
    StoreUnavailable,
    UnsupportedProtocolVersion,
)
from mqtt_twisted.interfaces import IBrokerConnection, ISessionLink
from mqtt_twisted.message import Message, forward_properties

if TYPE_CHECKING:
    from mqtt_twisted.core.broker import Broker

__all__ = ["AWAIT_CONNECT", "CLOSED", "CLOSE_GRACE", "CONNECTED", "CONNECTING", "MQTTConnection"]

_P = PropertyId
_TOPIC_ALIAS = PropertyId.TOPIC_ALIAS
#: Properties a sender may leave out when a packet would exceed the peer's maximum
#: packet size (MQTT 5 §3.2.2.3.15/16 and the like for every packet that has them).
_OPTIONAL = (PropertyId.REASON_STRING, PropertyId.USER_PROPERTY)
#: Packets decoded and handled per reactor turn for one connection.  One 64 KB read
#: of 8-byte PUBLISHes is 8,000 packets, 40-75 ms of Python work during which every
#: other client waits; past this many the connection stops reading and goes on at
#: the next turn.  256 packets cost about 2-3 ms (bench/hostile.py --attack flood).
READ_BUDGET = 256
#: The work of one turn: packets handled plus the deliveries they made.  A PUBLISH
#: that fans out to 100 subscribers (SSE streams, say) is 101 units: the next share of
#: that connection is cut to fit (at least one packet), so fan-out cannot multiply the
#: time the others wait (100 unread SSE streams: bystander p50 48 -> 5 ms).
WORK_BUDGET = 256
#: Packets handled first in a share: their fan-out sizes the rest of it.
_PROBE = 1


@implementer(IBrokerConnection, ISessionLink)
class MQTTConnection:
    """One client connection, whatever transport carries it."""

    log = Logger()
    #: A real MQTT client (an adapter's session is a VirtualConnection).
    virtual = False
    #: A client here, not a peer node's lane (``cluster/rawlane.py``): the QoS 0 batch
    #: counts a write to a lane as forwarded, not sent (``core/qos0.py``).
    remote = 0

    __slots__ = (
        "broker", "transport", "_peer", "listener", "decoder", "state",
        "version", "session", "client_id", "keep_alive", "last_rx", "paused", "clean_exit",
        "send_quota", "max_send_size", "_backlog", "_blocked", "due", "_aliases_out",
        "_acks", "throttles", "_unacked_qos1", "lost", "publish_grants",
        "_rate", "_budget", "username", "ended", "_rare",
        "__weakref__",
    )
    # And, in a record made on first use (core/_rare.py), what few clients need: v5
    # enhanced authentication, inbound topic aliases, the outbound alias limit, the
    # refusal log flag, a TLS certificate's identity, a long read's next share, answer_due.

    def __init__(self, broker: Broker, transport: Any, peer: Any = "", listener: Any = None,
                 certificate_identity: str | None = None) -> None:
        self.broker = broker
        self.transport = transport
        self._peer = peer  # (the ``peer`` property: text, or an address to make it from)
        self.listener = listener
        self._rare: Any = None
        if certificate_identity is not None:  # (a rare field: no call to set its default)
            self.certificate_identity = certificate_identity
        settings = broker.settings
        self.decoder = StreamDecoder(None, None, None, settings.decode_limits())  # (sized)
        self.state = AWAIT_CONNECT
        self.version = 4
        self.session: Session | None = None
        self.client_id: str | None = None
        self.keep_alive = 0
        self.last_rx = 0.0
        self.paused = False
        self.clean_exit = False  # a DISCONNECT that suppresses the will
        self.lost = False  # the transport is gone (closing flushes first: shutdown waits)
        self.send_quota = broker.settings.max_inflight
        self.max_send_size = 0  # 0: no limit from the client
        self._backlog: list[Packet] | None = None
        self._blocked = False
        self._aliases_out: OrderedDict[str, int] | None = None  # v5, when a policy is on
        self._acks: deque[list[Any]] | None = None  # acks waiting for store writes
        self.throttles = 0  # subscribers holding this client back (flow control)
        self._unacked_qos1 = 0  # QoS 1 PUBLISHes whose PUBACK waits for the store
        self.username: str | None = None  # the CONNECT's (for the log: never the password)
        #: Why the connection ends, for its disconnect line: (why, reason code, detail).
        self.ended: tuple[str, int | None, str | None] | None = None
        self._budget = READ_BUDGET  # packets of the next share (cut for fan-out)
        self._rate = rates.ClientRate.of(settings, broker.clock.seconds())  # None: off
        #: The authorizer's answers to this client's PUBLISH topics, when its answers
        #: only change on reload (``stableAnswers``); None: ask every time.
        self.publish_grants: dict[str, bool] | None = (
            {} if getattr(broker.authorizer, "stableAnswers", False) else None)
        #: Its slice in the broker's deadline wheel (``core/deadlines.py``): the CONNECT
        #: deadline now, the keep alive check once connected, the close grace at the end.
        self.due: int | None = None
        timeout = getattr(listener, "connectTimeout", broker.connect_timeout)
        if timeout:
            broker.deadlines.arm(self, broker.clock.seconds() + timeout)

    def __repr__(self) -> str:
        return f"<MQTTConnection {self.client_id or '?'} from {self.peer}>"

    # --- input ------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Feed bytes; handle the packets they complete, a share at a time (at most
        READ_BUDGET packets, fewer when they fan out: WORK_BUDGET).  Past the share
        the decoder keeps the rest of the bytes in order, reading stops (one more
        ``throttle``, as flow control's) and the next reactor turn goes on
        (``shares.next_share``): a flood delays others by one share, not by its read.
        """
        if self.state != CONNECTED:
            if self.state == CLOSED or (self.state == AWAIT_CONNECT  # core/admission.py
                                        and self.broker.gate.takes(self, data)):
                return
        self.last_rx = self.broker.clock.seconds() if self.keep_alive else 0.0
        stats = self.broker.stats
        stats.bytes_received += len(data)
        if self._rate is not None:
            received = stats.messages_received  # this read's PUBLISHes: the difference
        sent = stats.deliveries
        size = len(data)
        budget = self._budget
        # One packet first: what it fans out sizes the rest of the share (500 SSE streams
        # subscribed since: not 256 x 500 deliveries, 1.6 s of CPU in one turn, measured).
        step = _PROBE if budget > _PROBE else budget  # (min(): a builtin call per read)
        count = 0
        batch = (fastpath.BATCHES.get(_HANDLERS[3])  # core/qos0.py: plain QoS 0 in runs
                 if self.state == CONNECTED and not self._blocked else None)
        if batch is not None:
            count, data = batch(self, data, _HANDLERS), b""
        while batch is None or (self._blocked and self.decoder.more):
            try:
                packets = self.decoder.feed(data, step)
            except MQTTError as e:
                # Handle the good packets before the bad one, then close.
                packets = getattr(e, "packets", [])
                if not self._blocked:
                    self._handle(packets)
                self.violation(e)
                return
            data = b""
            if self._blocked:
                self._hold(packets)
            else:
                self._handle(packets)
            count += len(packets)
            if not self.decoder.more or self.state == CLOSED or count >= budget:
                break
            work = count + stats.deliveries - sent
            step = min(budget - count, (WORK_BUDGET - work) * count // work)
            if step <= 0:
                break
        if self._rate is not None and self.state != CLOSED:
            rates.charge(self, stats.messages_received - received, size)
        if count:  # as many packets next time as fit WORK_BUDGET at this read's fan-out
            budget = WORK_BUDGET * count // (count + stats.deliveries - sent)
            self._budget = budget if 0 < budget < READ_BUDGET else READ_BUDGET if budget else 1
        if self.decoder.more and self._resume_call is None and self.state != CLOSED:
            self.throttle()
            self._resume_call = self.broker.clock.callLater(0, shares.next_share, self)

    def _handle(self, packets: list[Packet]) -> None:
        """Handle decoded packets in order; past WORK_BUDGET deliveries the rest is held
        and goes on at the next turn (a share was sized from a packet that fanned out
        less: a CONNECT, then 255 PUBLISHes to 500 SSE streams)."""
        handlers = _HANDLERS
        stats = self.broker.stats
        limit = stats.deliveries + WORK_BUDGET
        for i, packet in enumerate(packets):
            try:
                handlers[packet.type](self, packet)
            except MQTTError as e:
                self.violation(e)
                return
            if self._blocked:
                self._hold(packets[i + 1 :])
                return
            if self.state == CLOSED:
                return
            if stats.deliveries > limit and i + 1 < len(packets):
                self._blocked, self._backlog = True, packets[i + 1 :]
                shares.pace_backlog(self)
                return

    def block(self) -> None:
        """Hold further packets until :meth:`unblock` (an async step is under way)."""
        self._blocked = True
        if self._backlog is None:
            self._backlog = []

    def _hold(self, packets: list[Packet]) -> None:
        """Keep packets for later, except AUTH during CONNECT: it drives the exchange."""
        for packet in packets:
            if self.state == CLOSED:
                return
            if packet.type == PacketType.AUTH and self.state == CONNECTING:
                try:
                    control.on_auth(self, packet)  # type: ignore[arg-type]
                except MQTTError as e:
                    self.violation(e)
                    return
            else:
                self._backlog.append(packet)  # type: ignore[union-attr]

    def unblock(self) -> None:
        """Resume handling packets, first those held while blocked: WORK_BUDGET a
        reactor turn, as a read's shares (what a CONNECT held back can be a share of
        PUBLISHes to 500 SSE streams: 1.3 s of CPU in one turn, measured)."""
        self._blocked = False
        backlog, self._backlog = self._backlog, None
        handlers = _HANDLERS
        stats = self.broker.stats
        start, handled = stats.deliveries, 0
        while backlog and self.state != CLOSED and not self._blocked:
            if handled and handled + stats.deliveries - start >= WORK_BUDGET:
                self._blocked, self._backlog = True, backlog
                shares.pace_backlog(self)
                return
            packet = backlog.pop(0)
            try:
                handlers[packet.type](self, packet)
            except MQTTError as e:
                self.violation(e)
                return
            handled += 1
        if self._blocked and backlog:
            self._backlog = backlog + (self._backlog or [])
        elif self.lost:
            shares.end_when_read(self)  # (an asynchronous step held a lost client's input)

    # --- output -----------------------------------------------------------------------

    def send(self, packet: Packet) -> bool:
        """Encode and write one packet in this connection's protocol version.

        A v5 packet that would exceed the client's maximum packet size loses its
        reason string and user properties [MQTT-3.2.2-19/20]; if it still does not
        fit it is not sent (False).
        """
        if self.state == CLOSED:
            return False
        data = encode(packet, self.version)
        limit = self.max_send_size
        if limit and len(data) > limit:
            props = getattr(packet, "properties", None)
            if not props or not any(key in props for key in _OPTIONAL):
                return False
            packet.properties = {k: v for k, v in props.items()  # type: ignore[union-attr]
                                 if k not in _OPTIONAL}
            data = encode(packet, self.version)
            if len(data) > limit:
                return False
        self.transport.write(data)
        return True

    def send_ack(self, first_byte: int, packet_id: int) -> None:
        """A success ack's four bytes, with no packet object (QoS 2 sends three)."""
        if self.state != CLOSED and (not self.max_send_size or self.max_send_size >= 4):
            self.transport.write(bytes((first_byte, 2, packet_id >> 8, packet_id & 0xFF)))

    def send_publish(self, message: Message, qos: int, retain: bool, packet_id: int | None,
                     subscription_ids: tuple[int, ...] | None, dup: bool = False) -> bool:
        """Write one PUBLISH; False if it exceeds the client's maximum packet size."""
        if self._aliases_out is not None:
            data = self._aliased_publish(message, qos, retain, packet_id, subscription_ids)
        else:
            data = publish_bytes(message, self.version, qos, retain, packet_id,
                                 subscription_ids,
                                 self.broker.clock.seconds() if message.properties else 0.0)
        if self.max_send_size and len(data) > self.max_send_size:
            self.broker.stats.dropped_too_large += 1
            return False  # [MQTT-3.1.2-25] the server discards it as if delivered
        if dup:
            data = with_dup(data)
        self.transport.write(data)
        stats = self.broker.stats
        stats.messages_sent += 1
        stats.bytes_sent += len(data)
        if qos:
            if qos == 1:
                stats.sent_qos1 += 1
            else:
                stats.sent_qos2 += 1
        return True

    def send_publishes(self, data: bytes, count: int) -> None:
        """Write ``count`` QoS 0 PUBLISHes encoded as one buffer (core/retained.py)."""
        if self.state != CLOSED:
            self.transport.write(data)
            self.broker.stats.wrote(count, len(data))

    def _aliased_publish(self, message: Message, qos: int, retain: bool,
                         packet_id: int | None, subscription_ids: Any) -> bytes:
        """A v5 PUBLISH using an outbound topic alias per the broker's policy (MQTT 5 §3.3.2.3.4)."""
        props = forward_properties(message, subscription_ids, self.broker.clock.seconds())
        aliases = self._aliases_out
        topic = message.topic
        alias = aliases.get(topic)  # type: ignore[union-attr]
        if alias is not None:
            props[_TOPIC_ALIAS] = alias
            topic = ""
            if self.broker.settings.outbound_topic_aliases == "lru":
                aliases.move_to_end(message.topic)  # type: ignore[union-attr]
        elif len(aliases) < self._alias_limit:  # type: ignore[arg-type]
            alias = aliases[topic] = len(aliases) + 1  # type: ignore[index]
            props[_TOPIC_ALIAS] = alias
        elif self.broker.settings.outbound_topic_aliases == "lru":
            _, alias = aliases.popitem(last=False)  # type: ignore[union-attr]
            aliases[topic] = alias  # type: ignore[index]
            props[_TOPIC_ALIAS] = alias
        return encode(Publish(topic, message.payload, qos, retain, False, packet_id, props), 5)

    def pauseWriting(self) -> None:
        """The transport is full: hold publishers back, then queue (see Delivery.deliver)."""
        self.paused = True

    def throttle(self) -> None:
        """A subscriber this client publishes to is full: stop reading from it."""
        self.throttles += 1
        if self.throttles == 1:
            pause = getattr(self.transport, "pauseReading", None)
            if pause is not None:
                pause()

    def unthrottle(self) -> None:
        """One subscriber that held this client back caught up."""
        self.throttles -= 1
        if not self.throttles and self.state != CLOSED:
            resume = getattr(self.transport, "resumeReading", None)
            if resume is not None:
                resume()

    def resumeWriting(self) -> None:
        """The transport drained: send what the session queued meanwhile."""
        self.paused = False
        if self.session is not None and self.state == CONNECTED:
            self.broker.pump(self.session)

    pauseProducing, resumeProducing = pauseWriting, resumeWriting  # (_leanmqtt.py)

    # --- closing ------------------------------------------------------------------------

    def violation(self, error: MQTTError) -> None:
        """Close this one connection for a protocol violation, with a log line."""
        if self.state == CLOSED:
            return
        if self.state == CONNECTED:  # the disconnect line says why
            clientlog.closing(self, error.reason_code, error.message, "protocol error")
        else:
            self.log.info("Closing {client_id} from {peer}: {error} (0x{reason_code:02X})",
                          action="protocol_error", client_id=self.client_id or "?",
                          peer=self.peer, error=error.message,
                          reason_code=int(error.reason_code))
        self.broker.stats.protocol_errors += 1
        if isinstance(error, PacketTooLarge):  # the packet size or user property limits
            self.broker.stats.limit_hit("packet_size")
        if self.state == AWAIT_CONNECT and isinstance(error, UnsupportedProtocolVersion):
            # [MQTT-3.1.2-2] answer with return code 0x01 (in the v3 format every level reads).
            self.transport.write(encode(ConnAck(False, error.v3_return_code or 1), 4))
        self.close(error.reason_code)

    def close(self, reason_code: int | None = None, properties: dict | None = None) -> None:
        """Close the connection; v5 clients past CONNACK get a DISCONNECT with the reason."""
        if self.state == CLOSED:
            return
        if self.ended is None:
            clientlog.closing(self, reason_code)
        if reason_code is not None and self.version == 5 and self.state == CONNECTED:
            self.send(Disconnect(reason_code, properties or {}))
        self._shut()

    def _shut(self) -> None:
        """Flush and close; a peer that does not read is cut off after CLOSE_GRACE.

        The session is detached now, not when the socket finally goes: the will
        goes out and a new connection can take the session at once.
        """
        self.state = CLOSED  # (True from loseConnection: closed this turn, no grace needed)
        if self.transport.loseConnection() is not True and not self.lost:
            self.broker.deadlines.arm(self, self.broker.clock.seconds() + CLOSE_GRACE)
        self.broker.connection_ended(self, send_will=not self.clean_exit)

    def connectionLost(self, reason: Any = None) -> None:
        """The transport is gone: let the broker end the session's connection, once
        what the client sent before it went is handled (``core/shares.py``)."""
        if not self.lost and shares.input_left(self):
            shares.put_off_end(self, reason)
            return
        self.state = CLOSED
        self.lost = True
        if self.due is not None:
            self.broker.deadlines.cancel(self)
        if self._rare is not None and self._resume_call is not None:  # (rare: no record)
            self._resume_call.active() and self._resume_call.cancel()
            self._resume_call = None
        if self._rate is not None:
            self._rate.cancel()
        self._backlog = None
        self._acks = None
        if self.ended is None:
            clientlog.lost(self, reason)
        broker = self.broker  # (else _shut ended it: nothing left for connection_ended)
        if self.session is not None or self in broker.connections or broker.flow.congested:
            broker.connection_ended(self, send_will=not self.clean_exit)

    def taken_over(self) -> None:
        """Another connection took this client id [MQTT-3.1.4-3]."""
        self.close(ReasonCode.SESSION_TAKEN_OVER)

    def deadline_passed(self) -> None:
        """The deadline wheel's call: what it means depends on the state.  No CONNECT
        answered in time (core/admission.py); the keep alive check (lazy: it re-arms
        while packets come); a closing peer that has not let go in CLOSE_GRACE is cut off."""
        state = self.state
        if state == CONNECTED:
            check_keepalive(self)
        elif state == CLOSED:
            if not self.lost:
                self.transport.abortConnection()
        elif connect_deadline_passed(self):
            self.log.info("No CONNECT from {peer} in time; closing", peer=self.peer)
            self.broker.stats.connect_timeouts += 1
            self.state = CLOSED
            self.transport.abortConnection()

    # --- CONNECT ----------------------------------------------------------------------

    def _on_connect(self, packet: Connect) -> None:
        if self.state != AWAIT_CONNECT:
            raise ProtocolError("second CONNECT")  # [MQTT-3.1.0-2]
        self.version = packet.protocol_level
        self.state = CONNECTING
        if self.version == 5:
            # It bounds the CONNACK already [MQTT-3.2.2-19/20, MQTT-3.1.2-24].
            self.max_send_size = packet.properties.get(_P.MAXIMUM_PACKET_SIZE, 0)
        self.block()
        self.broker.handle_connect(self, packet)

    def refuse(self, error: MQTTError) -> None:
        """Answer CONNECT with a failure code and close [MQTT-3.2.2-5]."""
        if self.state == CLOSED:
            return
        if self.state == CONNECTED:  # the failure came after CONNACK: no second one
            clientlog.closing(self, ReasonCode.UNSPECIFIED_ERROR, error.message, "error")
            self.close(ReasonCode.UNSPECIFIED_ERROR)
            return
        self.broker.stats.refused(int(error.reason_code))
        if self.version == 5:
            code = int(error.reason_code)
            props = dict(getattr(error, "properties", None) or {})
            if error.message:
                props[_P.REASON_STRING] = error.message
            self.send(ConnAck(False, code, props))  # dropped if even the code cannot fit
        else:
            code = error.v3_return_code or 3  # 3: server unavailable
            self.send(ConnAck(False, code))
        if not isinstance(error, StoreUnavailable):  # the store logs its outage once
            clientlog.refused(self, error)
        self._shut()

    def accept(self, session: Session, session_present: bool, connect: Connect,
               properties: dict) -> None:
        """CONNECT succeeded: CONNACK, then resend in-flight messages, then the queue."""
        self.session = session
        self.state = CONNECTED
        if self.version == 5:
            client_props = connect.properties
            receive_max = client_props.get(_P.RECEIVE_MAXIMUM)
            if receive_max:
                self.send_quota = min(self.send_quota, receive_max)
            alias_max = client_props.get(_P.TOPIC_ALIAS_MAXIMUM, 0)
            if alias_max and self.broker.settings.outbound_topic_aliases != "off":
                self._aliases_out = OrderedDict()
                self._alias_limit = alias_max
        if self._rare is not None and self.auth_method is not None:  # (no record: None)
            properties[_P.AUTHENTICATION_METHOD] = self.auth_method  # MQTT 5 §3.2.2.3.17
            if self.auth_final_data is not None:
                properties[_P.AUTHENTICATION_DATA] = self.auth_final_data
            self.auth_final_data = None
        # Without properties (v3; v5 with nothing to say): bytes made once (core/wire.py).
        known = None if properties else CONNACKS.get((self.version, session_present))
        if known is not None and (not self.max_send_size or len(known) <= self.max_send_size):
            self.transport.write(known)
        elif not self.send(ConnAck(session_present, 0, properties)):
            # Not even without its optional properties: the client cannot be told it is
            # connected, so it is not [MQTT-3.1.2-24].
            self.log.info("Closing {client} from {peer}: CONNACK exceeds the client's "
                          "maximum packet size of {size}", client=self.client_id,
                          peer=self.peer, size=self.max_send_size)
            self.broker.stats.protocol_errors += 1
            self.clean_exit = True  # it never knew it was connected: no will either
            self._shut()
            return
        if self.keep_alive:
            self.last_rx = self.broker.clock.seconds()
            self.broker.deadlines.arm(self, self.last_rx + self.keep_alive * 1.5)
        elif self.due is not None:
            self.broker.deadlines.cancel(self)  # the CONNECT deadline
        clientlog.connected(self, connect.clean_start, session_present, self.keep_alive)
        if session_present:  # (a new session has nothing in flight or queued)
            self.broker.delivery.resend(session, self)
            self.broker.pump(session)
        self.unblock()


#: ``host:port``, as given, or made when asked from a ``(host, port, ...)`` address or
#: from the lean TCP transport that holds it (its ``peer_text``; 64 bytes less per idle
#: connection).  Outside the class body, which is at its size limit.
MQTTConnection.peer = property(lambda conn: p if type(p := conn._peer) is str else (  # type: ignore[attr-defined]
    f"{p[0]}:{p[1]}" if type(p) is tuple else p.peer_text()))

for _name, _field in rare_fields("MQTTConnection", {
        "auth_method": None, "auth_pending": None, "auth_final_data": None,
        "_aliases_in": None, "_alias_limit": 0, "_refused_logged": False,
        "certificate_identity": None, "_resume_call": None, "answer_due": False,
        "_lost_reason": None}).items():
    setattr(MQTTConnection, _name, _field)


def _server_only(conn: MQTTConnection, packet: Packet) -> None:
    """CONNACK, SUBACK, UNSUBACK and PINGRESP only ever travel server to client."""
    raise ProtocolError(f"a client sent {type(packet).__name__}")


#: Packet type -> handler; one table for all connections (no bound methods per connection).
_HANDLERS: dict[int, Callable[[MQTTConnection, Any], None]] = {
    **dict.fromkeys((PacketType.CONNACK, PacketType.SUBACK, PacketType.UNSUBACK,
                     PacketType.PINGRESP), _server_only),
    PacketType.CONNECT: MQTTConnection._on_connect,
    PacketType.PUBLISH: fastpath.handler(),  # core/qos0.py, else inbound.on_publish
    PacketType.PUBACK: inbound.on_puback,
    PacketType.PUBREC: inbound.on_pubrec,
    PacketType.PUBREL: inbound.on_pubrel,
    PacketType.PUBCOMP: inbound.on_pubcomp,
    PacketType.SUBSCRIBE: control.on_subscribe,
    PacketType.UNSUBSCRIBE: control.on_unsubscribe,
    PacketType.PINGREQ: control.on_pingreq,
    PacketType.DISCONNECT: control.on_disconnect,
    PacketType.AUTH: control.on_auth,
}
_HANDLERS = {int(k): v for k, v in _HANDLERS.items()}
