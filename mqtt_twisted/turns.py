"""Work left for the end of a reactor turn: one ``callLater(0)`` a turn for all of it.

A connection's CONNACK is sent, a closing connection is closed and the turn's log lines
are written once the turn's events are handled (``adapters/_leanserver.py``,
``adapters/_leanmqtt.py``, ``logs.py``).  Each was a ``callLater(0)`` of its own: a
``DelayedCall``, a push into the reactor's heap and a pop out of it (Python comparisons
both ways), three times in a turn of connects and disconnects.  Here the first piece of
work in a turn schedules one call that runs them all, in the order they came.

While a reactor's events are being handled by a loop that runs the work itself once
they are (:func:`handling_events`, ``adapters/_leanpoll.py``), nothing is scheduled at
all: no ``DelayedCall``, and no second ``epoll_wait`` that a due ``callLater(0)`` makes
the reactor's next iteration poll with no wait.  Work that comes from a timed call or
anywhere else outside that loop still gets its ``callLater(0)``.

Work added while that work runs (a cluster node's batch flush writes Redis commands,
which are sent at the end of the turn too: ``cluster/client.py``) runs in the same
pass, in a round after the rest: not a reactor iteration later.  After ``ROUNDS``
rounds what is left waits for the next turn, so work that keeps leaving work cannot
hold the reactor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

_log = Logger()
#: Reactor -> what is left for the end of its current turn: (function, argument).
_DUE: dict[Any, list[tuple[Callable[[Any], Any], Any]]] = {}
#: Reactors whose events are being handled by a loop that calls :func:`run_due` after.
_HANDLING: set[Any] = set()
#: Rounds of end-of-turn work run in one pass: work, the work it left, and so on.
ROUNDS = 4


def after_turn(reactor: Any, f: Callable[[Any], Any], arg: Any) -> None:
    """Call ``f(arg)`` once ``reactor``'s current turn's events are handled."""
    due = _DUE.get(reactor)
    if due is None:
        due = _DUE[reactor] = []
        if reactor not in _HANDLING:
            reactor.callLater(0, _run, reactor)
    due.append((f, arg))


def handling_events(reactor: Any) -> None:
    """``reactor``'s loop is handling events and calls :func:`run_due` when done: what
    is left for the end of the turn meanwhile is not scheduled."""
    _HANDLING.add(reactor)


def own_turn(reactor: Any) -> bool:
    """Handle ``reactor``'s events here, as its loop would (True: call :func:`run_due`
    when done), unless a loop already is or work is already left for the turn's end (a
    timed call that does a turn's work, ``core/admission.py``'s: what it leaves runs as
    it ends, not in a ``callLater(0)`` of its own a reactor pass later)."""
    if reactor in _HANDLING or reactor in _DUE:
        return False
    _HANDLING.add(reactor)
    return True


def run_due(reactor: Any) -> None:
    """The events are handled: run what was left for the end of the turn, and what that
    work leaves in turn (a close's disconnect line, to be written; a cluster batch's
    Redis commands, to be sent), a few rounds at most; anything left after them gets
    its ``callLater(0)``, so that work which keeps leaving work cannot hold the reactor."""
    try:
        for _ in range(ROUNDS):
            due = _DUE.pop(reactor, None)
            if due is None:
                return
            for f, arg in due:
                try:
                    f(arg)
                except Exception:  # (one failing piece of work does not cost the others theirs)
                    _log.failure("End-of-turn work {f!r} failed", f=f)
    finally:
        _HANDLING.discard(reactor)
        if reactor in _DUE:
            reactor.callLater(0, _run, reactor)


def _run(reactor: Any) -> None:
    """The ``callLater(0)`` of a turn whose loop does not call :func:`run_due` itself:
    the same rounds, and work left meanwhile joins them rather than scheduling again."""
    _HANDLING.add(reactor)
    run_due(reactor)
