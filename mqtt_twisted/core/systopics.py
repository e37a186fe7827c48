"""``$SYS/broker/...`` topics, with Mosquitto's names where they exist.

Published retained, and only when a value changed; filters starting with a
wildcard never match them [MQTT-4.7.2-1].  The service calls :meth:`tick`
periodically; everything else here is arithmetic on the broker's counters.
"""

from __future__ import annotations

import math
from typing import Any

from mqtt_twisted import __version__
from mqtt_twisted.core._async import when
from mqtt_twisted.core.broker import Broker
from mqtt_twisted.core.stats import BrokerStats
from mqtt_twisted.message import Message

PREFIX = "$SYS/broker/"
_WINDOWS = ((1, "1min"), (5, "5min"), (15, "15min"))


def resident_memory() -> int | None:
    """The process's resident set size in bytes (Linux), or None."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def limit_values(stats: BrokerStats) -> dict[str, str]:
    """``limits/...``: what each limit refused (docs/limits.md), from the counters
    metrics read too."""
    values = {f"limits/{kind}": str(n) for kind, n in stats.limit_hits.items()}
    values["limits/client_rate/paused"] = str(stats.rate_pauses)
    values["limits/client_rate/disconnected"] = str(stats.rate_disconnects)
    values["limits/connection_rate/refused"] = str(stats.connection_rate_refusals)
    return values


class SysTopics:
    """Computes and publishes the $SYS tree for one broker."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._last: dict[str, str] = {}
        self._last_tick: float | None = None
        self._last_counts: dict[str, int] = {}
        self._loads: dict[str, float] = {}

    def values(self, now: float) -> dict[str, str]:
        """Every $SYS topic (without the prefix) and its current value."""
        broker = self.broker
        stats = broker.stats
        offline = sum(1 for s in broker.sessions.values() if s.connection is None)
        values = {
            "version": f"mqtt-twisted version {__version__}",
            "uptime": f"{int(now - stats.started_at)} seconds",
            "clients/connected": str(stats.clients_connected),
            "clients/active": str(stats.clients_connected),
            "clients/disconnected": str(offline),
            "clients/inactive": str(offline),
            "clients/total": str(stats.clients_connected + offline),
            "clients/maximum": str(stats.clients_maximum),
            "messages/received": str(stats.messages_received),
            "messages/sent": str(stats.messages_sent),
            "messages/dropped": str(stats.messages_dropped),
            "publish/messages/dropped": str(stats.messages_dropped),
            "bytes/received": str(stats.bytes_received),
            "bytes/sent": str(stats.bytes_sent),
            "subscriptions/count": str(broker.router.count()),
        }
        values.update(limit_values(stats))
        extra = getattr(broker.router, "sys_values", None)  # a cluster router's own
        if extra is not None:
            values.update(extra())
        rss = resident_memory()
        if rss is not None:
            values["heap/current"] = str(rss)
        values.update(self._load_averages(now))
        return values

    def _load_averages(self, now: float) -> dict[str, str]:
        """Exponentially damped per-minute rates, as Mosquitto's load/* topics."""
        stats = self.broker.stats
        counts = {
            "messages/received": stats.messages_received,
            "messages/sent": stats.messages_sent,
            "bytes/received": stats.bytes_received,
            "bytes/sent": stats.bytes_sent,
            "connections": stats.clients_total,
        }
        out: dict[str, str] = {}
        previous = self._last_tick
        for name, count in counts.items():
            delta = count - self._last_counts.get(name, count)
            for minutes, label in _WINDOWS:
                key = f"load/{name}/{label}"
                load = self._loads.get(key, 0.0)
                if previous is not None and now > previous:
                    interval = now - previous
                    decay = math.exp(-interval / (60.0 * minutes))
                    rate = delta * 60.0 / interval
                    load = load * decay + rate * (1.0 - decay)
                self._loads[key] = load
                out[key] = f"{load:.2f}"
            self._last_counts[name] = count
        self._last_tick = now
        return out

    def tick(self) -> int:
        """Publish the values that changed since the last tick; return how many."""
        broker = self.broker
        now = broker.clock.seconds()
        values = self.values(now)
        when(broker.store.countRetained(),
             lambda n: self._publish({"retained messages/count": str(n)}, now),
             lambda f: None)
        return self._publish(values, now)

    def _publish(self, values: dict[str, Any], now: float) -> int:
        changed = 0
        for name, value in values.items():
            if self._last.get(name) == value:
                continue
            self._last[name] = value
            self.broker.route(Message(PREFIX + name, value.encode(), 0, True, None, None, now))
            self.broker.stats.messages_received -= 1  # our own, not a client's
            changed += 1
        return changed
