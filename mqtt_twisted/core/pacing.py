"""Mass work in slices that yield to the reactor (issue 14).

Some work is one request's or one timer's, yet unbounded: the periodic ``$SYS``
publication to every ``$SYS/#`` subscriber, the disconnection of every client at
shutdown.  Done in one go, it blocks every other client for as long as it takes
(a ``$SYS`` tick to 2,000 subscribers: 82,000 deliveries).  :func:`paced` does it a
slice per reactor turn, as a new subscription's retained messages go
(``core/retained.py``): a slice ends once its work (one unit per item,
plus the deliveries the items made, ``BrokerStats.deliveries``) reaches its budget,
and the rest goes on at the next turn through the broker's clock.  Sans-IO: the
clock is injected (``twisted.internet.task.Clock`` in tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

#: Work per reactor turn for a $SYS publication: messages plus their deliveries
#: (about 1 ms of routing at ~1 us a delivery).
SYS_SLICE = 1024
#: Connections closed per reactor turn at shutdown (each one's DISCONNECT, session
#: bookkeeping and store write: ~50-100 us).
CLOSE_SLICE = 64


def paced(clock: Any, stats: Any, items: Iterator[T], do: Callable[[T], int | None],
          work: int, done: Callable[[], Any] | None = None) -> None:
    """``do(item)`` for each of ``items`` (an iterator: where a slice stops, the next
    goes on), a slice of at most ``work`` units per reactor turn; then ``done()``.
    An item costs what ``do`` returns (None: 1) plus the deliveries it made; at least
    one item goes per slice, however much it costs."""
    start = stats.deliveries
    count = 0
    for item in items:
        cost = do(item)
        count += 1 if cost is None else cost
        if count + stats.deliveries - start >= work:
            clock.callLater(0, paced, clock, stats, items, do, work, done)
            return
    if done is not None:
        done()
