"""Cluster work in slices of a reactor turn, so that the node's lease is renewed meanwhile.

A node whose reactor turn outlasts its lease (``failover.LEASE``, 3 s) is adopted by a
survivor while it runs, then fenced (``fence.py``).  The work one event can bring is
unbounded: adopting a dead node restores every one of its sessions, and in a
reconnect storm thousands of CONNECTs and handover requests wait for them.  Done in
one go, 5,000 restores and the 5,000 answers they release took 7 s in one turn (issue
16's storm).  :func:`in_slices` does such work a slice per turn: a slice ends after
:data:`SLICE` seconds or :data:`SLICE_ITEMS` items, whichever comes first (at least
one item), and the next begins on the next turn, after the reactor has read its
sockets and run its timers (the lease's among them).  Like ``core/pacing.py`` (work
units per turn), with a time budget: the cost of an item here varies (a restore, and
whatever waited for it), and so does the machine's load.  :class:`Paced` does the same
for what a Redis connection reads (the cluster's and the store's): the replies of one
read are handed to their callbacks a slice per turn.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from twisted.internet.defer import Deferred

T = TypeVar("T")

#: Seconds of work a slice may take (by the clock) before the reactor turns again.
SLICE = 0.02
#: Items a slice takes at most (a bound where the clock says little: a test's Clock).
SLICE_ITEMS = 200


class _Slices:
    __slots__ = ("clock", "items", "do", "budget", "most", "done", "count", "turns")

    def __init__(self, clock: Any, items: Iterator[Any], do: Callable[[Any], Any],
                 budget: float, most: int) -> None:
        self.clock = clock
        self.items = items
        self.do = do
        self.budget = budget
        self.most = most
        self.done: Deferred[int] = Deferred()
        self.count = 0
        self.turns = 0

    def slice(self) -> None:
        clock = self.clock
        self.turns += 1
        end = clock.seconds() + self.budget
        taken = 0
        try:
            for item in self.items:
                self.do(item)
                self.count += 1
                taken += 1
                if taken >= self.most or clock.seconds() >= end:
                    clock.callLater(0, self.slice)
                    return
        except Exception as e:
            self.done.errback(e)
            return
        self.done.callback(self.count)


def in_slices(clock: Any, items: Iterable[T], do: Callable[[T], Any],
              budget: float = SLICE, most: int = SLICE_ITEMS,
              now: bool = True) -> Deferred[int]:
    """``do(item)`` for each of ``items``, the first slice now (or, ``now`` false, on the
    next reactor turn: this one may have had its share already) and each next one on
    the next turn (``clock.callLater(0)``); fires with the number of items done, or
    with the first error ``do`` raised (the rest is then not done)."""
    slices = _Slices(clock, iter(items), do, budget, most)
    if now:
        slices.slice()
    else:
        clock.callLater(0, slices.slice)
    return slices.done


#: Replies a Redis connection hands to their callbacks between two looks at the clock
#: (:class:`Paced`).
CHUNK = 16


class Paced:
    """What a Redis connection reads, handed to its callbacks a slice per reactor turn.

    In a reconnect storm a read brings thousands of replies, each resuming a session
    (a CONNECT's claim, a handover's answer, a session loaded): handed all at once they
    made 0.7-1.8 s reactor turns on a survivor at load 10-15, during which nothing else
    ran — a lease renewal written in such a turn left late, and a bystander's round
    trip took as long.  ``feed(replies)`` hands a few replies (up to :data:`CHUNK`) at
    once, as before; more, in chunks of :data:`CHUNK` until the slice's
    :data:`SLICE` seconds are spent, and the rest on the next turns, after the reactor
    has read its sockets and run its timers.  What is read meanwhile goes after them:
    the order of replies is the order of commands.  ``hand(chunk)`` takes a list.
    """

    __slots__ = ("clock", "hand", "backlog", "call", "budget", "slices")

    def __init__(self, clock: Any, hand: Callable[[list[Any]], Any],
                 budget: float = SLICE) -> None:
        self.clock = clock
        self.hand = hand
        self.budget = budget
        self.backlog: deque[list[Any]] = deque()
        self.call: Any = None
        #: Slices that left replies for a later turn (tests, the log).
        self.slices = 0

    def feed(self, items: list[Any]) -> None:
        if not self.backlog and len(items) <= CHUNK:
            self.hand(items)  # the usual case: a few replies
            return
        backlog = self.backlog
        for at in range(0, len(items), CHUNK):
            backlog.append(items[at:at + CHUNK])
        if self.call is None:
            self._slice()

    def _slice(self) -> None:
        self.call = None
        clock = self.clock
        backlog = self.backlog
        end = clock.seconds() + self.budget
        try:
            while backlog:
                self.hand(backlog.popleft())
                if backlog and clock.seconds() >= end:
                    self.slices += 1
                    break
        finally:
            if backlog and self.call is None:
                self.call = clock.callLater(0, self._slice)

    def flush(self) -> None:
        """Hand everything left now (the connection is lost: what it had read answers
        its commands before the rest fail)."""
        call, self.call = self.call, None
        if call is not None and call.active():
            call.cancel()
        backlog = self.backlog
        while backlog:
            self.hand(backlog.popleft())

    def clear(self) -> None:
        """Drop what is left (the connection is given up as broken)."""
        self.backlog.clear()
        call, self.call = self.call, None
        if call is not None and call.active():
            call.cancel()
