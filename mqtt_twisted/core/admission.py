"""New connections' first reads, a slice of CPU per reactor turn across all connections
(issue 14).

Under a flood of new connections (the live fuzz: two processes connecting as fast as
they can) one reactor turn handled every socket that was ready at once: dozens of
first reads, each a CONNECT (a session, a CONNACK, a log line) and mostly the rest of
that client's packets, a PUBLISH to every session left behind with a ``#``
subscription, its protocol error and its close: 40-67 events and 5-20 ms of CPU a
turn (``bench/fuzz_probe.py``), while a connected client's PUBLISH waited behind them.

:class:`ConnectGate` handles the reads of connections that have not sent CONNECT
within :data:`TURN_BUDGET` of CPU per turn, all connections together (CPU, not a
count: a first read may be a bare CONNECT or a CONNECT and a PUBLISH to thousands).
A connection that comes once the turn's budget is spent keeps its bytes here and goes
on at a later turn, in arrival order; at least one waits no longer than a turn.  If
it sends more meanwhile, that is kept too and it stops reading until its turn (one
more count on the counter flow control and the per-read share use); one that sent its
CONNECT and waits for the answer, the usual case, is not paused at all (a pause and
its end were an ``epoll_ctl`` and three Python calls each way).
Connected clients' reads are not gated: their shares are bounded per read already
(``core/connection.py``), so a turn holds at most one budget of CONNECTs.

Sans-IO: the turns are the injected clock's ``callLater(0)``, the CPU clock is
injected too (``time.thread_time``: the machine's load does not stretch it).  Reading
it is a system call (no vDSO for a thread's CPU clock: 0.7 µs here, two per CONNECT),
so a turn's first reads are timed by the wall clock (``time.perf_counter``, 0.1 µs)
until they have taken half the budget by it, and by the CPU clock after that: a
thread's CPU time never exceeds the wall time that passed, so the sum is never less
than their CPU time, and a turn admits no more than the CPU budget allows (on a loaded
machine, where wall time stretches, a few less).  A turn
whose first reads all fit its budget starts the next turn's budget at its end
(``turns.after_turn``: run by the lean loop without a ``DelayedCall``, and without
the extra ``epoll_wait`` a due call costs the next iteration); only connections left
waiting get the ``callLater(0)`` that handles them at the next turn.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from mqtt_twisted.core.states import CLOSED, CONNECTING
from mqtt_twisted.turns import after_turn, own_turn, run_due

#: CPU seconds per reactor turn for the first reads of new connections, all together.
#: A fuzz stream's first read (its CONNECT, protocol error or session, log lines, and
#: often its close) is 0.1-0.5 ms, so a turn admits a few of them: with 2 ms the fuzz's
#: turn CPU p999 was 5.6-6.3 ms, with 1 ms 4.1-4.4 ms (main: 7.3-12.9; docs/limits.md).
TURN_BUDGET = 0.001
#: Seconds past its CONNECT deadline a connection whose CONNECT has come waits for the
#: answer (:func:`connect_deadline_passed`): the cluster's patience with a node that is
#: slow to let a session go (``cluster/node.py``, 60 s from the CONNECT at most).
ANSWER_WAIT = 50.0


class ConnectGate:
    """Admits the reads of connections that have not sent CONNECT, a budget a turn."""

    __slots__ = ("clock", "cpu", "wall", "budget", "spent", "waiting", "_paused", "_call",
                 "_admitting", "_renewing")

    def __init__(self, clock: Any, budget: float = TURN_BUDGET,
                 cpu: Callable[[], float] = time.thread_time,
                 wall: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.cpu = cpu
        self.wall = wall  # (the first half of a budget: see the module's docstring)
        #: CPU seconds of first reads per turn (0: no gate).
        self.budget = budget
        #: What this turn's first reads have cost so far.
        self.spent = 0.0
        #: Connection -> the bytes it read while it waited, in arrival order.
        self.waiting: OrderedDict[Any, list[bytes]] = OrderedDict()
        #: Those of them that sent more while waiting: not reading until their turn.
        self._paused: set[Any] = set()
        self._call: Any = None
        self._admitting: Any = None  # (the connection being handled: not gated again)
        self._renewing = False  # (the turn's end renews the budget: _renew)

    def __len__(self) -> int:
        """Connections waiting for a later turn."""
        return len(self.waiting)

    def takes(self, conn: Any, data: bytes) -> bool:
        """Take ``conn``'s read: handle it now (within the turn's budget) or keep it
        for a later turn (True); False: the caller handles it (no gate, or the gate
        is handling it right now)."""
        if conn is self._admitting or not self.budget:
            return False
        held = self.waiting.get(conn)
        if held is not None:  # (more from it: kept, and no more read until its turn)
            held.append(data)
            if conn not in self._paused:
                self._paused.add(conn)
                conn.throttle()
        elif self.waiting or self.spent >= self.budget:  # (those waiting go first)
            self.waiting[conn] = [data]
            self._schedule()
        else:
            self._handle(conn, data)
        return True

    def _handle(self, conn: Any, data: bytes) -> None:
        clock = self.cpu if self.spent * 2 >= self.budget else self.wall
        start = clock()
        outer, self._admitting = self._admitting, conn
        try:
            conn.dataReceived(data)
        finally:
            self._admitting = outer
            self.spent += clock() - start
            if self.waiting:
                self._schedule()
            elif not self._renewing:
                self._renewing = True
                after_turn(self.clock, ConnectGate._renew, self)

    def _schedule(self) -> None:
        if self._call is None:
            self._call = self.clock.callLater(0, self._turn)

    def _renew(self) -> None:
        """The turn's end, none waiting: the next turn's first reads have a whole budget.
        (Run once the turn's events are handled: the end-of-turn work after it reads
        no new connection's first bytes, so no turn gets a second budget.)"""
        self._renewing = False
        if self._call is None:  # (else _turn renews it, and first serves those waiting)
            self.spent = 0.0

    def _turn(self) -> None:
        """A new turn, a new budget: first for the connections that waited.  What their
        CONNECTs leave for the turn's end (CONNACKs, log lines: ``turns.after_turn``)
        runs as this call ends (``turns.own_turn``), not in a ``callLater(0)`` of its
        own, a reactor pass later: one ``DelayedCall`` less a turn of a CONNECT storm.
        The budget's renewal is not part of that: it comes after the next turn's
        events, as it did (no turn gets a second budget)."""
        self._call = None
        self.spent = 0.0
        waiting = self.waiting
        clock = self.clock
        own = own_turn(clock)
        renewing, self._renewing = self._renewing, True  # (_handle: no renewal yet)
        handled = False
        try:
            while waiting and self.spent < self.budget:
                conn, held = waiting.popitem(last=False)
                paused = conn in self._paused
                if paused:
                    self._paused.discard(conn)
                if conn.state == CLOSED:  # (its CONNECT deadline passed, or shutdown)
                    continue
                handled = True
                self._handle(conn, held[0] if len(held) == 1 else b"".join(held))
                if paused:
                    conn.unthrottle()
        finally:
            if waiting:
                self._schedule()
            if own:
                run_due(clock)
            self._renewing = renewing
            if handled and not waiting and not renewing:  # (as _handle would have)
                self._renewing = True
                after_turn(clock, ConnectGate._renew, self)

    def holds_connect(self, conn: Any) -> bool:
        """Whether ``conn``'s bytes waiting here hold a whole CONNECT (its client has
        done its part; the broker has not had the turn to read it yet)."""
        held = self.waiting.get(conn)
        return held is not None and _whole_connect(b"".join(held))


def _whole_connect(data: bytes) -> bool:
    """Whether ``data`` begins with a whole CONNECT packet (type 1, its length read)."""
    if len(data) < 2 or data[0] >> 4 != 1:
        return False
    length = shift = 0
    for at in range(1, min(len(data), 5)):
        byte = data[at]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return len(data) >= at + 1 + length
        shift += 7
    return False


def connect_deadline_passed(conn: Any) -> bool:
    """The CONNECT deadline of ``conn`` passed: whether to cut it off.

    The deadline is for the client: a socket that has not sent its CONNECT in time is
    closed (slowloris), as is one that has not answered an MQTT 5 AUTH challenge.  One
    whose CONNECT has come (being answered, or waiting here for a turn's budget) gets
    :data:`ANSWER_WAIT` seconds more, once: a node resuming thousands of sessions in a
    reconnect storm is slow, not its clients, and cutting them off made them connect
    again at the back of the queue, adding their work again (on a survivor of a
    15,000-client storm: 5,091 cut off, 3,111 of them with their CONNECT being
    answered and 1,980 with it waiting here).
    """
    broker = conn.broker
    answering = conn.state == CONNECTING and conn.auth_pending is None  # (not its AUTH)
    if conn.answer_due or not (answering or broker.gate.holds_connect(conn)):
        return True
    conn.answer_due = True
    return not broker.deadlines.arm(conn, broker.clock.seconds() + ANSWER_WAIT)
