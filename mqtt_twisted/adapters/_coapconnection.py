"""CoAP connection mode, as EMQX's CoAP gateway has it: ``POST /mqtt/connection`` with
``clientid``, ``username`` and ``password`` authenticates once and answers a token;
later requests carry ``clientid`` and ``token`` instead of credentials; ``PUT``
keeps the connection alive, ``DELETE`` ends it.  While it lives the client id's
session is open, as an MQTT client's is while it is connected; a connection that
hears nothing for two heartbeats expires, and its session closes.
"""

from __future__ import annotations

import hmac
import os
from typing import Any

from mqtt_twisted.coap import message as m
from mqtt_twisted.coap.mapping import CoapError

#: The path of the connection resource.
PATH = ["mqtt", "connection"]


class Connection:
    """One connected client id: its token, who it authenticated as, its timer."""

    __slots__ = ("client_id", "token", "identity", "credentials", "timer")

    def __init__(self, client_id: str, identity: Any, credentials: Any) -> None:
        self.client_id = client_id
        self.token = os.urandom(12).hex()
        self.identity = identity
        self.credentials = credentials
        self.timer: Any = None


class Connections:
    """The live connections of one listener, by client id."""

    def __init__(self, clock: Any, heartbeat: float) -> None:
        self.clock = clock
        self.heartbeat = heartbeat
        self.live: dict[str, Connection] = {}
        #: Called with the client id of a connection that expired.
        self.on_expire: Any = None

    def add(self, conn: Connection) -> None:
        """A new connection (one of the same client id before it is replaced)."""
        self.remove(conn.client_id)
        self.live[conn.client_id] = conn
        conn.timer = self.clock.callLater(2 * self.heartbeat, self._expired, conn)

    def check(self, client_id: str | None, token: str) -> Connection:
        """The connection ``token`` names, kept alive; 4.01 for an unknown token."""
        conn = self.live.get(client_id) if client_id is not None else None
        if conn is None or not hmac.compare_digest(conn.token.encode(), token.encode()):
            raise CoapError(m.UNAUTHORIZED, "unknown or expired connection token: "
                            "POST /mqtt/connection again")
        if conn.timer is not None and conn.timer.active():
            conn.timer.reset(2 * self.heartbeat)
        return conn

    def remove(self, client_id: str) -> Connection | None:
        conn = self.live.pop(client_id, None)
        if conn is not None and conn.timer is not None and conn.timer.active():
            conn.timer.cancel()
        return conn

    def _expired(self, conn: Connection) -> None:
        if self.live.get(conn.client_id) is conn:
            del self.live[conn.client_id]
            if self.on_expire is not None:
                self.on_expire(conn.client_id)

    def stop(self) -> None:
        for client_id in list(self.live):
            self.remove(client_id)
