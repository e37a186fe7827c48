"""``$SYS/broker/...`` topics, with Mosquitto's names where they exist.

Published retained, and only when a value changed; filters starting with a
wildcard never match them [MQTT-4.7.2-1].  The service calls :meth:`tick`
periodically; everything else here is arithmetic on the broker's counters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from mqtt_twisted import __version__
from mqtt_twisted.core._async import when
from mqtt_twisted.core.broker import Broker
from mqtt_twisted.core.pacing import SYS_SLICE, paced
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
        for source in broker.sys_sources:  # bridges' state (Gateway.addSysValues)
            values.update(source())
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
        """Retain the values that changed and deliver them, SYS_SLICE of work a reactor
        turn (pacing.py): a tick is tens of messages to every $SYS subscriber, and they
        may be thousands.  Delivered subscriber by subscriber, not message by message,
        so that each socket still gets one write a tick."""
        changed = []
        for name, value in values.items():
            if self._last.get(name) != value:
                self._last[name] = value
                changed.append(Message(PREFIX + name, value.encode(), 0, True, None, None,
                                       now))
        if changed:
            broker = self.broker
            paced(broker.clock, broker.stats, _SysRound(broker, changed).steps(),
                  _run_step, SYS_SLICE)
        return len(changed)


def _run_step(step: Callable[[], int | None]) -> int | None:
    return step()


class _SysRound:
    """One tick's publication: each message retained and matched (a step each, costing
    its subscribers), then delivered a band of subscribers at a time: the step for
    band k gives every message to the k-th band of its subscribers.  A $SYS/#
    subscriber sits at the same place in every message's list, so it gets the whole
    tick in one turn (one write), and nothing is built per subscriber."""

    __slots__ = ("broker", "messages", "matched", "local")

    def __init__(self, broker: Broker, messages: list[Message]) -> None:
        self.broker = broker
        self.messages = messages
        self.matched: list[tuple[Message, list[Any]]] = []
        self.local = getattr(broker.router, "local", broker.router)  # $SYS is per node

    def steps(self) -> Iterator[Callable[[], int | None]]:
        for message in self.messages:
            yield partial(self._match, message)
        widest = max((len(matches) for _, matches in self.matched), default=0)
        band = max(1, SYS_SLICE // (4 * len(self.messages)))  # a step: a quarter slice
        for start in range(0, widest, band):
            yield partial(self._deliver, start, start + band)

    def _match(self, message: Message) -> int:
        self.broker.retain(message)  # for new subscribers (kept in memory: store/overlay.py)
        local = self.local
        if local.shared_groups:  # ($share/g/$SYS/...: rare, one member each)
            local.dispatch_shared(message)
        matches = local.match(message.topic)
        if matches:
            self.matched.append((message, matches))
        return len(matches)

    def _deliver(self, start: int, end: int) -> None:
        sessions = self.broker.sessions
        deliver = self.broker.delivery.deliver
        for message, matches in self.matched:
            for client_id, _, rap, ids in matches[start:end]:
                session = sessions.get(client_id)
                if session is not None:  # (not gone since the tick)
                    deliver(session, message, 0, rap, ids)
