"""A store write several waiters share: the Redis store's batch of a reactor turn's
outbound records, a cluster node's stream entry of a turn's messages to one peer.

It sits below both the core (``core/journal.py`` re-exports it, ``core/inbound.py``
recognises it) and the stores, which may not import the core (tests/test_layering.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure


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
        return self.addBoth(_failed_only, f, args, kw)

    def fire(self, result: Any) -> None:
        """The write is done (``result``) or failed (a Failure): tell every waiter."""
        if self.called:
            return
        self.called = True
        self.result = result
        waiters, self._waiters = self._waiters, []
        for f, args, kw in waiters:
            try:  # (_call inline: a batch's waiters, every turn)
                f(result, *args, **kw)
            except Exception:
                self.log.failure("A store write's waiter failed")

    #: As a Deferred's: the Redis store's link answers a batch's call through these
    #: directly, with no Deferred in between (``store/_redislink.py``).
    callback = fire

    def errback(self, error: Any) -> None:
        """The write failed with ``error`` (an exception or a Failure)."""
        self.fire(error if isinstance(error, Failure) else Failure(error))

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


def _failed_only(result: Any, errback: Callable[..., Any], args: tuple[Any, ...],
                 kw: dict[str, Any]) -> None:
    """``addErrback``'s waiter: a success needs nothing."""
    if isinstance(result, Failure):
        errback(result, *args, **kw)
