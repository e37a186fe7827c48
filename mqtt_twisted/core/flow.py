"""Flow control: a subscriber that cannot keep up holds back the publishers feeding it.

When a subscriber's transport is full (or its queue passes the high-water mark), the
client whose PUBLISH is being routed stops being read until the subscriber catches up,
as a stream pipe would.  A subscriber that makes no progress for
``slow_consumer_grace`` seconds stops holding anyone back: its messages queue within
``max_queued`` and the oldest are dropped, so one dead reader costs the others nothing
but that grace.

The grace alone could be renewed: an attacker connecting a new subscriber that never
reads every two seconds held a flooding publisher back nearly all the time.  So each
publisher also has a hold budget: the seconds it was held back are its debt, which
drains at :data:`REFILL` seconds per second; a publisher owing a whole grace is not
held back again (its messages queue for the slow subscribers) until the debt drains.
Over a long run a publisher is held back about a tenth of the time at most, however
many slow subscribers come.  The state of each congested subscriber lives here, not
on the connections.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from twisted.logger import Logger

from mqtt_twisted.core.states import CONNECTED

if TYPE_CHECKING:
    from mqtt_twisted.core.broker import Broker

#: Seconds of hold-back debt a publisher pays off per second.
REFILL = 0.1


class _Congestion:
    """One subscriber that cannot take more: since when, and whom it holds back."""

    __slots__ = ("since", "waiters", "stall_call", "written")

    def __init__(self, since: float) -> None:
        self.since = since
        #: Bytes written to its full transport meanwhile (see hold_back_publisher).
        self.written = 0
        #: Publisher -> since when this subscriber holds it back.
        self.waiters: dict[Any, float] = {}
        self.stall_call: Any = None


class FlowControl:
    """Which subscribers are congested, and the publishers each holds back."""

    log = Logger(namespace="mqtt_twisted.core.broker.Broker")

    __slots__ = ("broker", "congested", "debts")

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        #: Subscriber connection -> its congestion; empty while everyone keeps up.
        self.congested: dict[Any, _Congestion] = {}
        #: Publisher connection -> (seconds held back still owed, as of when).
        self.debts: WeakKeyDictionary[Any, tuple[float, float]] = WeakKeyDictionary()

    def hold_back_publisher(self, conn: Any, size: int = 0) -> bool:
        """``conn`` cannot take more now: stop reading from the client whose PUBLISH is
        being routed until ``conn`` catches up.  True when a publisher is held back (the
        caller then writes the ``size`` bytes through); False past the grace, when
        nobody is publishing (a will, ``$SYS``, an HTTP publish), or once the writes
        through reach the queue's byte limit: then the message queues.  (One read of
        a held-back publisher can hold thousands of tiny alias-only PUBLISHes, each
        written out with its whole topic.)"""
        broker = self.broker
        clock = broker.clock
        grace = broker.settings.slow_consumer_grace
        state = self.congested.get(conn)
        if state is None:
            state = self.congested[conn] = _Congestion(clock.seconds())
        elif clock.seconds() - state.since > grace:
            if state.waiters:
                self._stalled(conn)
            return False
        publisher = broker.publisher
        if state.written + size > (broker.settings.max_queued_bytes or 1 << 62):
            return False
        if publisher is not None and publisher is not conn and publisher.state == CONNECTED:
            if publisher in state.waiters:
                state.written += size
                return True
            if self.owed(publisher) >= grace:
                return False  # its budget is spent: the slow subscriber's queue takes it
            if state.stall_call is None and not state.waiters:
                # Held-back publishers send nothing more, so nothing else would notice
                # that this subscriber stalled: a timer does.
                state.stall_call = clock.callLater(grace, self._stalled, conn)
            state.waiters[publisher] = clock.seconds()
            publisher.throttle()
            state.written += size
            return True
        return False

    def take_through(self, conn: Any, size: int, count: bool = True) -> bool:
        """A peer node's plain QoS 0 bytes for the full ``conn`` (``qos0.deliver_raw``):
        written through to its transport, as a held-back publisher's last read is, within
        the grace and up to the queue's byte limit; False after (they queue).  Nobody can
        be held back for it: its publisher is on another node, and the pub/sub lane it
        came in carries every node's messages for this one.  ``count`` False: only
        whether it would (a run's other receivers are asked before any counts)."""
        broker = self.broker
        now = broker.clock.seconds()
        state = self.congested.get(conn)
        if state is None:
            state = self.congested[conn] = _Congestion(now)
        elif now - state.since > broker.settings.slow_consumer_grace:
            return False
        if state.written + size > (broker.settings.max_queued_bytes or 1 << 62):
            return False
        if count:
            state.written += size
        return True

    def owed(self, publisher: Any) -> float:
        """Seconds of hold-back ``publisher`` still owes (paid off at REFILL a second)."""
        debt = self.debts.get(publisher)
        if debt is None:
            return 0.0
        owed, since = debt
        return max(0.0, owed - (self.broker.clock.seconds() - since) * REFILL)

    def release(self, conn: Any) -> None:
        """``conn`` caught up (or went away): resume the publishers it held back."""
        state = self.congested.pop(conn, None)
        if state is not None:
            self._resume(state)

    def _stalled(self, conn: Any) -> None:
        state = self.congested.get(conn)
        if state is None:
            return
        state.stall_call = None
        if state.waiters:
            self.log.info("{client} is not keeping up; no longer holding publishers back "
                          "for it", client=conn.client_id)
            self._resume(state)

    def _resume(self, state: _Congestion) -> None:
        call, state.stall_call = state.stall_call, None
        if call is not None and call.active():
            call.cancel()
        waiters, state.waiters = state.waiters, {}
        now = self.broker.clock.seconds()
        for publisher, since in waiters.items():
            self.debts[publisher] = (self.owed(publisher) + now - since, now)
            publisher.unthrottle()
