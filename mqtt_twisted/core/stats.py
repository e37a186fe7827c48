"""Counters the broker keeps for logs, $SYS topics and metrics."""

from __future__ import annotations


class BrokerStats:
    """Plain integer counters: incrementing one is the whole cost on the hot path."""

    __slots__ = (
        "started_at", "clients_connected", "clients_maximum", "clients_total",
        "messages_received", "messages_sent", "messages_dropped", "dropped_too_large",
        "protocol_errors", "keepalive_timeouts", "connect_timeouts", "takeovers",
        "wills_published", "store_errors", "connections_refused", "messages_expired",
        "bytes_received", "bytes_sent", "ownership_refusals", "rate_pauses", "rate_disconnects", "deliveries",
    )

    def __init__(self, started_at: float = 0.0) -> None:
        self.started_at = started_at
        self.clients_connected = 0
        self.clients_maximum = 0
        self.clients_total = 0
        self.messages_received = 0
        self.messages_sent = 0
        self.messages_dropped = 0
        self.dropped_too_large = 0
        self.protocol_errors = 0
        self.keepalive_timeouts = 0
        self.connect_timeouts = 0
        self.takeovers = 0
        self.wills_published = 0
        self.store_errors = 0
        self.connections_refused = 0
        self.messages_expired = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        #: CONNECTs refused because the client id's session belongs to another user.
        self.ownership_refusals = 0
        #: Clients paused for their message/byte rate, and v5 clients closed for it (0x96).
        self.rate_pauses = 0
        self.rate_disconnects = 0
        #: Messages routed to a session, sent or queued: the work publishes make.
        self.deliveries = 0

    def client_connected(self) -> None:
        self.clients_connected += 1
        self.clients_total += 1
        if self.clients_connected > self.clients_maximum:
            self.clients_maximum = self.clients_connected

    def client_disconnected(self) -> None:
        self.clients_connected -= 1

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in self.__slots__}
