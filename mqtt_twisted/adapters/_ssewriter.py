"""SSE streams written a slice per reactor turn, not inside the publish that fans out.

A PUBLISH routed to 500 SSE streams was 500 events encoded and written, each a chunk,
a ``send`` and two epoll changes, in the turn that read it: 10-15 ms of CPU a turn
while the streams' sockets took data (``bench/hostile.py --attack unread_sse
--sse-streams 500``), which every other client waited for.  Now a delivery only puts
the message in its stream's backlog (a reference) and tells the :class:`StreamWriter`;
the writer goes round the streams with something to write in later turns, and each
stream writes what waits for it in one chunk: the more a stream has waiting, the
fewer writes per event.

A turn's slice is bounded in CPU time, not in units of work: a count of events
(1,024 a turn before) was 5-7 ms of CPU at the p99, since what an event costs
depends on its size and on what the reactor does with each write afterwards.  The
writer reads the thread's CPU clock after each stream's chunk (at most
:data:`CHUNK` events) and stops once its own time plus :data:`SEND_TIME` per write
made (the ``send`` and epoll changes the reactor makes for it later in the same
turn) reaches :data:`WRITE_TIME`.

Also here, for the bridge's other work that fans out over its streams: one
:class:`Heartbeat` timer for their keep-alive lines, :class:`Paced` work (openings,
cut-offs) a slice of CPU time a turn, and :class:`DropLog`, their "not keeping up"
lines at most one a second.

Sans-IO: the reactor clock and the CPU clock are injected (``task.Clock`` and a fake
counter in tests); a stream is anything with ``flush(limit) -> (written, more)``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from twisted.logger import Logger

_log = Logger(namespace="mqtt_twisted.adapters.http")

#: CPU seconds a writer turn may take, the sends it causes included (estimated).
WRITE_TIME = 0.001
#: CPU seconds the reactor later spends on one write (a ``send``, two epoll changes;
#: measured: 13-22 us, p50 16, docs/limits.md, session 8), counted when it is made.
SEND_TIME = 16e-6
#: Events one stream writes at most per chunk: the writer checks its budget after
#: each chunk, and a stream with thousands waiting does not hold the others back.
CHUNK = 64


class Flushable(Protocol):
    def flush(self, limit: int) -> tuple[int, bool]:
        """Write at most ``limit`` (at least one) waiting events in one chunk: how many
        were written, and whether more wait that could be written now."""


class StreamWriter:
    """The streams with events to write, served round-robin a slice per reactor turn."""

    __slots__ = ("clock", "budget", "cpu", "chunk", "ready", "call")

    def __init__(self, clock: Any, budget: float = WRITE_TIME,
                 cpu: Callable[[], float] = time.thread_time, chunk: int = CHUNK) -> None:
        self.clock = clock
        self.budget = budget
        self.cpu = cpu
        self.chunk = max(1, chunk)
        #: Streams waiting for the writer, in turn order (a dict: an ordered set).
        self.ready: dict[Flushable, None] = {}
        self.call: Any = None

    def want(self, stream: Flushable) -> None:
        """``stream`` has events to write: it gets its turn (once, however many)."""
        if stream not in self.ready:
            self.ready[stream] = None
            if self.call is None:
                self.call = self.clock.callLater(0, self._write)

    def forget(self, stream: Flushable) -> None:
        """``stream`` ended (or paused): no turn for it."""
        self.ready.pop(stream, None)

    def _write(self) -> None:
        """One turn's slice: at least one chunk, then chunks while the budget lasts."""
        self.call = None
        ready, cpu, chunk = self.ready, self.cpu, self.chunk
        deadline = cpu() + self.budget
        writes = 0.0
        while ready:
            stream = next(iter(ready))
            del ready[stream]
            written, more = stream.flush(chunk)
            if written:
                writes += SEND_TIME
            if more and stream not in ready:
                ready[stream] = None  # behind the others: round-robin
            if cpu() + writes >= deadline:
                break
        if ready:
            self.call = self.clock.callLater(0, self._write)

    def stop(self) -> None:
        """Forget every stream (the listener stopped)."""
        self.ready.clear()
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None


