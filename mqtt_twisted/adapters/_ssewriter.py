"""SSE streams written a slice per reactor turn, not inside the publish that fans out.

A PUBLISH routed to 500 SSE streams was 500 events encoded and written, each a chunk,
a ``send`` and two epoll changes, in the turn that read it: 10-15 ms of CPU a turn
while the streams' sockets took data (``bench/hostile.py --attack unread_sse
--sse-streams 500``), which every other client waited for.  Now a delivery only puts
the message in its stream's backlog (a reference) and tells the :class:`StreamWriter`;
the writer goes round the streams with something to write in later turns, at most
:data:`WRITE_SLICE` units of work a turn, and each stream writes what waits for it in
one chunk: the more a stream has waiting, the fewer writes per event.

Sans-IO: the clock is injected (``twisted.internet.task.Clock`` in tests); a stream is
anything with ``flush(limit) -> (written, more)``.
"""

from __future__ import annotations

from typing import Any, Protocol

#: Work of one writer turn: events encoded plus :data:`WRITE_COST` per stream written
#: to.  About 1-2 ms of CPU; with one publisher to 500 streams (one PUBLISH a turn,
#: fairness per read) the writer keeps up with 4-event chunks.
WRITE_SLICE = 1024
#: What one write costs beside its events, in events: a chunk, then a ``send`` and
#: two epoll changes when the reactor flushes it (measured, about as much as 4 events).
WRITE_COST = 4


class Flushable(Protocol):
    def flush(self, limit: int) -> tuple[int, bool]:
        """Write at most ``limit`` (at least one) waiting events in one chunk: how many
        were written, and whether more wait that could be written now."""


class StreamWriter:
    """The streams with events to write, served round-robin a slice per reactor turn."""

    __slots__ = ("clock", "work", "ready", "call")

    def __init__(self, clock: Any, work: int = WRITE_SLICE) -> None:
        self.clock = clock
        self.work = max(work, WRITE_COST + 1)
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
        self.call = None
        ready = self.ready
        budget = self.work
        while ready and budget > WRITE_COST:
            stream = next(iter(ready))
            del ready[stream]
            written, more = stream.flush(budget - WRITE_COST)
            budget -= written + WRITE_COST
            if more and stream not in ready:
                ready[stream] = None  # behind the others: round-robin
        if ready:
            self.call = self.clock.callLater(0, self._write)

    def stop(self) -> None:
        """Forget every stream (the listener stopped)."""
        self.ready.clear()
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None
