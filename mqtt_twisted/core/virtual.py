"""Virtual connections: sessions of adapters that are not MQTT streams (HTTP, CoAP).

The broker delivers to them like to any connection; they hand each message to
an :class:`~mqtt_twisted.interfaces.IMessageSink` and complete QoS 1/2 flows at
once, since the sink has taken the message.  A sink whose client cannot keep up
returns False from ``deliver`` (or its adapter calls
:meth:`VirtualConnection.pauseWriting`): the broker then queues for the session
within its bounds, as for a paused MQTT connection, until
:meth:`VirtualConnection.resumeWriting`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zope.interface import implementer

from mqtt_twisted.constants import ReasonCode
from mqtt_twisted.core import clientlog
from mqtt_twisted.core.states import CLOSED, CONNECTED, CONNECTING
from mqtt_twisted.errors import MQTTError, StoreUnavailable
from mqtt_twisted.interfaces import ISessionLink
from mqtt_twisted.message import Message

if TYPE_CHECKING:
    from mqtt_twisted.core.broker import Broker
    from mqtt_twisted.core.session import Session


@implementer(ISessionLink)
class VirtualConnection:
    """Stands where an MQTTConnection would, for a non-MQTT client."""

    #: No MQTT keep alive: the adapter watches its own clients.
    virtual = True

    __slots__ = ("broker", "sink", "session", "client_id", "state", "paused", "send_quota",
                 "peer", "clean_exit", "keep_alive", "listener", "certificate_identity",
                 "version", "on_accept", "on_refuse", "username", "ended")

    def __init__(self, broker: Broker, sink: Any, client_id: str, peer: str = "",
                 listener: Any = None) -> None:
        self.broker = broker
        self.sink = sink
        self.session: Session | None = None
        self.client_id = client_id
        self.state = CONNECTING
        self.paused = False
        self.send_quota = 1 << 30
        self.peer = peer
        self.clean_exit = True
        self.keep_alive = 0
        self.listener = listener
        self.certificate_identity = None
        self.version = 4
        self.on_accept: Any = None
        self.on_refuse: Any = None
        self.username: str | None = None
        self.ended: Any = None  # why it ends, for the (debug) disconnect line

    def accept(self, session: Session, session_present: bool, connect: Any,
               properties: Any) -> None:
        """The broker opened (or resumed) the session."""
        self.session = session
        self.state = CONNECTED
        clientlog.connected(self, getattr(connect, "clean_start", True), session_present, 0)
        self.broker.pump(session)
        if self.on_accept is not None:
            self.on_accept(session)

    def refuse(self, error: Exception) -> None:
        self.broker.stats.refused(int(getattr(error, "reason_code", ReasonCode.UNSPECIFIED_ERROR)))
        if isinstance(error, MQTTError) and not isinstance(error, StoreUnavailable):
            clientlog.refused(self, error)
        self.state = CLOSED
        if self.on_refuse is not None:
            self.on_refuse(error)

    def send_publish(self, message: Message, qos: int, retain: bool, packet_id: int | None,
                     subscription_ids: Any, dup: bool = False) -> bool:
        if self.state == CLOSED:
            return False
        if retain != message.retain or qos != message.qos:
            message = message.copy(retain=retain, qos=qos)
        if self.sink.deliver(message, qos) is False:
            self.paused = True  # the sink is full: the broker queues until resumeWriting()
        stats = self.broker.stats
        stats.messages_sent += 1
        if qos:
            if qos == 1:
                stats.sent_qos1 += 1
            else:
                stats.sent_qos2 += 1
        if packet_id is not None and self.session is not None:
            self.broker.outbound_done(self.session, packet_id)
        return True

    def send(self, packet: Any) -> None:
        """Virtual clients receive no control packets."""

    def send_ack(self, first_byte: int, packet_id: int) -> None:
        """Nor acknowledgements."""

    def pauseWriting(self) -> None:
        """The client cannot take more for now: the broker queues for the session."""
        self.paused = True

    def resumeWriting(self) -> None:
        """The client can take messages again: deliver what was queued meanwhile."""
        self.paused = False
        if self.session is not None and self.state == CONNECTED:
            self.broker.pump(self.session)

    def taken_over(self) -> None:
        self.close(ReasonCode.SESSION_TAKEN_OVER)

    def close(self, reason_code: int | None = None, properties: Any = None) -> None:
        """End the virtual connection; the sink hears of it, the broker keeps or drops
        the session as for any connection."""
        if self.state == CLOSED:
            return
        self.state = CLOSED
        clientlog.closing(self, reason_code, why=None if reason_code is not None else "closed")
        if self.session is not None:
            self.broker.connection_ended(self, send_will=False)  # type: ignore[arg-type]
        closed = getattr(self.sink, "sessionClosed", None)
        if closed is not None:
            closed(reason_code)
