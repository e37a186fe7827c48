"""UDP reliability (RFC 7252 §4): retransmitting our confirmable messages, and
recognising the peers' duplicates.

Sans-IO: time is the injected clock (``IReactorTime``: ``seconds`` and ``callLater``),
sending is a callable.  :class:`Retransmitter` resends a CON with exponential back-off
until its ACK or RST arrives, and gives up after ``MAX_RETRANSMIT`` resends;
:class:`Deduplicator` remembers each request's response for ``EXCHANGE_LIFETIME`` so
that a duplicate CON gets the same answer again instead of a second publish.
"""

from __future__ import annotations

import os
import random
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

ACK_TIMEOUT = 2.0
ACK_RANDOM_FACTOR = 1.5
MAX_RETRANSMIT = 4
NSTART = 1
MAX_LATENCY = 100.0
PROCESSING_DELAY = ACK_TIMEOUT
MAX_TRANSMIT_SPAN = ACK_TIMEOUT * (2 ** MAX_RETRANSMIT - 1) * ACK_RANDOM_FACTOR  # 45 s
MAX_TRANSMIT_WAIT = ACK_TIMEOUT * (2 ** (MAX_RETRANSMIT + 1) - 1) * ACK_RANDOM_FACTOR  # 93 s
EXCHANGE_LIFETIME = MAX_TRANSMIT_SPAN + 2 * MAX_LATENCY + PROCESSING_DELAY  # 247 s
NON_LIFETIME = MAX_TRANSMIT_SPAN + MAX_LATENCY  # 145 s

Peer = Any  # an address as the transport gives it ((host, port) for UDP)


class MessageIds:
    """Message ids for one endpoint's outgoing messages: from a random start, in turn."""

    __slots__ = ("next",)

    def __init__(self, start: int | None = None) -> None:
        self.next = int.from_bytes(os.urandom(2), "big") if start is None else start

    def __call__(self) -> int:
        mid = self.next
        self.next = (mid + 1) & 0xFFFF
        return mid


class _Pending:
    __slots__ = ("data", "peer", "timeout", "tries", "call", "on_fail", "on_ack")

    def __init__(self, data: bytes, peer: Peer, timeout: float,
                 on_ack: Callable[[], Any] | None, on_fail: Callable[[], Any] | None) -> None:
        self.data = data
        self.peer = peer
        self.timeout = timeout
        self.tries = 0
        self.call: Any = None
        self.on_ack = on_ack
        self.on_fail = on_fail


class Retransmitter:
    """Our CON messages awaiting their ACK, resent at 2-3 s, then twice as long each time
    (ACK_TIMEOUT times a random factor up to ACK_RANDOM_FACTOR), MAX_RETRANSMIT times."""

    def __init__(self, clock: Any, send: Callable[[bytes, Peer], Any],
                 rand: Callable[[], float] = random.random,
                 ack_timeout: float = ACK_TIMEOUT, max_retransmit: int = MAX_RETRANSMIT) -> None:
        self.clock = clock
        self.send = send
        self.rand = rand
        self.ack_timeout = ack_timeout
        self.max_retransmit = max_retransmit
        self.pending: dict[tuple[Peer, int], _Pending] = {}

    def __len__(self) -> int:
        return len(self.pending)

    def send_con(self, peer: Peer, mid: int, data: bytes,
                 on_ack: Callable[[], Any] | None = None,
                 on_fail: Callable[[], Any] | None = None) -> None:
        """Send ``data`` (a CON with message id ``mid``) now and again until acknowledged;
        ``on_fail`` runs when the last resend went unanswered, ``on_ack`` on its ACK."""
        self.cancel(peer, mid)
        timeout = self.ack_timeout * (1 + self.rand() * (ACK_RANDOM_FACTOR - 1))
        entry = self.pending[(peer, mid)] = _Pending(data, peer, timeout, on_ack, on_fail)
        self.send(data, peer)
        entry.call = self.clock.callLater(timeout, self._expired, (peer, mid))

    def _expired(self, key: tuple[Peer, int]) -> None:
        entry = self.pending.get(key)
        if entry is None:
            return
        if entry.tries >= self.max_retransmit:
            del self.pending[key]
            if entry.on_fail is not None:
                entry.on_fail()
            return
        entry.tries += 1
        entry.timeout *= 2
        self.send(entry.data, entry.peer)
        entry.call = self.clock.callLater(entry.timeout, self._expired, key)

    def acknowledged(self, peer: Peer, mid: int) -> bool:
        """The ACK for ``mid`` arrived: stop resending (False if it was not ours)."""
        entry = self._stop(peer, mid)
        if entry is None:
            return False
        if entry.on_ack is not None:
            entry.on_ack()
        return True

    def cancel(self, peer: Peer, mid: int) -> bool:
        """Stop resending ``mid`` (an RST came, or the message is moot)."""
        return self._stop(peer, mid) is not None

    def _stop(self, peer: Peer, mid: int) -> _Pending | None:
        entry = self.pending.pop((peer, mid), None)
        if entry is not None and entry.call is not None and entry.call.active():
            entry.call.cancel()
        return entry

    def stop(self) -> None:
        """Forget everything (the listener stops)."""
        for key in list(self.pending):
            self._stop(*key)


