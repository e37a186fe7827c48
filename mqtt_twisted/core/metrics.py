"""The broker's metrics as plain data: families of samples, read from its counters.

Nothing here runs per message: the hot path only increments the integers of
:class:`~mqtt_twisted.core.stats.BrokerStats`, and :func:`broker_families` reads them
(and walks the connections and sessions once) when a scraper asks.  The families
carry Prometheus names, types and help; the exporter (``adapters/metrics.py``) turns
them into the text format with ``prometheus-client``, and the admin API reads them
too.  docs/metrics.md lists every metric.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mqtt_twisted import __version__
from mqtt_twisted.constants import ReasonCode
from mqtt_twisted.core.states import CONNECTED

if TYPE_CHECKING:
    from mqtt_twisted.core.broker import Broker

COUNTER, GAUGE, HISTOGRAM, INFO = "counter", "gauge", "histogram", "info"

#: The protocol label of an MQTT connection, by protocol level.
PROTOCOLS = {3: "mqtt3.1", 4: "mqtt3.1.1", 5: "mqtt5"}


@dataclass(slots=True)
class Family:
    """One metric: its name (counters without ``_total``: the exporter adds it), type,
    help, label names, and samples as ``(label values, value)``.  A histogram's single
    sample value is ``(cumulative buckets, count, sum)``."""

    name: str
    type: str
    help: str
    labels: tuple[str, ...] = ()
    samples: list[tuple[tuple[str, ...], Any]] = field(default_factory=list)

    def add(self, value: Any, *labels: str) -> Family:
        self.samples.append((labels, value))
        return self


def _one(name: str, kind: str, help_text: str, value: Any) -> Family:
    return Family(name, kind, help_text).add(value)


def reason_name(code: int) -> str:
    """``135`` -> ``not_authorized`` (the MQTT 5 reason code's name, for a label)."""
    try:
        return ReasonCode(code).name.lower()
    except ValueError:
        return f"code_{code}"


def connection_counts(broker: Broker) -> Counter[tuple[str, str]]:
    """Connected clients by ``(adapter, protocol)``: MQTT streams by their listener's
    adapter and protocol level, adapters' virtual sessions (HTTP, CoAP) by adapter."""
    counts: Counter[tuple[str, str]] = Counter()
    for conn in broker.connections:
        if conn.state == CONNECTED:
            adapter = getattr(conn.listener, "adapter", None) or "mqtt"
            counts[adapter, PROTOCOLS.get(conn.version, str(conn.version))] += 1
    for session in broker.sessions.values():
        conn = session.connection
        if conn is not None and getattr(conn, "virtual", False) and conn.state == CONNECTED:
            adapter = getattr(conn.listener, "adapter", None) or "virtual"
            counts[adapter, adapter] += 1
    return counts


def session_totals(broker: Broker) -> tuple[int, int, int, int]:
    """``(online, offline, queued, in flight)`` over every session."""
    online = offline = queued = inflight = 0
    for session in broker.sessions.values():
        if session.connection is None:
            offline += 1
        else:
            online += 1
        queued += len(session.queue)
        inflight += len(session.inflight)
    return online, offline, queued, inflight


def broker_families(broker: Broker, now: float) -> list[Family]:
    """Every metric the broker itself keeps (the gateway adds the store's retained count,
    the listeners' limits and the cluster's)."""
    s = broker.stats
    families = [
        Family("mqtt_build", INFO, "The broker's version.", ("version",)).add(1, __version__),
        _one("mqtt_start_time_seconds", GAUGE, "When the broker started (Unix time).",
             s.started_at),
        _one("mqtt_uptime_seconds", GAUGE, "Seconds since the broker started.",
             now - s.started_at),
    ]
    conns = Family("mqtt_connections", GAUGE, "Clients connected now, by adapter and protocol.",
                   ("adapter", "protocol"))
    for (adapter, protocol), n in sorted(connection_counts(broker).items()):
        conns.add(n, adapter, protocol)
    families.append(conns)
    online, offline, queued, inflight = session_totals(broker)
    families += [
        Family("mqtt_sessions", GAUGE, "Sessions held, with a client connected or not.",
               ("state",)).add(online, "online").add(offline, "offline"),
        _one("mqtt_connections_maximum", GAUGE, "Most clients connected at once since the "
             "start.", s.clients_maximum),
        _one("mqtt_connects", COUNTER, "Clients whose CONNECT (or adapter session) was "
             "accepted.", s.clients_total),
    ]
    refusals = Family("mqtt_connect_refusals", COUNTER, "CONNECTs refused, by MQTT 5 reason "
                      "code name.", ("reason",))
    for code, n in sorted(s.refusals.items()):
        refusals.add(n, reason_name(code))
    families += [
        refusals,
        _one("mqtt_connections_refused", COUNTER, "Connections a listener refused before "
             "CONNECT (connection limit or rate).", s.connections_refused),
        _one("mqtt_ownership_refusals", COUNTER, "Clients refused because the client id's "
             "session belongs to another user.", s.ownership_refusals),
        _one("mqtt_takeovers", COUNTER, "Connections taken over by a new one with the same "
             "client id.", s.takeovers),
        Family("mqtt_messages_received", COUNTER, "PUBLISHes routed, from clients and "
               "adapters (wills included), by QoS.", ("qos",))
        .add(s.messages_received - s.received_qos1 - s.received_qos2, "0")
        .add(s.received_qos1, "1").add(s.received_qos2, "2"),
        Family("mqtt_messages_sent", COUNTER, "PUBLISHes sent to clients (resends included), "
               "by QoS.", ("qos",))
        .add(s.messages_sent - s.sent_qos1 - s.sent_qos2, "0")
        .add(s.sent_qos1, "1").add(s.sent_qos2, "2"),
        _one("mqtt_received_bytes", COUNTER, "Bytes read from MQTT connections.",
             s.bytes_received),
        _one("mqtt_sent_bytes", COUNTER, "Bytes of PUBLISH packets written to MQTT "
             "connections.", s.bytes_sent),
        Family("mqtt_messages_dropped", COUNTER, "Messages not delivered, by reason.",
               ("reason",))
        .add(s.messages_dropped, "queue_full").add(s.dropped_too_large, "too_large")
        .add(s.messages_expired, "expired")
        .add(s.limit_hits["retained"], "retained_quota"),
        _one("mqtt_wills_published", COUNTER, "Will messages published.", s.wills_published),
        Family("mqtt_client_errors", COUNTER, "Connections closed for what their client did, "
               "by kind.", ("kind",))
        .add(s.protocol_errors, "protocol_error").add(s.keepalive_timeouts, "keepalive_timeout")
        .add(s.connect_timeouts, "connect_timeout"),
        Family("mqtt_limit_refusals", COUNTER, "What each limit refused (docs/limits.md), "
               "by kind; connection_rate: sockets over a listener's maxConnectionRate.",
               ("kind",))
        .add(s.limit_hits["packet_size"], "packet_size").add(s.limit_hits["topic"], "topic")
        .add(s.limit_hits["subscriptions"], "subscriptions")
        .add(s.limit_hits["retained"], "retained").add(s.limit_hits["sessions"], "sessions")
        .add(s.limit_hits["listener_full"], "listener_full")
        .add(s.limit_hits["offline_queue"], "offline_queue")
        .add(s.limit_hits["queue_full"], "queue_full")
        .add(s.connection_rate_refusals, "connection_rate"),
        Family("mqtt_datagrams_dropped", COUNTER, "Datagrams a UDP listener dropped, by "
               "reason: too_long (longer than it reads; a CoAP request gets 4.13), unsent "
               "(an answer the kernel would not send).", ("reason",))
        .add(s.datagrams_dropped["too_long"], "too_long")
        .add(s.datagrams_dropped["unsent"], "unsent"),
        Family("mqtt_client_rate_limited", COUNTER, "Clients over their message or byte rate "
               "(--max-client-rate): paused, or (MQTT 5) disconnected.", ("action",))
        .add(s.rate_pauses, "pause").add(s.rate_disconnects, "disconnect"),
        _one("mqtt_queued_messages", GAUGE, "Messages waiting in session queues (behind the "
             "in-flight window, or for an offline client).", queued),
        _one("mqtt_inflight_messages", GAUGE, "QoS 1/2 messages sent and not yet "
             "acknowledged.", inflight),
        _one("mqtt_subscriptions", GAUGE, "Subscriptions held (shared members included).",
             int(broker.router.count())),
        _one("mqtt_store_errors", COUNTER, "Store calls that failed.", s.store_errors),
        _one("mqtt_store_writes", COUNTER, "Store writes that waited for the store (a "
             "network store); one in 16 is timed.", s.store_writes),
    ]
    latency = s.store_latency
    families.append(_one("mqtt_store_latency_seconds", HISTOGRAM, "Round trips of sampled "
                         "store writes.", (latency.cumulative(), latency.count, latency.total)))
    return families