class Pingable(Flushable, Protocol):
    #: Whether the stream wrote nothing since the heartbeat's last tick.
    idle: bool

    def want_ping(self) -> bool:
        """Ask for a comment line at the writer's next turn; False if the stream cannot
        take one now (paused, ended)."""


class Heartbeat:
    """One timer for the comment lines (``: ping``) that keep idle streams open, instead
    of a ``LoopingCall`` per stream (its delayed call, Deferred and bound method: tracked
    objects every full collection walked, and 500 timers in the reactor's heap).

    It ticks every half ``interval``: a stream that wrote nothing for a whole tick gets a
    ping, written by the :class:`StreamWriter` in its slices (500 pings in the tick's
    own turn would be 500 writes and sends at once).  So an idle stream gets a line at
    most ``interval`` seconds after its last one."""

    __slots__ = ("clock", "interval", "writer", "streams", "call")

    def __init__(self, clock: Any, interval: float, writer: StreamWriter) -> None:
        self.clock = clock
        self.interval = interval
        self.writer = writer
        self.streams: dict[Pingable, None] = {}
        self.call: Any = None

    def add(self, stream: Pingable) -> None:
        if not self.interval:
            return
        stream.idle = True
        self.streams[stream] = None
        if self.call is None:
            self.call = self.clock.callLater(self.interval / 2, self._tick)

    def discard(self, stream: Pingable) -> None:
        self.streams.pop(stream, None)

    def _tick(self) -> None:
        self.call = None
        want = self.writer.want
        for stream in self.streams:
            if stream.idle and stream.want_ping():
                want(stream)
            stream.idle = True
        if self.streams:
            self.call = self.clock.callLater(self.interval / 2, self._tick)

    def stop(self) -> None:
        self.streams.clear()
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None


class Paced:
    """Work waiting for the reactor: run :attr:`budget` seconds of CPU of it a turn, in
    order, at least one item a turn; ``after`` is counted per item for what it leaves
    to the next turn (a lost connection's handling)."""

    def __init__(self, reactor: Any, budget: float, cpu: Callable[[], float] = time.thread_time,
                 after: float = 0.0) -> None:
        self.reactor = reactor
        self.budget = budget
        self.cpu = cpu
        self.after = after
        self.waiting: deque[Callable[[], Any]] = deque()
        self.call: Any = None

    def run_later(self, work: Callable[[], Any]) -> None:
        self.waiting.append(work)
        if self.call is None:
            self.call = self.reactor.callLater(0, self._run)

    def _run(self) -> None:
        self.call = None
        waiting, cpu, after = self.waiting, self.cpu, self.after
        deadline = cpu() + self.budget
        extra = 0.0
        while waiting:
            waiting.popleft()()
            extra += after
            if cpu() + extra >= deadline:
                break
        if waiting:
            self.call = self.reactor.callLater(0, self._run)

    def stop(self) -> None:
        """Drop what waits (the listener stopped: its connections are being closed)."""
        self.waiting.clear()
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None


#: Seconds between two "not keeping up" lines of a listener's SSE streams.
DROP_LOG_INTERVAL = 1.0


class DropLog:
    """The "not keeping up" log lines of the listener's streams, at most one every
    :data:`DROP_LOG_INTERVAL` seconds, naming how many others there were meanwhile.
    500 streams that stopped reading together drop in step, each logging at its 1st,
    2nd, 4th... drop: 500 lines in one reactor turn, 7-10 ms of CPU (py-spy; 13 such
    turns in ``bench/hostile.py --attack unread_sse --sse-streams 500``)."""

    __slots__ = ("clock", "last", "quiet")

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.last = -DROP_LOG_INTERVAL
        #: Lines left out since the last one.
        self.quiet = 0

    def note(self, client: str, dropped: int) -> None:
        now = self.clock.seconds()
        if now - self.last < DROP_LOG_INTERVAL:
            self.quiet += 1
            return
        self.last = now
        _log.info("SSE client {client} is not keeping up: {n} messages dropped so far "
                 "(oldest first); {others} more such lines left out", client=client,
                 n=dropped, others=self.quiet)
        self.quiet = 0

