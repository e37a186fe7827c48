"""How long this node's reactor turns take: a node whose turns outlast its lease is
adopted while it runs (``failover.py``), so the longest one is worth knowing.

:class:`TurnProbe` asks the clock to call it every :data:`PERIOD` seconds; how late a
call comes is how long the turn before it ran (plus the poll's own wait, at most the
period).  It keeps the longest lateness since :meth:`TurnProbe.mark` and logs every
turn past :data:`REPORT` seconds, as a warning past a third of the lease (a renewal
was late by that much).  Sans-IO: the clock is injected.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

log = Logger()

#: Seconds between two looks at the clock.
PERIOD = 0.05
#: Turns longer than this (seconds) are logged.
REPORT = 0.25


class TurnProbe:
    """The longest reactor turn of a node, as the lateness of a periodic call."""

    def __init__(self, clock: Any, name: str, warn_after: float) -> None:
        self.clock = clock
        self.name = name
        self.warn_after = warn_after
        #: The longest turn (seconds) since the last mark, and since the start.
        self.longest = 0.0
        self.longest_ever = 0.0
        self._expected = 0.0
        self._call: Any = None

    def start(self) -> None:
        self._expected = self.clock.seconds() + PERIOD
        self._call = self.clock.callLater(PERIOD, self._tick)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def mark(self) -> float:
        """The longest turn since the last mark (seconds); counting starts again."""
        longest, self.longest = self.longest, 0.0
        return longest

    def _tick(self) -> None:
        now = self.clock.seconds()
        late = now - self._expected
        if late > self.longest:
            self.longest = late
        if late > self.longest_ever:
            self.longest_ever = late
        if late > REPORT:
            say = log.warn if late > self.warn_after else log.info
            say("cluster {name}: a reactor turn took {ms:.0f} ms", name=self.name,
                ms=late * 1000)
        self._expected = now + PERIOD
        self._call = self.clock.callLater(PERIOD, self._tick)
