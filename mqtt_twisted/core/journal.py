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


class SharedWrite:
    """A write several waiters share, with the part of a Deferred's interface that the
    journal's callers use (``addCallbacks``, ``addBoth``, ``addCallback``,
    ``addErrback``, ``called``, ``result``).  Unlike a Deferred's callbacks, which form
    a chain, every waiter gets the write's own result (fan-out): one waiter handling
    a failure does not hide it from the next.

    Why not a Deferred: the core imports nothing of ``twisted.internet``, and a
    Deferred per message was 5 Python calls of each crossing message's 35 at its
    publisher's node (``bench/calls_per_message.py --cluster``); ``inbound.ack_after``
    also recognises this class and queues a publisher's PUBACKs that wait for the same
    write as one entry."""

    log = Logger(namespace="mqtt_twisted.core.journal")

    __slots__ = ("called", "result", "_waiters")

    def __init__(self) -> None:
        self.called = False
        self.result: Any = None
        self._waiters: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []

    def addBoth(self, f: Callable[..., Any], *args: Any, **kw: Any) -> SharedWrite:
        if self.called:
            self._call(f, self.result, args, kw)
        else:
            self._waiters.append((f, args, kw))
        return self

    def addCallbacks(self, callback: Callable[..., Any],
                     errback: Callable[..., Any] | None = None,
                     callbackArgs: tuple[Any, ...] = (),
                     callbackKeywords: dict[str, Any] | None = None,
                     errbackArgs: tuple[Any, ...] = (),
                     errbackKeywords: dict[str, Any] | None = None) -> SharedWrite:
        return self.addBoth(_either, callback, errback, callbackArgs, callbackKeywords or {},
                            errbackArgs, errbackKeywords or {})

    def addCallback(self, f: Callable[..., Any], *args: Any, **kw: Any) -> SharedWrite:
        return self.addCallbacks(f, None, args, kw)

    def addErrback(self, f: Callable[..., Any], *args: Any, **kw: Any) -> SharedWrite:
        return self.addCallbacks(_passed, f, (), None, args, kw)

    def fire(self, result: Any) -> None:
        """The write is done (``result``) or failed (a Failure): tell every waiter."""
        if self.called:
            return
        self.called = True
        self.result = result
        waiters, self._waiters = self._waiters, []
        for f, args, kw in waiters:
            self._call(f, result, args, kw)

    def _call(self, f: Callable[..., Any], result: Any, args: tuple[Any, ...],
              kw: dict[str, Any]) -> None:
        try:
            f(result, *args, **kw)
        except Exception:
            # As a Deferred would log an error nobody handled; the other waiters go on.
            self.log.failure("A store write's waiter failed")


def _either(result: Any, callback: Callable[..., Any], errback: Callable[..., Any] | None,
            cargs: tuple[Any, ...], ckw: dict[str, Any], eargs: tuple[Any, ...],
            ekw: dict[str, Any]) -> None:
    if isinstance(result, Failure):
        if errback is not None:
            errback(result, *eargs, **ekw)
    else:
        callback(result, *cargs, **ckw)


def _passed(result: Any) -> None:
    """``addErrback``'s callback: a success needs nothing."""


class Journal:
    """The broker's side of its store writes."""

    log = Logger(namespace="mqtt_twisted.core.broker.Broker")

    __slots__ = ("store", "stats", "clock", "durable", "_collecting", "failures",
                 "incremental")

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
        if not hasattr(result, "addErrback"):
            return
        if getattr(result, "called", False) and not isinstance(result.result, Failure):
            return  # stored already (the memory store): nothing to wait for
        stats = self.stats
        stats.store_writes += 1
        if not stats.store_writes & (LATENCY_SAMPLE - 1) and self.clock is not None:
            result.addBoth(self._timed, self.clock.seconds())
        if self._collecting is not None:
            self._collecting.append(result)
        else:
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
