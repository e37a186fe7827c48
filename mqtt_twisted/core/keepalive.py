"""The keep alive check, run by the deadline wheel (``core/deadlines.py``) for a
connected client: lazy, it re-arms while packets come instead of a timer per packet."""

from __future__ import annotations

from typing import Any

from mqtt_twisted.constants import ReasonCode
from mqtt_twisted.core import clientlog


def check_keepalive(conn: Any) -> None:
    """Closed after 1.5 x keep alive without a packet [MQTT-3.1.2-24]; otherwise the
    check comes again when that much time has passed since the last one."""
    broker = conn.broker
    if broker.deadlines.arm(conn, conn.last_rx + conn.keep_alive * 1.5):
        return
    idle = broker.clock.seconds() - conn.last_rx
    clientlog.closing(conn, ReasonCode.KEEP_ALIVE_TIMEOUT, f"nothing received for {idle:.1f} s")
    broker.stats.keepalive_timeouts += 1
    conn.close(ReasonCode.KEEP_ALIVE_TIMEOUT)
