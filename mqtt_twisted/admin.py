"""What an operator may ask of a running broker: metrics, clients, subscriptions,
retained messages, and kicking a client (``IBrokerAdmin``).

The gateway holds one (``Gateway.admin``): the metrics listener, the HTTP adapter's
``/metrics``, its admin API and the dashboard reach the broker through it, never
through the broker's internals.  Reading goes through ``core/inspection.py`` and
``core/metrics.py``; answers that may wait for the store are Deferreds.  Who may ask
is the adapter's question (the gateway's ``isAdmin``).
"""

from __future__ import annotations

import base64
import binascii
from collections import deque
from typing import TYPE_CHECKING, Any
from weakref import WeakSet

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from zope.interface import implementer

from mqtt_twisted import __version__
from mqtt_twisted.core import inspection
from mqtt_twisted.core.metrics import (
    COUNTER,
    GAUGE,
    PROTOCOLS,
    Family,
    broker_families,
    connection_counts,
    session_totals,
)
from mqtt_twisted.errors import StorageError
from mqtt_twisted.interfaces import IBrokerAdmin
from mqtt_twisted.message import Message

if TYPE_CHECKING:
    from mqtt_twisted.core.broker import Broker

#: Points of rate history kept (one a second: ten minutes).
HISTORY = 600
#: Seconds a stats answer (a walk over every session) is reused.
STATS_FRESH = 0.5
#: Counters of BrokerStats the admin API shows as they are.
COUNTERS = ("messages_received", "messages_sent", "bytes_received", "bytes_sent",
            "messages_dropped", "dropped_too_large", "messages_expired", "clients_total",
            "clients_maximum", "connections_refused", "ownership_refusals", "takeovers",
            "wills_published", "protocol_errors", "keepalive_timeouts", "connect_timeouts",
            "store_errors", "rate_pauses", "rate_disconnects")


