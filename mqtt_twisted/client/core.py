"""The sans-IO MQTT client: commands in, bytes out; bytes in, events out.

:class:`ClientCore` holds what outlives one connection (packet ids, the QoS 1/2
in-flight state of a persistent session) and what belongs to the current one
(the decoder, the server's receive maximum, received topic aliases).  Every
command and :meth:`ClientCore.receive` append what must be written to a buffer
the shell drains with :meth:`ClientCore.data_to_send`, as h11 does, because one
received byte string may release several writes (acks, queued publishes).
Time comes in as a number (:meth:`ClientCore.tick`); nothing here touches a reactor.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

from mqtt_twisted.client._aliases import TopicAliases
from mqtt_twisted.client._inbound import _Inbound
from mqtt_twisted.client.events import (
    AuthMethodError,
    Connected,
    ConnectError,
    ConnectRefused,
    Event,
    Message,
    PublishDone,
    PublishError,
    Reauthenticated,
    ServerDisconnect,
    SessionLost,
    Subscribed,
    Unsubscribed,
    connect_error,
)
from mqtt_twisted.codec import (
    Auth,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PubAck,
    Publish,
    PubRec,
    PubRel,
    StreamDecoder,
    Subscribe,
    Subscription,
    Unsubscribe,
    Will,
    encode,
)
from mqtt_twisted.constants import MAX_PACKET_ID, PropertyId, ReasonCode
from mqtt_twisted.errors import MQTTError, ProtocolError

__all__ = [
    "AuthMethodError", "ClientCore", "ConnectError", "ConnectRefused", "Connected", "Event",
    "Message", "PublishDone", "PublishError", "Reauthenticated", "ServerDisconnect",
    "SessionLost", "Subscribed", "Unsubscribed", "connect_error",
]


# --- the state machine -------------------------------------------------------------------


class ClientCore(_Inbound):
    """One MQTT client session, across as many connections as it takes.

    States: ``"closed"`` (no connection), ``"connecting"`` (CONNECT written),
    ``"connected"`` (CONNACK 0 received).
    """

    def __init__(self, client_id: str = "", version: int = 4, *, keep_alive: int = 60,
                 clean_start: bool = True, username: str | None = None,
                 password: bytes | None = None, will: Will | None = None,
                 properties: dict | None = None, receive_maximum: int = 65535,
                 topic_alias_maximum: int = 16, topic_aliases: bool = True,
                 auth: Any = None, manual_ack: bool = False) -> None:
        if version not in (3, 4, 5):
            raise ValueError(f"protocol version {version}: expected 3, 4 or 5")
        if auth is not None and version != 5:
            raise ValueError("enhanced authentication (auth=) needs MQTT 5")
        if not 0 < receive_maximum <= 65535:
            raise ValueError(f"receive_maximum {receive_maximum}: expected 1 to 65535")
        self.client_id = client_id
        self.version = version
        self.keep_alive = keep_alive
        self.clean_start = clean_start
        self.username = username
        self.password = password
        self.will = will
        self.properties = dict(properties or {})
        self.receive_maximum = receive_maximum
        self.topic_alias_maximum = topic_alias_maximum if version == 5 else 0
        #: Assign aliases to our PUBLISHes' topics when the server allows them (v5).
        self.topic_aliases = topic_aliases
        #: The enhanced authentication method (an ``IClientAuthMethod``), or None.
        self.auth = auth
        self._reauthenticating = False
        #: Incoming QoS 1/2 messages wait for :meth:`ack` before PUBACK/PUBREC.
        self.manual_ack = manual_ack
        #: Incoming QoS 1/2 messages delivered but not acknowledged yet (manual_ack).
        self._unacked: dict[int, Publish] = {}
        self._aliases_out = TopicAliases()
        self.state = "closed"
        self._out: list[bytes] = []
        self._decoder = StreamDecoder(version)
        self._next_id = 1
        self._used_ids: set[int] = set()
        #: Our QoS 1/2 publishes not yet complete, in send order: id -> PUBLISH, or
        #: PUBREL once the PUBREC came (the QoS 2 second half).
        self._inflight: OrderedDict[int, Publish | PubRel] = OrderedDict()
        #: QoS 1/2 publishes waiting for a slot under the server's receive maximum.
        self._waiting: deque[Publish] = deque()
        #: QoS 2 packet ids received (PUBREC sent) whose PUBREL has not come yet.
        self._incoming_qos2: set[int] = set()
        self._aliases: dict[int, str] = {}
        self.server_receive_maximum = 65535
        self.server_keep_alive: int | None = None
        self._last_sent = 0.0
        self._ping_sent: float | None = None

    # --- output ---

    def data_to_send(self) -> bytes:
        """Everything the commands and received bytes asked to write, once."""
        data = b"".join(self._out)
        self._out.clear()
        return data

    def _send(self, packet: Packet) -> None:
        self._out.append(encode(packet, self.version))

    @property
    def effective_keep_alive(self) -> int:
        """The keep alive in force: the server's SERVER_KEEP_ALIVE overrides ours (v5)."""
        return self.server_keep_alive if self.server_keep_alive is not None else self.keep_alive

    @property
    def persistent(self) -> bool:
        """Whether the broker keeps our session after the connection ends."""
        if self.clean_start:
            return False
        return self.version < 5 or bool(self.properties.get(PropertyId.SESSION_EXPIRY_INTERVAL))

    @property
    def inflight(self) -> int:
        """How many of our QoS 1/2 publishes are on the wire, unacknowledged."""
        return len(self._inflight)

    @property
    def queued(self) -> int:
        """How many QoS 1/2 publishes wait for the receive maximum to allow them."""
        return len(self._waiting)

    # --- commands ---

    def connect(self, now: float = 0.0) -> list[int]:
        """Start a connection: write CONNECT.  Returns the packet ids this drops.

        With clean start the client's own session state goes [MQTT-3.1.2-6]; the
        ids of the publishes that can no longer complete are returned so that the
        shell can fail their waiters.
        """
        dropped: list[int] = []
        if self.clean_start:
            dropped = self._drop_session()
        self.state = "connecting"
        self._decoder = StreamDecoder(self.version)
        self._aliases.clear()
        self._aliases_out = TopicAliases()  # aliases die with the connection [MQTT-3.3.2-7]
        self._reauthenticating = False
        self.server_receive_maximum = 65535
        self.server_keep_alive = None
        self._ping_sent = None
        props = dict(self.properties)
        if self.version == 5:
            if self.receive_maximum != 65535:
                props[PropertyId.RECEIVE_MAXIMUM] = self.receive_maximum
            if self.topic_alias_maximum:
                props[PropertyId.TOPIC_ALIAS_MAXIMUM] = self.topic_alias_maximum
            if self.auth is not None:
                props.update(self._auth_start())
        else:
            props = {}
        self._send(Connect(self.client_id, self.version, self.clean_start, self.keep_alive,
                           self.will, self.username, self.password, props))
        self._last_sent = now
        return dropped

    def _drop_session(self) -> list[int]:
        dropped = list(self._inflight) + [p.packet_id for p in self._waiting
                                          if p.packet_id is not None]
        self._inflight.clear()
        self._waiting.clear()
        self._incoming_qos2.clear()
        self._unacked.clear()
        self._used_ids.difference_update(dropped)
        return dropped

    def _allocate_id(self) -> int:
        if len(self._used_ids) >= MAX_PACKET_ID:
            raise MQTTError("all 65535 packet identifiers are in use")
        while self._next_id in self._used_ids:
            self._next_id = self._next_id % MAX_PACKET_ID + 1
        pid = self._next_id
        self._next_id = pid % MAX_PACKET_ID + 1
        self._used_ids.add(pid)
        return pid

    def _release_id(self, pid: int) -> None:
        self._used_ids.discard(pid)

    def publish(self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False,
                properties: dict | None = None, now: float = 0.0) -> int | None:
        """Queue a PUBLISH; returns its packet id (None for QoS 0).

        QoS 1/2 beyond the server's receive maximum wait and go out as acks free
        slots [MQTT-4.9.0-2]; while disconnected they wait for the next connection.
        """
        if qos not in (0, 1, 2):
            raise ValueError(f"QoS {qos}: expected 0, 1 or 2")
        props = dict(properties or {}) if self.version == 5 else {}
        if PropertyId.TOPIC_ALIAS in props and self.topic_aliases:
            raise ValueError("topic aliases are assigned by the client (topic_aliases=False "
                             "to set them yourself)")
        if qos == 0:
            if self.state != "connected":
                raise MQTTError("not connected: a QoS 0 message would be lost")
            self._send_publish(Publish(topic, payload, 0, retain, False, None, props))
            self._last_sent = now
            return None
        packet = Publish(topic, payload, qos, retain, False, self._allocate_id(), props)
        self._waiting.append(packet)
        self._flush_waiting(now)
        return packet.packet_id

    def _flush_waiting(self, now: float) -> None:
        if self.state != "connected":
            return
        while self._waiting and len(self._inflight) < self.server_receive_maximum:
            packet = self._waiting.popleft()
            self._inflight[packet.packet_id] = packet  # type: ignore[index]
            self._send_publish(packet)
            self._last_sent = now

    def _send_publish(self, packet: Publish) -> None:
        """Write a PUBLISH, its topic replaced by an alias where the server allows one.

        The packet kept in flight keeps its topic: a resend goes out on another
        connection, whose aliases start afresh.
        """
        if self._aliases_out.maximum and packet.topic:
            topic, alias = self._aliases_out.assign(packet.topic)
            if alias is not None:
                packet = Publish(topic, packet.payload, packet.qos, packet.retain, packet.dup,
                                 packet.packet_id,
                                 {**packet.properties, PropertyId.TOPIC_ALIAS: alias})
        self._send(packet)

    def subscribe(self, subscriptions: list[Subscription], properties: dict | None = None,
                  now: float = 0.0) -> int:
        self._require_connected()
        pid = self._allocate_id()
        self._send(Subscribe(pid, subscriptions,
                             dict(properties or {}) if self.version == 5 else {}))
        self._last_sent = now
        return pid

    def unsubscribe(self, topic_filters: list[str], properties: dict | None = None,
                    now: float = 0.0) -> int:
        self._require_connected()
        pid = self._allocate_id()
        self._send(Unsubscribe(pid, topic_filters,
                               dict(properties or {}) if self.version == 5 else {}))
        self._last_sent = now
        return pid

    def disconnect(self, reason_code: int = 0, properties: dict | None = None) -> None:
        """Write DISCONNECT; the shell closes the transport after it."""
        if self.state == "closed":
            return
        self._send(Disconnect(reason_code, dict(properties or {}) if self.version == 5 else {}))
        self.state = "closed"

    def ack(self, publish: Publish) -> None:
        """Acknowledge an incoming message (``manual_ack``): PUBACK (QoS 1) or PUBREC
        (QoS 2).  Until then it counts against our receive maximum.  Disconnected, a
        QoS 1 ack is dropped (the broker sends the message again) and a QoS 2 one is
        answered when the broker repeats the PUBLISH.  The message itself, not its
        packet id, is the key: a late ack of a message from an earlier connection
        cannot acknowledge a new one that reuses the id."""
        pid = publish.packet_id
        if pid is None or self._unacked.get(pid) is not publish:
            return
        del self._unacked[pid]
        if self.state == "connected":
            self._send(PubAck(pid) if publish.qos == 1 else PubRec(pid))

    # --- enhanced authentication [MQTT-4.12] ---

    def _auth_start(self) -> dict:
        props = {PropertyId.AUTHENTICATION_METHOD: self.auth.method}
        data = self._auth_call(self.auth.start)
        if data is not None:
            props[PropertyId.AUTHENTICATION_DATA] = data
        return props

    def _auth_call(self, step: Any, *args: Any) -> Any:
        try:
            return step(*args)
        except Exception as e:
            raise AuthMethodError(f"authentication method {self.auth.method}: {e}",
                                  ReasonCode.UNSPECIFIED_ERROR) from e

    def reauthenticate(self, now: float = 0.0) -> None:
        """Start a re-authentication (AUTH 0x19) with the CONNECT's method [MQTT-4.12.1]."""
        self._require_connected()
        if self.auth is None:
            raise MQTTError("re-authentication needs the enhanced authentication method "
                            "the connection was made with (auth=)")
        if self._reauthenticating:
            raise MQTTError("a re-authentication is already under way")
        self._send(Auth(ReasonCode.RE_AUTHENTICATE, self._auth_start()))
        self._reauthenticating = True
        self._last_sent = now

    def _require_connected(self) -> None:
        if self.state != "connected":
            raise MQTTError(f"not connected (state {self.state!r})")

    def connection_lost(self) -> list[int]:
        """The transport went away.  Returns the ids of what can no longer complete.

        A persistent session keeps its in-flight publishes for the next connection
        (resent with DUP); with clean start they are dropped when it connects again,
        and subscribe/unsubscribe waiters never survive a connection.
        """
        self.state = "closed"
        self._reauthenticating = False
        # Unacknowledged QoS 1 comes again; a QoS 2 id stays held until acked.
        self._unacked = {pid: p for pid, p in self._unacked.items() if p.qos == 2}
        pending = [pid for pid in self._used_ids
                   if pid not in self._inflight
                   and all(p.packet_id != pid for p in self._waiting)]
        for pid in pending:
            self._release_id(pid)
        return pending

    # --- time ---

    def tick(self, now: float) -> float | None:
        """Keepalive: write PINGREQ when due; seconds until the next call, or None.

        Raises :class:`ProtocolError` when a PINGRESP is overdue (a keep alive
        without an answer): the shell drops the connection.
        """
        ka = self.effective_keep_alive
        if self.state != "connected" or not ka:
            return None
        if self._ping_sent is not None:
            if now - self._ping_sent >= ka:
                raise ProtocolError("no PINGRESP within the keep alive")
            return self._ping_sent + ka - now
        due = self._last_sent + ka
        if now >= due:
            self._send(PingReq())
            self._last_sent = self._ping_sent = now
            return float(ka)
        return due - now
