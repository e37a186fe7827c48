"""One bound on what the queues of all offline sessions hold together.

Each session's queue is bounded (``max_queued``, ``max_queued_bytes``), but sessions
outlive their clients (up to ``max_sessions`` of them, for ``max_session_expiry``):
100,000 sessions left behind with a ``#`` subscription could each queue 16 MiB.  The
total held for clients that are away is bounded here, broker-wide: past
``max_offline_queued_bytes`` a new message for an offline session is dropped, as
Mosquitto drops a new message past ``max_queued_messages`` (the oldest ones were
promised first), and counted in ``limit_hits["offline_queue"]``.

Each session remembers its own part of the total (``Session.offline_charge``), set
when its client leaves and given back, whole, when the client returns or the session
ends, so the total cannot drift whatever happens to the queue meanwhile.  Connected
sessions are not counted: their queues are bounded by the connections themselves
(``--max-connections``) and drain as their clients read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.logger import Logger

if TYPE_CHECKING:
    from mqtt_twisted.core.session import Session
    from mqtt_twisted.core.settings import BrokerSettings
    from mqtt_twisted.core.stats import BrokerStats
    from mqtt_twisted.records import Outbound

#: What one queued copy costs beyond its payload and topic, which the message shares
#: with every other copy: the ``Outbound`` (8 slots, ~100 bytes measured with
#: ``sys.getsizeof``) and its place in the deque.  Counted so that many small
#: messages cannot hold far more than the bound says.
OFFLINE_COPY_COST = 128


def copy_cost(out: Outbound) -> int:
    """What one queued copy is counted at in the offline total."""
    message = out.message
    return len(message.payload) + len(message.topic) + OFFLINE_COPY_COST


class OfflineQueues:
    """The broker-wide total of offline sessions' queues, and its bound."""

    log = Logger(namespace="mqtt_twisted.core.broker.Broker")

    __slots__ = ("settings", "stats", "total", "refused")

    def __init__(self, settings: BrokerSettings, stats: BrokerStats) -> None:
        self.settings = settings
        self.stats = stats
        #: Bytes counted for every offline session's queue (``copy_cost`` each).
        self.total = 0
        #: Messages refused so far (the log says so at the 1st, 2nd, 4th, 8th...).
        self.refused = 0

    def away(self, session: Session) -> None:
        """Its client left and the session stays: its queue now counts."""
        self.back(session)
        charge = sum(map(copy_cost, session.queue))
        session.offline_charge = charge
        self.total += charge

    def back(self, session: Session) -> None:
        """Its client is back, or the session ends: its part of the total goes."""
        self.total -= session.offline_charge
        session.offline_charge = 0

    def admit(self, session: Session, out: Outbound) -> bool:
        """Whether ``out`` may be queued for the offline ``session``; refused copies
        are counted (``limit_hits["offline_queue"]``) and logged now and then."""
        limit = self.settings.max_offline_queued_bytes
        if not limit or self.total + copy_cost(out) <= limit:
            return True
        self.stats.limit_hit("offline_queue")
        self.refused += 1
        if self.refused & (self.refused - 1) == 0:
            self.log.warn("Offline queues hold {total} bytes (--max-offline-queued-bytes "
                          "{limit}): a message for {client} was dropped (topic {topic}; "
                          "{n} dropped so far)", total=self.total, limit=limit,
                          client=session.clientId, topic=out.message.topic, n=self.refused)
        return False

    def queued(self, session: Session, out: Outbound, dropped: list[Outbound]) -> None:
        """``out`` was queued for the offline ``session``, ``dropped`` left its queue."""
        change = copy_cost(out) - sum(map(copy_cost, dropped))
        session.offline_charge += change
        self.total += change
