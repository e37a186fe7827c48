"""Where the auth backends run their slow hashes (PBKDF2): off the reactor thread."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

#: Runs a blocking function away from the reactor: ``run(f, *args)`` -> Deferred.
Runner = Callable[..., "Deferred[Any]"]


def in_thread_pool(reactor: Any) -> Runner:
    """A runner on ``reactor``'s thread pool (tests pass one that runs at once)."""
    def run(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)
    return run
