"""Deferred plumbing for the sans-IO core.

The core never imports the reactor side of Twisted (``twisted.internet``), yet
stores and plugins answer with Deferreds; these helpers recognise Deferreds by
their methods and chain on them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.python.failure import Failure


def when(result: Any, callback: Callable[[Any], Any], errback: Callable[[Failure], Any]) -> None:
    """Call ``callback`` with ``result`` now, or when it fires if it is a Deferred.

    The core never imports the reactor side of Twisted, so it recognises
    Deferreds by their methods.
    """
    if hasattr(result, "addCallbacks"):
        # (A fired Deferred that is not paused has run every callback it had.)
        if getattr(result, "called", False) and not getattr(result, "paused", True):
            value = result.result
            if not isinstance(value, Failure) and not hasattr(value, "addCallbacks"):
                # Fired already with a value (a memory store's answer): take it, without
                # a callback chain run for it (about ten calls per CONNECT).
                result = value
        if hasattr(result, "addCallbacks"):
            _chain(result, callback, errback)
            return
    try:
        callback(result)
    except Exception:
        errback(Failure())


def _chain(result: Any, callback: Callable[[Any], Any], errback: Callable[[Failure], Any]) -> None:
    def call(value: Any) -> None:
        # As in ``when``: an exception in ``callback`` goes to ``errback``, not into the
        # Deferred, where nobody would see it (and a CONNECT would go unanswered).
        try:
            callback(value)
        except Exception:
            errback(Failure())

    result.addCallbacks(call, errback)


def gather(answers: list[Any]) -> Any:
    """One Deferred for a list of plain values and Deferreds (firing with the list of
    values), built by chaining, since the core does not import twisted.internet."""
    values = list(answers)
    chain: Any = None
    for i, answer in enumerate(values):
        if not hasattr(answer, "addCallbacks"):
            continue

        def store(value: Any, i: int = i) -> None:
            values[i] = value

        if chain is None:
            chain = answer.addCallback(store)
        else:
            chain.addCallback(lambda _, a=answer: a).addCallback(store)
    return chain.addCallback(lambda _: values)
