"""One timer for every connection's deadline: a bucketed timing wheel (sans-IO).

A connection has at most one deadline at a time: its CONNECT deadline, then its keep
alive check (1.5 x keep alive after the last packet [MQTT-3.1.2-24]), then, once
closing, its close grace.  Each used to be a ``DelayedCall`` of its own, about 670
bytes per connection and two reactor heap operations per connect; Mosquitto checks
keep alives in its main loop instead.  Here a deadline is an entry in a set per
``RESOLUTION`` slice of time (a few dozen bytes), and one ``callLater`` on the
injected clock wakes the broker at the earliest slice that holds anything.

A deadline fires when its slice is reached: never before it, at most ``RESOLUTION``
after it.  Keep alive is lazy, as Mosquitto's: a packet only records when it came
(``last_rx``); when the slice comes the connection computes its real deadline and
either expires or re-arms (once per keep alive period for a busy client, not once
per packet).  An item keeps its slice's key in its ``due`` attribute and has a
``deadline_passed()`` method.
"""

from __future__ import annotations

import heapq
from math import ceil, floor
from typing import Any

#: Seconds per slice: how late a deadline may fire.  MQTT asks for the close "within"
#: 1.5 x keep alive of silence; a tenth of a second late is within what a socket's own
#: delays add, and keeps connections that connect in the same tenth in one slice.
RESOLUTION = 0.1
_SCALE = 1 / RESOLUTION
#: Clock values carry float noise (0.1 + 0.2): a deadline this close to a slice's
#: edge counts as on it.
_EPSILON = 1e-6


def _key(when: float) -> int:
    """The slice a deadline at ``when`` fires in: the first whose time is not before it."""
    return ceil(when * _SCALE - _EPSILON)


class Deadlines:
    """The deadlines of a broker's connections, behind one timer on ``clock``.

    The timer goes when the last deadline is cancelled (nothing armed, nothing left
    on the clock); while any connection has a deadline, arming and cancelling others
    does not touch the reactor.  :meth:`stop` cancels it for good.
    """

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self._slices: dict[int, set[Any]] = {}
        self._keys: list[int] = []  # heap of slice keys (some may be emptied since)
        self._call: Any = None
        self._call_key = 0
        #: The slice being fired, or the last one fired: a deadline at or before it
        #: has passed.
        self._now_key = _key(clock.seconds())
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def arm(self, item: Any, when: float) -> bool:
        """Call ``item.deadline_passed()`` once ``when`` has come (replacing the item's
        deadline, if it had one); False, and nothing armed, if it has passed already
        (as the wheel last saw the time: this answers a handler's re-arm)."""
        key = ceil(when * _SCALE - _EPSILON)
        old = item.due
        if old == key:
            return True
        if old is not None:
            self.cancel(item)
        if key <= self._now_key:
            return False
        slice_ = self._slices.get(key)
        if slice_ is None:
            slice_ = self._slices[key] = set()
            heapq.heappush(self._keys, key)
        slice_.add(item)
        item.due = key
        self._size += 1
        if self._call is None or key < self._call_key:
            self._schedule(key)
        return True

    def cancel(self, item: Any) -> None:
        """Forget the item's deadline, if it has one."""
        key = item.due
        if key is not None:
            item.due = None
            slice_ = self._slices[key]
            slice_.discard(item)
            self._size -= 1
            if not slice_:
                del self._slices[key]  # (its key stays in the heap until it comes up)
            if not self._size:
                self.stop()
                self._keys.clear()

    def stop(self) -> None:
        """No more wake-ups (the broker is stopping): what is armed stays armed."""
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def _schedule(self, key: int) -> None:
        if self._call is not None:
            self._call.cancel()
        self._call_key = key
        self._call = self.clock.callLater(max(0.0, key / _SCALE - self.clock.seconds()),
                                          self._fire)

    def _fire(self) -> None:
        """Every slice whose time has come: its items' deadlines have passed."""
        self._call = None
        now_key = self._now_key = floor(self.clock.seconds() * _SCALE + _EPSILON)
        keys, slices = self._keys, self._slices
        while keys and keys[0] <= now_key:
            key = heapq.heappop(keys)
            slice_ = slices.pop(key, None)
            if not slice_:
                continue
            self._size -= len(slice_)
            for item in slice_:
                item.due = None
            for item in slice_:
                if item.due is None:  # (an earlier one's handler may have armed it again)
                    item.deadline_passed()
        while keys and keys[0] not in slices:
            heapq.heappop(keys)
        # (A handler may have armed a later slice meanwhile: the earliest one counts.)
        if keys and (self._call is None or keys[0] < self._call_key):
            self._schedule(keys[0])