def encode_cursor(*parts: str) -> str:
    """An opaque paging cursor (the next page starts after these keys)."""
    return base64.urlsafe_b64encode("\0".join(parts).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, parts: int) -> tuple[str, ...]:
    """A cursor's keys; ValueError for one this API did not give out."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError(f"not a cursor this API gave: {cursor!r}") from None
    keys = tuple(raw.split("\0"))
    if len(keys) != parts:
        raise ValueError(f"not a cursor this API gave: {cursor!r}")
    return keys


def backend_store(store: Any) -> Any:
    """The store behind the $SYS overlay (``store/overlay.py``)."""
    return getattr(store, "store", store)


@implementer(IBrokerAdmin)
class BrokerAdmin:
    """One per gateway."""

    def __init__(self, broker: Broker, gateway: Any = None) -> None:
        self.broker = broker
        self.gateway = gateway
        #: Every listener's connection limit (``adapters/kit.py`` registers them).
        self.listener_limits: WeakSet[Any] = WeakSet()
        #: The last minutes, a point a second (:meth:`sample`, called by the service).
        self.history: deque[dict[str, float]] = deque(maxlen=HISTORY)
        self._last: tuple[float, int, int, int, int] | None = None
        self._stats: tuple[float, dict[str, Any]] | None = None

    # --- metrics -----------------------------------------------------------------------

    def metrics(self) -> Deferred[list[Family]]:
        """Every metric family, read now; fires once the store has counted its retained
        messages (a store that cannot answer leaves that family out)."""
        broker = self.broker
        families = broker_families(broker, broker.clock.seconds())
        families += self._store_families()
        families += self._listener_families()
        families += self._cluster_families()

        def counted(n: int) -> list[Family]:
            families.append(Family("mqtt_retained_messages", GAUGE,
                                   "Retained messages held ($SYS ones included).").add(n))
            return families

        d = maybeDeferred(broker.store.countRetained)
        return d.addCallbacks(counted, lambda _: families)

    def _store_families(self) -> list[Family]:
        outage = getattr(backend_store(self.broker.store), "outage", None)
        if outage is None:  # an in-process store: never unreachable
            return [Family("mqtt_store_up", GAUGE, "1 while the store is reachable.").add(1)]
        return [
            Family("mqtt_store_up", GAUGE, "1 while the store is reachable.")
            .add(0 if outage.active else 1),
            Family("mqtt_store_outages", COUNTER, "Times the store became unreachable.")
            .add(outage.outages),
            Family("mqtt_store_outage_seconds", COUNTER, "Seconds of store outages that "
                   "ended.").add(outage.outage_seconds),
        ]

    def _listener_families(self) -> list[Family]:
        held = Family("mqtt_listener_connections", GAUGE, "Connections a listener holds "
                      "(before and after CONNECT).", ("listener",))
        refused = Family("mqtt_listener_refused", COUNTER, "Connections a listener refused, "
                         "by the limit hit.", ("listener", "limit"))
        for limit in sorted(self.listener_limits, key=lambda li: _listener_label(li.listener)):
            name = _listener_label(limit.listener)
            held.add(limit.active, name)
            refused.add(limit.refused - limit.rate_refused, name, "max_connections")
            refused.add(limit.rate_refused, name, "connection_rate")
        return [held, refused]

    def _cluster_families(self) -> list[Family]:
        router = self.broker.router
        routes = getattr(router, "routes", None)  # a ClusterRouter (cluster/router.py)
        if routes is None:
            return []
        return [
            Family("mqtt_cluster_peers", GAUGE, "Peer nodes with subscriptions this node "
                   "routes to.").add(len(routes.by_node)),
            Family("mqtt_cluster_routes", GAUGE, "Peer nodes' filters known.")
            .add(len(routes)),
            Family("mqtt_cluster_messages_forwarded", COUNTER, "Copies sent to peer nodes "
                   "(one per destination node).").add(router.forwarded),
            Family("mqtt_cluster_messages_received", COUNTER, "Messages received from peer "
                   "nodes.").add(router.received),
        ]


    # --- clients -----------------------------------------------------------------------

    def clients(self, search: str | None = None, limit: int = 100,
                after: str | None = None) -> dict[str, Any]:
        """A page of sessions by client id: those whose client id, peer or user contains
        ``search`` (any case), after the client id ``after``."""
        broker = self.broker
        needle = (search or "").lower()
        found = []
        for client_id in sorted(broker.sessions):
            if after is not None and client_id <= after:
                continue
            summary = self._summary(client_id)
            if summary is None:
                continue
            if needle and not any(needle in str(summary.get(k) or "").lower()
                                  for k in ("client_id", "peer", "user")):
                continue
            found.append(summary)
            if len(found) > limit:
                break
        answer: dict[str, Any] = {"clients": found[:limit]}
        if len(found) > limit:
            answer["next"] = found[limit - 1]["client_id"]
        return answer

    def _summary(self, client_id: str) -> dict[str, Any] | None:
        info = inspection.session_info(self.broker, client_id)
        if info is None:
            return None
        conn = inspection.connection_info(self.broker, client_id)
        session = self.broker.sessions.get(client_id)
        return {
            "client_id": client_id,
            "online": info.online,
            "persistent": info.persistent,
            "adapter": conn.adapter if conn is not None else None,
            "protocol": (None if conn is None else conn.adapter if conn.virtual
                         else PROTOCOLS.get(conn.version, str(conn.version))),
            "peer": conn.peer if conn is not None else None,
            "user": getattr(session, "owner", None),
            "subscriptions": len(info.subscriptions),
            "queued": info.queued,
            "inflight": info.inflight,
        }

    def client(self, client_id: str) -> dict[str, Any] | None:
        """One session in full: its summary, subscriptions, will, expiry; None if none."""
        summary = self._summary(client_id)
        info = inspection.session_info(self.broker, client_id)
        if summary is None or info is None:
            return None
        conn = inspection.connection_info(self.broker, client_id)
        summary.update(
            subscriptions=[{"topic": f, "qos": o.qos, "no_local": o.no_local,
                            "retain_as_published": o.retain_as_published,
                            "retain_handling": o.retain_handling}
                           for f, o in sorted(info.subscriptions.items())],
            subscription_count=len(info.subscriptions),
            inflight_ids=list(info.inflight_ids),
            dropped=info.dropped,
            expiry_interval=info.expiry_interval,
            disconnected_at=info.disconnected_at,
            will_topic=info.will_topic,
            keep_alive=conn.keep_alive if conn is not None else None,
            paused=conn.paused if conn is not None else False,
        )
        return summary

    def kick(self, client_id: str, remove: bool = False) -> bool:
        """Disconnect ``client_id`` (MQTT 5: DISCONNECT 0x98); ``remove`` also deletes its
        session.  False when it has none."""
        return bool(self.gateway.closeSession(client_id, remove=remove))

    # --- subscriptions and retained messages ----------------------------------------------

    def subscriptions(self, prefix: str | None = None, limit: int = 100,
                      after: str | None = None) -> dict[str, Any]:
        """A page of every session's subscriptions, by filter then client id; only the
        filters starting with ``prefix`` if given.  ``after``: the last page's cursor."""
        start = decode_cursor(after, 2) if after else None
        rows = []
        for client_id, session in self.broker.sessions.items():
            for topic, options in session.subscriptions.items():
                if prefix and not topic.startswith(prefix):
                    continue
                if start is not None and (topic, client_id) <= start:
                    continue
                rows.append((topic, client_id, options.qos))
        rows.sort()
        answer: dict[str, Any] = {"subscriptions": [
            {"topic": t, "client_id": c, "qos": q} for t, c, q in rows[:limit]]}
        if len(rows) > limit:
            answer["next"] = encode_cursor(*rows[limit - 1][:2])
        return answer

    def retained(self, topic_filter: str = "#", limit: int = 100,
                 after: str | None = None) -> Deferred[dict[str, Any]]:
        """A page of retained topics matching ``topic_filter``, by topic, after ``after``."""
        def page(messages: list[Message]) -> dict[str, Any]:
            chosen = sorted((m for m in messages if after is None or m.topic > after),
                            key=lambda m: m.topic)
            answer: dict[str, Any] = {"topics": [
                {"topic": m.topic, "qos": m.qos, "bytes": len(m.payload)}
                for m in chosen[:limit]]}
            if len(chosen) > limit:
                answer["next"] = chosen[limit - 1].topic
            return answer

        return self.gateway.retained(topic_filter).addCallback(page)

    def deleteRetained(self, topic: str) -> Deferred[bool]:
        """Delete ``topic``'s retained message as an empty retained PUBLISH would (the
        retained quota follows); fires with False when there was none, once stored."""
        broker = self.broker

        def delete(found: Any) -> Any:
            if found is None:
                return False
            empty = Message(topic, b"", 0, True, None, None, broker.clock.seconds())
            _, writes = broker.writes_of(broker.retain, empty)
            if not writes:
                return True
            return DeferredList(writes, consumeErrors=True).addCallback(stored)

        def stored(results: list[tuple[bool, Any]]) -> bool:
            failed = [r for ok, r in results if not ok]
            if failed:
                raise StorageError(f"the store did not delete it: "
                                   f"{failed[0].getErrorMessage()}")
            return True

        return maybeDeferred(broker.store.getRetained, topic).addCallback(delete)

    # --- the broker's figures -------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters, gauges, the busiest topics and the last minutes' rates.  The walk over
        the sessions is made at most once per STATS_FRESH seconds, however many
        dashboards ask."""
        broker = self.broker
        now = broker.clock.seconds()
        cached = self._stats
        if cached is None or not 0 <= now - cached[0] < STATS_FRESH:
            cached = self._stats = (now, self._read_stats(now))
        answer = dict(cached[1])
        answer["history"] = list(self.history)
        return answer

    def _read_stats(self, now: float) -> dict[str, Any]:
        broker = self.broker
        stats = broker.stats
        online, offline, queued, inflight = session_totals(broker)
        by_adapter: dict[str, int] = {}
        for (adapter, _), n in connection_counts(broker).items():
            by_adapter[adapter] = by_adapter.get(adapter, 0) + n
        return {
            "version": __version__,
            "time": now,
            "uptime_seconds": now - stats.started_at,
            "connections": sum(by_adapter.values()),
            "connections_by_adapter": by_adapter,
            "sessions": {"online": online, "offline": offline},
            "subscriptions": int(broker.router.count()),
            "queued": queued,
            "inflight": inflight,
            "counters": {name: getattr(stats, name) for name in COUNTERS},
            "top_topics": [{"topic": t, "messages": n} for t, n in stats.topics.top(10)],
        }

    def sample(self) -> dict[str, float] | None:
        """Add a point to :attr:`history`: messages in and out a second since the last
        sample, and connections now.  The first call only starts the count.  Runs every
        second whether anyone looks or not, so it only reads counters (no walk)."""
        broker = self.broker
        stats = broker.stats
        now = broker.clock.seconds()
        counts = (now, stats.messages_received, stats.messages_sent, stats.bytes_received,
                  stats.bytes_sent)
        last, self._last = self._last, counts
        if last is None or now <= last[0]:
            return None
        interval = now - last[0]
        point = {"time": now,
                 "in": round((counts[1] - last[1]) / interval, 2),
                 "out": round((counts[2] - last[2]) / interval, 2),
                 "bytes_in": round((counts[3] - last[3]) / interval, 2),
                 "bytes_out": round((counts[4] - last[4]) / interval, 2),
                 "connections": stats.clients_connected}
        self.history.append(point)
        return point


def _listener_label(listener: Any) -> str:
    """``adapter=endpoint``, without the listener's keys (TLS file names and the like)."""
    return f"{getattr(listener, 'adapter', '?')}={getattr(listener, 'endpoint', listener)}"
