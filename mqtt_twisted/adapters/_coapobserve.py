"""CoAP observers (RFC 7641) as broker sessions: one :class:`CoapClient` per client id
is the sink of its virtual session, and each of its observations (a topic filter
with the token and address that registered it) gets the matching messages as
notifications with increasing Observe numbers.  NON notifications for QoS 0, CON
for QoS 1/2 (as EMQX sends them); an observer whose CON notifications go
unacknowledged MAX_RETRANSMIT times, or who answers one with RST, is unsubscribed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from zope.interface import implementer

from mqtt_twisted.coap import mapping
from mqtt_twisted.coap import message as m
from mqtt_twisted.coap import options as opt
from mqtt_twisted.codec.topics import parse_shared_filter, topic_matches
from mqtt_twisted.interfaces import IMessageSink
from mqtt_twisted.message import Message

if TYPE_CHECKING:
    from mqtt_twisted.adapters._coaprequests import CoapRequests

log = Logger(namespace="mqtt_twisted.adapters.coap")

#: Observe numbers are 24 bits (RFC 7641 §4.4).
OBSERVE_MODULO = 1 << 24
#: A QoS 0 observer still gets a CON notification this often (seconds), so that one
#: that went away is noticed (RFC 7641 §4.5: at least every 24 hours).
CON_EVERY = 86400.0


class Observation:
    """One registered GET with Observe 0: where and how its notifications go."""

    __slots__ = ("filter", "match", "token", "peer", "key", "seq", "qos", "pending", "held",
                 "last_con", "wildcard", "address")

    def __init__(self, topic_filter: str, token: bytes, peer: Any, key: Any = None) -> None:
        self.filter = topic_filter
        #: The registering request's sender and URI: where the Block2 pieces of a large
        #: notification are fetched from.
        self.key = key
        shared = parse_shared_filter(topic_filter)
        self.match = shared.filter if shared is not None else topic_filter
        #: Its notifications say which topic each message came from (Location-Path).
        self.wildcard = mapping.is_wildcard(self.match)
        self.token = token
        self.peer = peer
        self.seq = 1
        self.qos = 0
        #: True until the registration is answered: messages wait in ``held``.
        self.pending = True
        self.held: list[tuple[Message, int]] = []
        #: When the last CON notification went out (or the registration was answered).
        self.last_con = 0.0
        #: The source address its registration is counted for (None once released).
        self.address: str | None = None

    def next_seq(self) -> int:
        self.seq = (self.seq + 1) % OBSERVE_MODULO
        return self.seq


@implementer(IMessageSink)
class CoapClient:
    """One CoAP client id's observations: the sink of its virtual session."""

    def __init__(self, requests: CoapRequests, client_id: str) -> None:
        self.requests = requests
        self.client_id = client_id
        self.observations: dict[str, Observation] = {}
        self.conn: Any = None
        self.closed = False
        #: True while a connection-mode connection holds the session open.
        self.connected = False
        #: CON notifications sent and not yet acknowledged.
        self.in_flight = 0

    # --- IMessageSink --------------------------------------------------------------------

    def deliver(self, message: Message, qos: int) -> bool:
        for obs in list(self.observations.values()):
            if topic_matches(obs.match, message.topic):
                if obs.pending:
                    obs.held.append((message, qos))
                else:
                    self.notify(obs, message, qos)
        return self.in_flight < self.requests.config.nstart

    def sent_confirmable(self) -> None:
        self.in_flight += 1

    def acknowledged(self) -> None:
        """A CON notification was acknowledged (or given up): once half the window
        (NSTART, the listener's ``nstart``) is free again, the broker delivers what it
        queued meanwhile."""
        self.in_flight -= 1
        conn = self.conn
        if conn is not None and conn.paused and \
                self.in_flight <= self.requests.config.nstart // 2 and not self.closed:
            conn.resumeWriting()

    def sessionClosed(self, reason: Any) -> None:
        """The broker ended the session (taken over, removed, shut down): each observer
        still registered hears so, a 5.03 without Observe ending its observation
        (RFC 7641 §3.2), so that it can register again."""
        self.closed = True
        ended, self.observations = list(self.observations.values()), {}
        self.conn = None
        for obs in ended:
            self.requests.release(obs)
            if not obs.pending:
                note = m.CoapMessage(m.NON, m.SERVICE_UNAVAILABLE, 0, obs.token, [],
                                     b"the session ended")
                obs.peer.send_notification(self, obs, note, False)
        self.requests.client_gone(self)

    # --- notifications -------------------------------------------------------------------

    def notify(self, obs: Observation, message: Message, qos: int) -> None:
        """One notification to ``obs`` (its first Block2 piece if it is long): NON at
        QoS 0 (but CON once a day), CON at QoS 1/2, as EMQX sends them."""
        note = m.CoapMessage(m.NON, m.CONTENT, 0, obs.token,
                             [(opt.OBSERVE, opt.encode_uint(obs.next_seq())),
                              *mapping.notification_options(message)], message.payload)
        if obs.wildcard:
            note.options += mapping.topic_options(message.topic)
        self.requests.first_block(obs.key, note)
        now = self.requests.reactor.seconds()
        confirmable = qos > 0 or now - obs.last_con >= CON_EVERY
        if confirmable:
            obs.last_con = now
        obs.peer.send_notification(self, obs, note, confirmable)

    # --- ending observations ---------------------------------------------------------------

    def lost(self, obs: Observation, why: str) -> None:
        """The observer went away (RST, or CON notifications unanswered): unsubscribe."""
        if self.observations.get(obs.filter) is not obs:
            return
        log.info("CoAP observer {client} of {filter} dropped: {why}",
                 client=self.client_id, filter=obs.filter, why=why)
        self.requests.forget(self, obs.filter)

    def close(self) -> None:
        """End the session (no observation is left)."""
        if self.conn is not None and not self.closed:
            self.conn.close()
