"""One bridge: a virtual session in this broker joined to a client of the remote one.

The local side enters the broker through the :class:`~mqtt_twisted.gateway.Gateway`,
as an adapter does: a persistent session (``local.CLIENT_ID``) subscribed to the
``out`` filters, whose sink is this object.  The remote side is an
:class:`~mqtt_twisted.client.service.MQTTClientService` subscribed to the ``in``
filters.  While the remote is down the local session is paused, so QoS 1/2 messages
wait in the broker's queue for the session (bounded by ``--max-queued``); what was
in flight to the remote is published again when it is back.

Loops: the remote subscription has no-local (MQTT 5) or the connection carries
Mosquitto's bridge bit (3.1.1, ``remote.py``); a message this bridge published into
the broker is never sent back to the remote it came from.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from mqtt_twisted.bridge.config import BridgeConfig
from mqtt_twisted.bridge.remote import BridgeCore
from mqtt_twisted.client.service import MQTTClientService
from mqtt_twisted.codec import Subscription
from mqtt_twisted.constants import PropertyId
from mqtt_twisted.interfaces import IMessageSink
from mqtt_twisted.message import Message

__all__ = ["Bridge"]

log = Logger()

#: Publishes handed to the remote side and not yet acknowledged, beyond which the local
#: session is paused (the broker queues for it) until half of them are done.
WINDOW = 1000
#: Properties that belong to one hop, not to the message.
_HOP = (PropertyId.TOPIC_ALIAS, PropertyId.SUBSCRIPTION_IDENTIFIER)


@implementer(IMessageSink)
class Bridge(Service):
    """One ``--bridge``: started once the broker is ready, stopped with it."""

    def __init__(self, reactor: Any, gateway: Any, config: BridgeConfig,
                 retry_policy: Any = None, endpoint: Any = None) -> None:
        self.reactor = reactor
        self.gateway = gateway
        self.config = config
        self.setName(f"bridge {config.name}")
        core = BridgeCore(config.client_id, config.protocol, keep_alive=config.keepalive,
                          clean_start=config.clean, username=config.username,
                          password=config.password.encode() if config.password else None,
                          properties=({PropertyId.SESSION_EXPIRY_INTERVAL: 0xFFFFFFFF}
                                      if config.protocol == 5 and not config.clean else None),
                          try_private=config.try_private)
        # ``endpoint``: an IStreamClientEndpoint instead of config.endpoint (tests).
        self.remote = MQTTClientService(reactor, endpoint or config.endpoint, core=core,
                                        retry_policy=retry_policy,
                                        max_queued=config.max_queued,
                                        max_queued_bytes=config.max_queued_bytes,
                                        on_message=self._from_remote)
        self.remote.on_connect.append(self._remote_up)
        self.remote.on_disconnect.append(self._remote_down)
        self.conn: Any = None
        self.messages_in = 0
        self.messages_out = 0
        self.dropped = 0
        self.loops_stopped = 0
        self._outstanding = 0
        self._window_full = False
        self._opening: Deferred[Any] | None = None
        self._reopen: Any = None

    # --- lifecycle ------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        config = self.config
        self._open_local()
        v5 = config.protocol == 5
        for rule in config.topics:
            if rule.incoming:
                # No handler: every message goes to on_message once, however many of
                # the bridge's filters it matches.
                self.remote.subscribe([Subscription(rule.remote_filter, rule.qos,
                                                    no_local=v5, retain_as_published=v5)]
                                      ).addErrback(self._subscribe_failed, rule.remote_filter)
        self.gateway.addSysValues(self.sys_values)
        self.remote.startService()

    def _open_local(self) -> None:
        self._reopen = None
        config = self.config
        credentials = SimpleNamespace(
            username=config.local_username, adapter="bridge", peer=f"bridge {config.name}",
            password=config.local_password.encode() if config.local_password else None,
            clientId=config.local_client_id)
        self._opening = self.gateway.openSession(config.local_client_id, self,
                                                 config.clean, credentials)
        self._opening.addCallbacks(self._local_open, self._local_refused)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._reopen is not None and self._reopen.active():
            self._reopen.cancel()
        self.gateway.removeSysValues(self.sys_values)
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()
        return self.remote.stopService()

    def sessionClosed(self, reason: Any) -> None:
        """The broker ended the local session (an admin's kick, a takeover of its client
        id): open it again a second later while the bridge runs."""
        if self.conn is None or not self.running:
            return
        self.conn = None
        log.warn("Bridge {name}: its session here was closed (reason {reason}); opening "
                 "it again", name=self.config.name, reason=reason)
        self._reopen = self.reactor.callLater(1.0, self._open_local)

    def _local_open(self, session: Any) -> None:
        self.conn = session.connection
        if not self.remote.online:
            self.conn.pauseWriting()
        for rule in self.config.topics:
            if rule.outgoing:
                self.gateway.subscribe(self.config.local_client_id, rule.local_filter,
                                       rule.qos).addErrback(self._subscribe_failed,
                                                            rule.local_filter)

    def _local_refused(self, failure: Any) -> None:
        log.error("Bridge {name}: this broker refused its session: {error}",
                  name=self.config.name, error=failure.getErrorMessage())

    def _subscribe_failed(self, failure: Any, topic_filter: str) -> None:
        log.warn("Bridge {name}: could not subscribe to {filter}: {error}",
                 name=self.config.name, filter=topic_filter, error=failure.getErrorMessage())

    # --- the remote's state ---------------------------------------------------------------

    def _remote_up(self, proto: Any) -> None:
        log.info("Bridge {name} connected to {endpoint} as {client_id}",
                 name=self.config.name, endpoint=self.config.endpoint,
                 client_id=self.remote.core.client_id, action="bridge_connected")
        self._resume()

    def _remote_down(self, reason: Any) -> None:
        log.info("Bridge {name} lost {endpoint}: {why}{next}",
                 name=self.config.name, endpoint=self.config.endpoint,
                 why=reason.getErrorMessage() if reason is not None else "closed",
                 next="; reconnecting" if self.running else " (stopping)",
                 action="bridge_disconnected")
        if self.conn is not None:
            self.conn.pauseWriting()

    def _resume(self) -> None:
        if (self.conn is not None and self.remote.online and not self._window_full
                and self.running):
            self.conn.resumeWriting()

    # --- local -> remote (IMessageSink) ---------------------------------------------------

    def deliver(self, message: Message, qos: int) -> bool:
        """A message of an ``out`` filter: publish it on the remote.  False (the broker
        queues for the session) while the remote is down or too far behind."""
        if message.sender == self.config.local_client_id:
            self.loops_stopped += 1  # it came from this remote: never send it back
            return True
        for rule in self.config.topics:
            topic = rule.to_remote(message.topic)
            if topic is not None:
                break
        else:
            return True
        properties = None
        if self.config.protocol == 5 and message.properties:
            properties = {k: v for k, v in message.properties.items() if k not in _HOP}
        d = self.remote.publish(topic, message.payload, qos, message.retain, properties)
        self.messages_out += 1
        if qos:
            self._outstanding += 1
            d.addBoth(self._done)
        d.addErrback(self._not_sent, topic)
        if self._outstanding >= WINDOW:
            self._window_full = True
        return self.remote.online and not self._window_full

    def _done(self, result: Any) -> Any:
        self._outstanding -= 1
        if self._window_full and self._outstanding <= WINDOW // 2:
            self._window_full = False
            self._resume()
        return result

    def _not_sent(self, failure: Any, topic: str) -> None:
        self.dropped += 1
        log.warn("Bridge {name}: {topic} not published on the remote: {error}",
                 name=self.config.name, topic=topic, error=failure.getErrorMessage())

    # --- remote -> local --------------------------------------------------------------------

    def _from_remote(self, received: Any) -> None:
        publish = received.publish
        for rule in self.config.topics:
            topic = rule.to_local(publish.topic)
            if topic is not None:
                break
        else:
            return
        properties = {k: v for k, v in publish.properties.items() if k not in _HOP} \
            if publish.properties else None
        message = Message(topic, publish.payload, publish.qos, publish.retain, None,
                          properties)
        self.messages_in += 1
        self.gateway.publish(message, self.config.local_client_id).addErrback(
            self._not_published, topic)

    def _not_published(self, failure: Any, topic: str) -> None:
        self.dropped += 1
        log.warn("Bridge {name}: {topic} from the remote not published here: {error}",
                 name=self.config.name, topic=topic, error=failure.getErrorMessage())

    # --- $SYS -------------------------------------------------------------------------------

    def sys_values(self) -> dict[str, str]:
        """``$SYS/broker/bridges/NAME/...``: connected, queued, messages in and out."""
        core = self.remote.core
        session = getattr(self.conn, "session", None)
        waiting = len(session.queue) if session is not None else 0
        prefix = f"bridges/{self.config.name}/"
        return {
            prefix + "connected": "1" if self.remote.online else "0",
            prefix + "queued": str(waiting + self.remote.queued + core.inflight + core.queued),
            prefix + "messages/in": str(self.messages_in),
            prefix + "messages/out": str(self.messages_out),
            prefix + "messages/dropped": str(self.dropped + self.remote.dropped),
        }
