"""The client core's half that reads: one handler per packet type from the broker.

A mixin of :class:`~mqtt_twisted.client.core.ClientCore`, apart so that neither
half grows past a screenful of methods; it uses the core's state and ``_send``.
"""

from __future__ import annotations

from typing import Any

from mqtt_twisted.client.events import (
    Connected,
    ConnectRefused,
    Event,
    Message,
    PublishDone,
    Reauthenticated,
    ServerDisconnect,
    Subscribed,
    Unsubscribed,
    _Pong,
)
from mqtt_twisted.codec import (
    Auth,
    ConnAck,
    Disconnect,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    UnsubAck,
)
from mqtt_twisted.constants import PropertyId, ReasonCode
from mqtt_twisted.errors import ProtocolError


class _Inbound:
    """Packets from the broker in, events out (see ``ClientCore``)."""

    _decoder: Any
    _inflight: Any
    _incoming_qos2: set[int]
    _aliases: dict[int, str]
    _last_sent: float
    _ping_sent: float | None
    state: str
    receive_maximum: int
    topic_alias_maximum: int
    server_receive_maximum: int
    server_keep_alive: int | None
    client_id: str
    auth: Any
    manual_ack: bool
    _unacked: dict[int, Publish]
    _reauthenticating: bool
    _aliases_out: Any
    topic_aliases: bool
    version: int
    _send_publish: Any
    _auth_call: Any

    # --- input ---

    def receive(self, data: bytes) -> list[Event]:
        """Feed bytes from the broker; returns the events they complete.

        A broken packet or a protocol violation raises a
        :class:`~mqtt_twisted.errors.ProtocolError`; the shell writes DISCONNECT
        with its reason code (v5) and closes.
        """
        events: list[Event] = []
        for packet in self._decoder.feed(data):
            handler = self._HANDLERS.get(type(packet))
            if handler is None:
                raise ProtocolError(f"a client does not expect {type(packet).__name__}")
            event = handler(self, packet)
            if event is not None and not isinstance(event, _Pong):
                events.append(event)
        return events

    def _on_connack(self, p: ConnAck) -> Event:
        if self.state != "connecting":
            raise ProtocolError("CONNACK outside a connect")
        if p.reason_code:
            self.state = "closed"
            return ConnectRefused(p)
        self.state = "connected"
        props = p.properties
        if self.auth is not None:
            self._check_auth_method(props)
            self._auth_call(self.auth.finish, props.get(PropertyId.AUTHENTICATION_DATA))
        if self.topic_aliases:
            self._aliases_out.maximum = props.get(PropertyId.TOPIC_ALIAS_MAXIMUM, 0)
        self.server_receive_maximum = props.get(PropertyId.RECEIVE_MAXIMUM, 65535)
        self.server_keep_alive = props.get(PropertyId.SERVER_KEEP_ALIVE)
        if PropertyId.ASSIGNED_CLIENT_IDENTIFIER in props:
            self.client_id = props[PropertyId.ASSIGNED_CLIENT_IDENTIFIER]
        if not p.session_present:
            # The broker has no session: ours is gone too [MQTT-3.2.2-4/5].
            lost = self._drop_session()
            return Connected(p, lost)
        # Resend what is in flight, in order, with DUP [MQTT-4.4.0-1].
        for packet in list(self._inflight.values()):
            if isinstance(packet, Publish):
                packet.dup = True
                packet.properties.pop(PropertyId.TOPIC_ALIAS, None)
                self._send_publish(packet)
            else:
                self._send(packet)
        self._flush_waiting(self._last_sent)
        return Connected(p)

    def _on_publish(self, p: Publish) -> Event | None:
        self._require_connected()
        alias = p.properties.pop(PropertyId.TOPIC_ALIAS, None) if p.properties else None
        if alias is not None:
            if not 0 < alias <= self.topic_alias_maximum:
                raise ProtocolError(f"topic alias {alias} out of range",
                                    ReasonCode.TOPIC_ALIAS_INVALID)
            if p.topic:
                self._aliases[alias] = p.topic
            elif alias in self._aliases:
                p.topic = self._aliases[alias]
            else:
                raise ProtocolError(f"unknown topic alias {alias}", ReasonCode.PROTOCOL_ERROR)
        elif not p.topic:
            raise ProtocolError("PUBLISH without a topic", ReasonCode.PROTOCOL_ERROR)
        pid = p.packet_id
        if p.qos == 1:
            if not self.manual_ack:
                self._send(PubAck(pid))  # type: ignore[arg-type]
                return Message(p)
            if pid in self._unacked:
                return None  # a DUP of a message the application holds
            self._check_receive_maximum()
            self._unacked[pid] = p  # type: ignore[index]
        elif p.qos == 2:
            if pid in self._incoming_qos2:
                # A DUP of a message already delivered [MQTT-4.3.3-10]: answer it
                # again, unless the application has not acknowledged it yet.
                if pid not in self._unacked:
                    self._send(PubRec(pid))  # type: ignore[arg-type]
                return None
            self._check_receive_maximum()
            self._incoming_qos2.add(pid)  # type: ignore[arg-type]
            if self.manual_ack:
                self._unacked[pid] = p  # type: ignore[index]
            else:
                self._send(PubRec(pid))  # type: ignore[arg-type]
        return Message(p)

    def _check_receive_maximum(self) -> None:
        """Messages not yet PUBACKed or PUBRECed (held for the application's ack) count
        against the Receive Maximum we announced [MQTT-3.3.4-9].

        The spec counts a QoS 2 message until PUBCOMP; Mosquitto 2.0.11 frees the slot
        at PUBREC and sends the next one before its PUBREL.  Counting until PUBREC is
        where both agree, so the client stays connected to Mosquitto and still refuses
        a broker that ignores the limit.
        """
        if len(self._unacked) >= self.receive_maximum:
            raise ProtocolError("the broker exceeded our receive maximum",
                                ReasonCode.RECEIVE_MAXIMUM_EXCEEDED)

    def _on_puback(self, p: PubAck) -> Event:
        sent = self._inflight.get(p.packet_id)
        if not isinstance(sent, Publish) or sent.qos != 1:
            raise ProtocolError(f"PUBACK for unknown packet id {p.packet_id}")
        return self._complete(p.packet_id, p.reason_code, p.properties)

    def _on_pubrec(self, p: PubRec) -> Event | None:
        sent = self._inflight.get(p.packet_id)
        if isinstance(sent, PubRel):
            self._send(sent)  # a repeated PUBREC: answer it again
            return None
        if sent is None or sent.qos != 2:
            raise ProtocolError(f"PUBREC for unknown packet id {p.packet_id}")
        if p.reason_code >= 0x80:
            return self._complete(p.packet_id, p.reason_code, p.properties)
        rel = PubRel(p.packet_id)
        self._inflight[p.packet_id] = rel
        self._send(rel)
        return None

    def _on_pubrel(self, p: PubRel) -> None:
        self._incoming_qos2.discard(p.packet_id)
        self._send(PubComp(p.packet_id))

    def _on_pubcomp(self, p: PubComp) -> Event:
        if not isinstance(self._inflight.get(p.packet_id), PubRel):
            raise ProtocolError(f"PUBCOMP for unknown packet id {p.packet_id}")
        return self._complete(p.packet_id, p.reason_code, p.properties)

    def _complete(self, pid: int, code: int, props: dict) -> Event:
        del self._inflight[pid]
        self._release_id(pid)
        self._flush_waiting(self._last_sent)
        return PublishDone(pid, code, props)

    def _on_suback(self, p: SubAck) -> Event:
        self._release_id(p.packet_id)
        return Subscribed(p.packet_id, p.reason_codes, p.properties)

    def _on_unsuback(self, p: UnsubAck) -> Event:
        self._release_id(p.packet_id)
        return Unsubscribed(p.packet_id, p.reason_codes, p.properties)

    def _on_pingresp(self, p: PingResp) -> _Pong:
        self._ping_sent = None
        return _Pong()

    def _on_disconnect(self, p: Disconnect) -> Event:
        self.state = "closed"
        return ServerDisconnect(p.reason_code, p.properties)

    def _on_auth(self, p: Auth) -> Event | None:
        """The server's side of an enhanced authentication exchange [MQTT-4.12]."""
        if self.auth is None:
            raise ProtocolError("AUTH without an authentication method in our CONNECT")
        props = p.properties
        self._check_auth_method(props)
        data = props.get(PropertyId.AUTHENTICATION_DATA)
        exchanging = self.state == "connecting" or self._reauthenticating
        if p.reason_code == ReasonCode.CONTINUE_AUTHENTICATION and exchanging:
            answer = self._auth_call(self.auth.challenge, data)
            reply = {PropertyId.AUTHENTICATION_METHOD: self.auth.method}
            if answer is not None:
                reply[PropertyId.AUTHENTICATION_DATA] = answer
            self._send(Auth(ReasonCode.CONTINUE_AUTHENTICATION, reply))
            return None
        if p.reason_code == ReasonCode.SUCCESS and self._reauthenticating:
            self._reauthenticating = False
            self._auth_call(self.auth.finish, data)
            return Reauthenticated(props)
        raise ProtocolError(f"unexpected AUTH 0x{p.reason_code:02X}")

    def _check_auth_method(self, props: dict) -> None:
        method = props.get(PropertyId.AUTHENTICATION_METHOD)
        if method != self.auth.method:  # [MQTT-4.12.0-5]
            raise ProtocolError(f"authentication method {method!r} is not ours "
                                f"({self.auth.method!r})")

    _HANDLERS: dict[type, Any] = {
        ConnAck: _on_connack, Publish: _on_publish, PubAck: _on_puback, PubRec: _on_pubrec,
        PubRel: _on_pubrel, PubComp: _on_pubcomp, SubAck: _on_suback, UnsubAck: _on_unsuback,
        PingResp: _on_pingresp, Disconnect: _on_disconnect, Auth: _on_auth,
    }
