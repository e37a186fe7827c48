"""Counters the broker keeps for logs, $SYS topics and metrics."""

from __future__ import annotations

#: What ``BrokerStats.limit_hits`` counts, one key per limit (docs/limits.md):
#: packets over the packet size or user property limits, topics and filters over
#: the level or length limits, SUBSCRIBEs over the subscriptions per session,
#: retained messages over their quota, new persistent sessions over max_sessions,
#: connections refused by a full listener.
LIMIT_KINDS = ("packet_size", "topic", "subscriptions", "retained", "sessions",
               "listener_full")


class BrokerStats:
    """Plain integer counters: incrementing one is the whole cost on the hot path."""

    __slots__ = (
        "started_at", "clients_connected", "clients_maximum", "clients_total",
        "messages_received", "messages_sent", "messages_dropped", "dropped_too_large",
        "protocol_errors", "keepalive_timeouts", "connect_timeouts", "takeovers",
        "wills_published", "store_errors", "connections_refused", "messages_expired",
        "bytes_received", "bytes_sent", "ownership_refusals", "rate_pauses", "rate_disconnects", "deliveries",
        "connection_rate_refusals", "limit_hits",
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
        #: Connections refused by a listener's per-address rate (maxConnectionRate);
        #: they are counted in connections_refused too.
        self.connection_rate_refusals = 0
        #: What each limit refused, by kind (LIMIT_KINDS): only refusals count, so
        #: the hot path never touches it.
        self.limit_hits = dict.fromkeys(LIMIT_KINDS, 0)
        #: Messages routed to a session, sent or queued: the work publishes make.
        self.deliveries = 0

    def client_connected(self) -> None:
        self.clients_connected += 1
        self.clients_total += 1
        if self.clients_connected > self.clients_maximum:
            self.clients_maximum = self.clients_connected

    def client_disconnected(self) -> None:
        self.clients_connected -= 1

    def connection_refused(self, why: str = "listener_full") -> None:
        """An adapter refused a connection: ``why`` is "listener_full" or
        "connection_rate"."""
        self.connections_refused += 1
        if why == "connection_rate":
            self.connection_rate_refusals += 1
        else:
            self.limit_hits["listener_full"] += 1

    def limit_hit(self, kind: str) -> None:
        """One refusal by the limit ``kind`` (one of LIMIT_KINDS)."""
        self.limit_hits[kind] += 1

    def as_dict(self) -> dict[str, float]:
        """Every counter by name; the limit hits as ``limit_hits.KIND``."""
        out: dict[str, float] = {name: getattr(self, name) for name in self.__slots__
                                 if name != "limit_hits"}
        out.update({f"limit_hits.{kind}": n for kind, n in self.limit_hits.items()})
        return out
