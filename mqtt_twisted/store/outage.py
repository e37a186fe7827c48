"""One log line when a store's backend goes away and one when it is back.

During an outage every store call fails after the store's timeout and every
connection retries with backoff; a line for each of those buries the one fact an
operator needs (the backend was down from T1 to T2) under dozens of lines a
minute.  A network store keeps one :class:`OutageLog`, tells it which of its
connections are down and up, and builds its failures with :meth:`OutageLog.error`:
during an outage that is a :class:`~mqtt_twisted.errors.StoreUnavailable`, which
the broker answers without logging, counted here for the recovery line.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from twisted.logger import Logger

from mqtt_twisted.errors import StorageError, StoreUnavailable


class OutageLog:
    """Tracks which connections of a store are down, logging the outage and its end once."""

    def __init__(self, clock: Any, log: Logger, what: str) -> None:
        self._clock = clock
        self._log = log
        #: The backend, as the log names it ("Redis at 127.0.0.1:6379").
        self.what = what
        self._down: set[Hashable] = set()
        #: When the outage started (``clock.seconds()``), or None while there is none.
        self.since: float | None = None
        self.failed_writes = 0
        self.failed_reads = 0
        #: Outages so far, and seconds spent in those that ended (metrics read them).
        self.outages = 0
        self.outage_seconds = 0.0

    @property
    def active(self) -> bool:
        """Whether an outage is under way (and has been logged)."""
        return self.since is not None

    def down(self, connection: Hashable, why: str) -> None:
        """``connection`` is lost; the first lost connection starts (and logs) the outage."""
        self._down.add(connection)
        if self.since is None:
            self.since = self._clock.seconds()
            self.outages += 1
            self.failed_writes = self.failed_reads = 0
            self._log.warn("{what} unreachable ({why}); reconnecting. Until it is back, store "
                           "calls fail and are counted, not logged one by one",
                           action="store_outage", what=self.what, why=why)

    def up(self, connection: Hashable) -> None:
        """``connection`` is back; the last one back ends (and logs) the outage."""
        self._down.discard(connection)
        if self.since is None or self._down:
            return
        elapsed = self._clock.seconds() - self.since
        seconds = round(elapsed, 1)
        self.outage_seconds += elapsed
        self.since = None
        self._log.info("{what} reachable again after {seconds}s; {writes} store writes and "
                       "{reads} reads failed meanwhile", action="store_recovered",
                       what=self.what, seconds=seconds, writes=self.failed_writes,
                       reads=self.failed_reads)

    def error(self, message: str, write: bool | None = True) -> StorageError:
        """The error a call fails with: during an outage a counted StoreUnavailable (not
        logged by the broker), otherwise a plain StorageError (logged).  ``write`` None:
        the store's own housekeeping (loading its scripts), not counted."""
        if self.since is None:
            return StorageError(message)
        if write is None:
            pass
        elif write:
            self.failed_writes += 1
        else:
            self.failed_reads += 1
        return StoreUnavailable(message)
