"""The journal: every store write the broker makes, and who waits for which.

A write is fire-and-forget (its failure is counted and logged) unless it happens
inside :meth:`Journal.writes_of`, whose caller gets the pending writes back and
acknowledges its packet only once they are stored [MQTT-4.3.2/3].  ``durable`` says
whether per-message writes (queued and in-flight QoS 1/2 copies, inbound QoS 2 ids)
are made at all: a store that lives in this process (the memory store) needs none,
since the live sessions are the copy of record; it still gets sessions and retained
messages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from mqtt_twisted.core.stats import LATENCY_SAMPLE
from mqtt_twisted.errors import StorageError, StoreUnavailable
from mqtt_twisted.interfaces import ISessionInfoStore

# Below both the core and the stores, which hand it out (the Redis store's batches).
from mqtt_twisted.writes import SharedWrite

__all__ = ["Journal", "SharedWrite"]


class Journal:
    """The broker's side of its store writes."""

    log = Logger(namespace="mqtt_twisted.core.broker.Broker")

    __slots__ = ("store", "stats", "clock", "durable", "_collecting", "failures",
                 "incremental", "_watched")

    def __init__(self, store: Any, stats: Any, clock: Any = None) -> None:
        self.store = store
        self.stats = stats
        #: Times one write in LATENCY_SAMPLE for the store latency histogram (None: none).
        self.clock = clock
        self.durable = bool(getattr(store, "persistsMessages", True))
        self._collecting: list[Any] | None = None
        #: Store writes that failed so far: a session saved whole before the last one
        #: may lack a change in the store (Session.stored_epoch).
        self.failures = 0
        #: Whether CONNECT and DISCONNECT may save a session's own fields alone.
        self.incremental = self.durable and ISessionInfoStore.providedBy(store)
        #: The last fire-and-forget write given store_failed: a batch that many writes
        #: share (the Redis store's outbound records of a turn) gets it once.
        self._watched: Any = None

    def writes_of(self, action: Callable[..., Any], *args: Any) -> tuple[Any, list[Any]]:
        """Run ``action`` and return its result with the store writes it left pending:
        the caller waits on them (to acknowledge only what is stored) and handles their
        failures.  Nested (a delivery that releases held ones: cluster/barrier.py),
        the inner writes are the outer caller's too."""
        outer = self._collecting
        self._collecting = []
        try:
            result = action(*args)
        finally:
            writes, self._collecting = self._collecting, outer
        if outer is not None:
            outer += writes
        return result, writes

    def collecting(self) -> list[Any] | None:
        """The writes the innermost :meth:`writes_of` under way collects (None: none):
        several copies may share one write per collection (``cluster/shared.py``)."""
        return self._collecting

    def persist(self, result: Any) -> None:
        """A store write: fire-and-forget (failures logged), or collected for an ack."""
        if type(result) is SharedWrite:  # (a batch's: no hasattr, getattr per message)
            if result.called and not isinstance(result.result, Failure):
                return
        elif not hasattr(result, "addErrback"):
            return
        elif getattr(result, "called", False) and not isinstance(result.result, Failure):
            return  # stored already (the memory store): nothing to wait for
        stats = self.stats
        stats.store_writes += 1
        if not stats.store_writes & (LATENCY_SAMPLE - 1) and self.clock is not None:
            result.addBoth(self._timed, self.clock.seconds())
        collecting = self._collecting
        if collecting is not None:
            if not collecting or collecting[-1] is not result:  # a batch's next write
                collecting.append(result)
        elif result is not self._watched:
            # A shared write (a batch) is watched once: its failure counts once, not
            # once per write it carries, and costs no waiter per message.
            self._watched = result
            result.addErrback(self.store_failed)

    def save_session(self, session: Any) -> None:
        """Save a persistent session at CONNECT or DISCONNECT: its own fields only when
        the store has had every change since its last whole save, else whole."""
        if self.incremental and session.stored_epoch == self.failures:
            self.persist(self.store.saveSessionInfo(session))
        else:
            session.stored_epoch = self.failures
            self.persist(self.store.saveSession(session))

    def _timed(self, result: Any, started: float) -> Any:
        """A sampled write's round trip into the histogram; its result passes on."""
        self.stats.store_latency.observe(self.clock.seconds() - started)
        return result

    def store_failed(self, failure: Failure) -> None:
        """Count and log a failed store write (during an outage the store logs it once)."""
        self.stats.store_errors += 1
        self.failures += 1
        if failure.check(StoreUnavailable):
            return
        if failure.check(StorageError):
            self.log.warn("Store write failed: {error}", error=failure.value)
        else:
            self.log.failure("Store write failed", failure)