#: The response to a request still being processed.
IN_PROGRESS = b""


class Deduplicator:
    """The responses sent to recent requests, by (peer, message id), kept for
    ``lifetime`` seconds and at most ``limit`` of them (the oldest go first).

    A plain dict and a deque of its keys in the order they came, rather than an
    OrderedDict: under a flood every request adds one and evicts one, and the
    OrderedDict's ``popitem(last=False)`` cost twice the pair (docs/benchmarks.md,
    "CoAP next to MQTT", session 17)."""

    def __init__(self, clock: Any, lifetime: float = EXCHANGE_LIFETIME,
                 limit: int = 10000) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.limit = limit
        self.seen: dict[tuple[Peer, int], tuple[float, bytes]] = {}
        #: The keys of ``seen``, oldest first.
        self.order: deque[tuple[Peer, int]] = deque()
        #: Nothing is older than the lifetime before this time (the oldest entry's).
        self.purge_at = 0.0

    def __len__(self) -> int:
        return len(self.seen)

    def check(self, peer: Peer, mid: int) -> bytes | None:
        """None for a new request (now remembered as in progress); else the response
        sent to it before (:data:`IN_PROGRESS`, empty, while it is being processed)."""
        key = (peer, mid)
        now, found = self.look(key)
        if found is not None:
            return found[1]
        self.remember(key, now, IN_PROGRESS)
        return None

    def look(self, key: tuple[Peer, int]) -> tuple[float, tuple[float, bytes] | None]:
        """The time now, and what is remembered of request ``key`` (peer, message id):
        ``(first seen, response)``, or None; what is past its lifetime is forgotten
        first.  A caller that finds None records the request with :meth:`remember`."""
        now = self.clock.seconds()
        if now >= self.purge_at:
            self.purge(now)
        return now, self.seen.get(key)

    def remember(self, key: tuple[Peer, int], now: float, response: bytes) -> None:
        """Remember the response to the request ``key`` (peer, message id), first seen
        at ``now`` (:data:`IN_PROGRESS` while it is processed), or the response to one
        remembered already."""
        seen = self.seen
        found = seen.get(key)
        if found is not None:
            seen[key] = (found[0], response)
            return
        seen[key] = (now, response)
        order = self.order
        order.append(key)
        if len(seen) > self.limit:
            del seen[order.popleft()]

    def answered(self, peer: Peer, mid: int, response: bytes) -> None:
        """Remember the response to request ``mid`` (if it is still remembered)."""
        key = (peer, mid)
        found = self.seen.get(key)
        if found is not None:
            self.seen[key] = (found[0], response)

    def purge(self, now: float) -> None:
        """Forget what is older than the lifetime (call when ``now >= purge_at``:
        every request asks, and mostly there is nothing to do)."""
        seen, order, horizon = self.seen, self.order, now - self.lifetime
        while order:
            when = seen[order[0]][0]
            if when > horizon:
                self.purge_at = when + self.lifetime
                return
            del seen[order.popleft()]
        self.purge_at = now + self.lifetime


class RateLimiter:
    """Requests per second per sender: a token bucket of ``burst`` requests refilled at
    ``rate`` per second, for the ``limit`` senders seen most recently (a sender forgotten
    starts again with a full bucket).  ``rate`` 0 lets everything through."""

    def __init__(self, clock: Any, rate: float, burst: float | None = None,
                 limit: int = 10000) -> None:
        self.clock = clock
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self.limit = limit
        self.buckets: OrderedDict[Peer, tuple[float, float]] = OrderedDict()

    def allow(self, peer: Peer) -> bool:
        if not self.rate:
            return True
        now = self.clock.seconds()
        found = self.buckets.pop(peer, None)
        if found is None:
            tokens = self.burst
        else:
            tokens, when = found
            tokens = min(self.burst, tokens + (now - when) * self.rate)
        allowed = tokens >= 1.0
        self.buckets[peer] = (tokens - 1.0 if allowed else tokens, now)
        while len(self.buckets) > self.limit:
            self.buckets.popitem(last=False)
        return allowed
