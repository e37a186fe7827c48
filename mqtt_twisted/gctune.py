"""The cyclic garbage collector, set for a broker whose heap grows with its sessions.

CPython's full collection walks every tracked object, and by default it runs whenever
a quarter more objects have reached the oldest generation since the last one.  A broker
that accepts a thousand short connections a second promotes their objects (protocol,
transport, connection, Deferreds: alive for a few milliseconds, which is many young
collections) at that rate, so the full collections came every second or two; with the
100,000-stream live fuzz's 15,000 sessions left behind each took 200-300 ms of the
single reactor thread (77 of them, 15 s of a 97 s run), and the bystander's p99 was
116 ms (``tests/test_live_fuzz.py``, docs/limits.md has the figures).

So, once the broker listens and the reactor runs (``twistd mqttbroker`` only; an
embedding application owns its process's collector):

- what start-up built (modules, Twisted, plugins: about 65,000 objects that live as
  long as the process) is frozen (``gc.freeze``), walked again only at a thaw;
- a full collection needs :data:`THRESHOLDS` ``[2]`` collections of the middle
  generation (it was 100 before the survivors were frozen: a tenth as many full
  collections, each over the whole heap);
- what survives a full collection is frozen too (:class:`Freezer`): the next full
  collection walks only what reached the oldest generation since, not every session
  held, so its pause follows the rate of new long-lived objects instead of the size of
  the heap (500 unread SSE streams: 30-66 ms a full collection before, 0.1 ms at the
  median now; the live fuzz's 13,000 sessions left behind: 212 ms before, 0.8 ms;
  docs/limits.md, "Session 7").  A frozen object that dies is freed as usual, by
  its reference count; only one that dies in a reference cycle stays until the next
  thaw, every :data:`THAW_INTERVAL` seconds, when everything is unfrozen so that the
  next full collection walks (and frees) it all once.

Garbage made of cycles is still collected: almost all of it young, the rest when a full
collection comes, and cycles among long-lived objects at the next thaw.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

#: ``gc.set_threshold`` values (CPython's default: 700, 10, 10).  With the oldest
#: generation frozen after each full collection, a full collection costs what reached
#: it since the last one, so CPython's 10 again: ten times the collections of 100,
#: each a tenth of the walk.
THRESHOLDS = (700, 10, 10)
#: Seconds between thaws: the one full collection over the whole heap that frees what
#: died in cycles among frozen objects (its pause is the old one, 10 minutes apart).
THAW_INTERVAL = 600.0


class Freezer:
    """A ``gc.callbacks`` entry: after each full collection, freeze its survivors;
    the first full collection :data:`THAW_INTERVAL` seconds after the last thaw (or
    start) unfreezes instead, so the next one walks the whole heap."""

    __slots__ = ("collector", "clock", "interval", "thawed_at", "freezes", "thaws")

    def __init__(self, collector: Any = gc, clock: Callable[[], float] = time.monotonic,
                 interval: float = THAW_INTERVAL) -> None:
        self.collector = collector
        self.clock = clock
        self.interval = interval
        self.thawed_at = clock()
        #: How many times each happened (tests, and a debugger's curiosity).
        self.freezes = self.thaws = 0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase != "stop" or info.get("generation") != 2:
            return
        now = self.clock()
        if now - self.thawed_at >= self.interval:
            self.thawed_at = now
            self.thaws += 1
            self.collector.unfreeze()  # the next full collection walks everything once
        else:
            self.freezes += 1
            self.collector.freeze()  # the young generations are empty: survivors only


def settle(interval: float = THAW_INTERVAL) -> Freezer:
    """Freeze what start-up built, set :data:`THRESHOLDS` and install a
    :class:`Freezer` (a broker that now listens; called once, by ``twistd
    mqttbroker``); returns it."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    freezer = Freezer(interval=interval)
    gc.callbacks.append(freezer)
    # A full collection of nothing: CPython runs the next one only once a quarter as
    # many objects as that one kept have reached the oldest generation.  Counted from
    # the start-up heap (65,000) the first came two minutes into the live fuzz and
    # walked 105,000 objects (113 ms); counted from none, it comes with THRESHOLDS[2].
    gc.collect()
    return freezer
