"""Counters the broker keeps for logs, $SYS topics and metrics.

Everything here is a plain integer (or a small list of them) that the hot path
increments; the Prometheus exporter (core/metrics.py, adapters/metrics.py) reads
them when it is scraped, so metrics cost nothing per message beyond the increment.
"""

from __future__ import annotations

from bisect import bisect_left

#: Upper bounds (seconds) of the store latency buckets; one more bucket holds the rest.
LATENCY_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                  2.5, 5.0, 10.0)
#: One store write in this many is timed (a power of two: a mask, not a division).
LATENCY_SAMPLE = 16


class LatencyHistogram:
    """Durations in fixed buckets, as integers: ``observe`` is a bisect and three
    increments; the exporter makes them cumulative (Prometheus ``le``) when scraped."""

    __slots__ = ("counts", "count", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BOUNDS) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BOUNDS, seconds)] += 1
        self.count += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations at or below it)``, the last bound +Inf."""
        out, running = [], 0
        for bound, n in zip((*LATENCY_BOUNDS, float("inf")), self.counts):
            running += n
            out.append((bound, running))
        return out


#: One routed message in this many has its topic noted for "top topics" (a mask).
TOPIC_SAMPLE = 16
#: Topics a TopicSample keeps at most; over it, the least seen half is forgotten.
TOPICS_KEPT = 1000


class TopicSample:
    """The topics of one message in TOPIC_SAMPLE, counted: the busiest topics without a
    dictionary update per message.  Counts are halved every ``decay`` notes, so the
    top reflects the last minutes rather than all time."""

    __slots__ = ("counts", "notes", "decay")

    def __init__(self, decay: int = 4096) -> None:
        self.counts: dict[str, int] = {}
        self.notes = 0
        self.decay = decay

    def note(self, topic: str) -> None:
        counts = self.counts
        counts[topic] = counts.get(topic, 0) + 1
        self.notes += 1
        if self.notes % self.decay == 0:
            self.counts = {t: n >> 1 for t, n in counts.items() if n > 1}
        elif len(counts) > TOPICS_KEPT:
            keep = sorted(counts.items(), key=lambda item: -item[1])[:TOPICS_KEPT // 2]
            self.counts = dict(keep)

    def top(self, n: int = 10) -> list[tuple[str, int]]:
        """The ``n`` busiest topics with their estimated message counts (not $SYS)."""
        ranked = sorted(((t, c) for t, c in self.counts.items() if not t.startswith("$SYS")),
                        key=lambda item: (-item[1], item[0]))
        return [(t, c * TOPIC_SAMPLE) for t, c in ranked[:n]]


#: What ``BrokerStats.limit_hits`` counts, one key per limit (docs/limits.md):
#: packets over the packet size or user property limits, topics and filters over
#: the level or length limits, SUBSCRIBEs over the subscriptions per session,
#: retained messages over their quota, new persistent sessions over max_sessions,
#: connections refused by a full listener, messages not queued for an offline session
#: because all offline queues together are full, clients disconnected because their
#: queue was full (``--queue-full disconnect``).
LIMIT_KINDS = ("packet_size", "topic", "subscriptions", "retained", "sessions",
               "listener_full", "offline_queue", "queue_full")


class BrokerStats:
    """Plain integer counters: incrementing one is the whole cost on the hot path."""

    __slots__ = (
        "started_at", "clients_connected", "clients_maximum", "clients_total",
        "messages_received", "messages_sent", "messages_dropped", "dropped_too_large",
        "protocol_errors", "keepalive_timeouts", "connect_timeouts", "takeovers",
        "wills_published", "store_errors", "connections_refused", "messages_expired",
        "bytes_received", "bytes_sent", "ownership_refusals", "rate_pauses", "rate_disconnects", "deliveries",
        "received_qos1", "received_qos2", "sent_qos1", "sent_qos2", "refusals", "store_writes",
        "store_latency", "topics",
        "connection_rate_refusals", "limit_hits", "datagrams_dropped",
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
        #: Datagrams a UDP listener dropped (adapters/udpbatch.py), by reason:
        #: ``too_long``, longer than it reads (a CoAP request got 4.13); ``unsent``, one
        #: the kernel would not send (a full buffer, an unreachable peer).
        self.datagrams_dropped = {"too_long": 0, "unsent": 0}
        #: Messages routed to a session, sent or queued: the work publishes make.
        self.deliveries = 0
        #: Of messages_received and messages_sent, those at QoS 1 and 2 (the rest: QoS 0,
        #: so the QoS 0 fast path has no increment of its own).
        self.received_qos1 = 0
        self.received_qos2 = 0
        self.sent_qos1 = 0
        self.sent_qos2 = 0
        #: CONNECTs refused (CONNACK failure, or an adapter's session refused), by the
        #: MQTT 5 reason code.
        self.refusals: dict[int, int] = {}
        #: Store writes that were not complete at once (a network store), and the round
        #: trips of one in LATENCY_SAMPLE of them.
        self.store_writes = 0
        self.store_latency = LatencyHistogram()
        self.topics = TopicSample()

    def client_connected(self) -> None:
        self.clients_connected += 1
        self.clients_total += 1
        if self.clients_connected > self.clients_maximum:
            self.clients_maximum = self.clients_connected

    def client_disconnected(self) -> None:
        self.clients_connected -= 1

    def refused(self, reason_code: int) -> None:
        """Count a refused CONNECT (not on the hot path)."""
        self.refusals[reason_code] = self.refusals.get(reason_code, 0) + 1

    def connection_refused(self, why: str = "listener_full") -> None:
        """An adapter refused a connection: ``why`` is "listener_full" or
        "connection_rate"."""
        self.connections_refused += 1
        if why == "connection_rate":
            self.connection_rate_refusals += 1
        else:
            self.limit_hits["listener_full"] += 1

    def wrote(self, messages: int, size: int) -> None:
        """``messages`` PUBLISHes went out in one write of ``size`` bytes (a slice of
        retained messages: core/retained.py)."""
        self.messages_sent += messages
        self.bytes_sent += size

    def limit_hit(self, kind: str) -> None:
        """One refusal by the limit ``kind`` (one of LIMIT_KINDS)."""
        self.limit_hits[kind] += 1

    def as_dict(self) -> dict[str, float]:
        """Every counter by name; the limit hits as ``limit_hits.KIND``."""
        out: dict[str, float] = {name: value for name in self.__slots__
                                 if isinstance(value := getattr(self, name), int | float)}
        out.update({f"limit_hits.{kind}": n for kind, n in self.limit_hits.items()})
        return out
