"""Message and byte rates per client: token buckets, charged once per read.

A client may send ``max_client_rate`` PUBLISHes and ``max_client_bytes_rate`` bytes a
second, with a burst of one second's worth (docs/limits.md).  The buckets are
charged after each read is handled (not per message: the hot path stays as it was),
so they may go into debt; a client in debt is paused by not reading from it until
the debt is paid (``throttle``, the counter flow control also uses).  A v5 client
whose debt passes :data:`HARD_DEBT` seconds is told DISCONNECT 0x96 (Message rate
too high) and closed; a v3 client cannot be told why, so it is only paused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mqtt_twisted.constants import ReasonCode
from mqtt_twisted.core import clientlog
from mqtt_twisted.core.settings import BrokerSettings

if TYPE_CHECKING:
    from mqtt_twisted.core.connection import MQTTConnection

#: Seconds of debt past which a v5 client is disconnected (0x96).
HARD_DEBT = 10.0



class ClientRate:
    """The two buckets of one client (either rate 0: that bucket is off)."""

    __slots__ = ("message_rate", "byte_rate", "messages", "bytes", "stamp", "call")

    def __init__(self, message_rate: float, byte_rate: float, now: float) -> None:
        self.message_rate = message_rate
        self.byte_rate = byte_rate
        self.messages = message_rate  # a second's worth to start with
        self.bytes = byte_rate
        self.stamp = now
        self.call: Any = None  # the end of a pause

    @classmethod
    def of(cls, settings: BrokerSettings, now: float) -> ClientRate | None:
        """The buckets ``settings`` ask for, or None when both rates are off."""
        if not (settings.max_client_rate or settings.max_client_bytes_rate):
            return None
        return cls(settings.max_client_rate, settings.max_client_bytes_rate, now)

    def charge(self, messages: int, size: int, now: float) -> float:
        """Take ``messages`` and ``size`` bytes; the seconds of debt that leaves (0: none)."""
        elapsed = max(0.0, now - self.stamp)
        self.stamp = now
        debt = 0.0
        rate = self.message_rate
        if rate:
            self.messages = min(rate, self.messages + elapsed * rate) - messages
            if self.messages < 0:
                debt = -self.messages / rate
        rate = self.byte_rate
        if rate:
            self.bytes = min(rate, self.bytes + elapsed * rate) - size
            if self.bytes < 0:
                debt = max(debt, -self.bytes / rate)
        return debt

    def cancel(self) -> None:
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None


def charge(conn: MQTTConnection, messages: int, size: int) -> None:
    """After a read of ``conn``: pause it while it is over its rates, or disconnect a v5
    client far past them."""
    rate: ClientRate = conn._rate  # type: ignore[assignment]
    clock = conn.broker.clock
    debt = rate.charge(messages, size, clock.seconds())
    if debt <= 0:
        return
    if debt > HARD_DEBT and conn.version == 5 and conn.session is not None:
        clientlog.closing(conn, ReasonCode.MESSAGE_RATE_TOO_HIGH,
                          f"{debt:.0f} s over its rate limits")
        conn.broker.stats.rate_disconnects += 1
        rate.cancel()
        conn.close(ReasonCode.MESSAGE_RATE_TOO_HIGH)
        return
    if rate.call is not None:
        return  # already paused: the pause's end looks at the debt again
    conn.broker.stats.rate_pauses += 1
    conn.throttle()
    rate.call = clock.callLater(debt, _pause_over, conn)


def _pause_over(conn: MQTTConnection) -> None:
    rate: ClientRate = conn._rate  # type: ignore[assignment]
    rate.call = None
    debt = rate.charge(0, 0, conn.broker.clock.seconds())
    if debt > 0:  # the reads handled while paused (the rest of a read) added to it
        rate.call = conn.broker.clock.callLater(debt, _pause_over, conn)
        return
    conn.unthrottle()
